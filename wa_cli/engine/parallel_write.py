"""One output written by many ranks (torchrun): the same bytes as one process writes, atomically.

The steps (``wa_cli.engine.distributed.step``), the same on every rank:

1. *Compare plans.* Every rank checks the output name and summarises its plan
   (``wa_cli.engine.plan_digest``); a rank that differs from rank 0 stops every rank.
2. *Open.* Rank 0 checks the destination and opens one temporary sibling
   (``wa_cli.io.atomic.atomic_destination``): a folder for shards, or, for a single file, the
   file with its header written and its full length set (every tensor's offset is known from the
   plan), so each rank can ``pwrite`` its tensors in place (``wa_cli.io.positional_write``).
3. *Write.* The output files are decided from the plan alone (the shards ``write_safetensors``
   would make); shards go to ranks by the bytes each must read, largest first to the least loaded
   rank; the tensors of a single file are spread the same way, tensor by tensor (each rank then
   ``pwrite``s its tensors in file order). Each rank reads and combines only its tensors, writes
   them, and fsyncs. A DCP output (``--format dcp``) is a folder whose tensors are spread like a
   single file's: each rank stages its tensors, then (a step of their own, since DCP's save is
   itself collective and must not be entered while a rank has failed) the ranks save them as one
   checkpoint with DCP's collective ``dcp.save`` (``wa_cli.io.dcp_write.save_staged``).
4. *Commit.* With every rank's "ok" gathered, rank 0 writes the index, fsyncs and renames the
   temporary into place. Any failure before leaves nothing at the destination: rank 0's atomic
   context removes the temporary, and the other ranks remove it too in case rank 0 is gone.

The report is rank 0's, with the stats of every rank summed and a per-rank table.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from wa_cli.engine import distributed, plan_digest
from wa_cli.engine.combine import CombineStats, WeightsFn, schedule
from wa_cli.engine.options import ReduceOptions, WriteOptions
from wa_cli.engine.plan import Plan
from wa_cli.engine.precision import Precision
from wa_cli.engine.reducers import linear_combination
from wa_cli.engine.report import (
    Recipe,
    RunReport,
    build_report,
    input_reads,
)
from wa_cli.errors import ExitCode, WaError
from wa_cli.io import hooks
from wa_cli.io.atomic import atomic_destination
from wa_cli.io.dcp_write import save_staged, stage_path
from wa_cli.io.output_check import Layout, check_output
from wa_cli.io.positional_write import preallocate, tensor_offsets, write_at
from wa_cli.io.safetensors_header import build_header
from wa_cli.io.writer import (
    INDEX_NAME,
    OutputTensor,
    shard_file_name,
    shard_layout,
    write_files,
    write_index,
)

KILL_HOOK_ENV = "WA_TEST_KILL_RANK"  # tests: this rank SIGKILLs itself after its first chunk


def combine_to_file_distributed(
    plan: Plan,
    weights: WeightsFn,
    output: str | os.PathLike[str],
    recipe: Recipe,
    opts: ReduceOptions,
    out: WriteOptions,
) -> RunReport:
    """:func:`wa_cli.engine.run.combine_to_file` with this rank writing its share of the output."""
    try:
        job = _Job(plan, weights, Path(output), recipe.metadata, out.max_shard_size)
        job.dcp = out.output_format == "dcp"
        ranks = job.run(opts.precision, opts.device, out.force, out.progress)
    finally:
        for ckpt in plan.checkpoints:
            ckpt.close()
    stats = _merge(plan, [r["stats"] for r in ranks])
    stats.seconds = job.seconds
    report = build_report(plan, stats, job.final_paths(), recipe, opts.precision)
    report.ranks = [
        {
            "rank": rank,
            "bytes_read": r["stats"].bytes_read,
            "bytes_written": r["stats"].bytes_written,
            "files": r["files"],
            "seconds": round(r["seconds"], 4),
        }
        for rank, r in enumerate(ranks)
    ]
    return report


class _Job:
    """The layout, partition and steps of one distributed write."""

    def __init__(
        self,
        plan: Plan,
        weights: WeightsFn,
        output: Path,
        metadata: dict[str, str],
        max_shard_size: int | None,
    ) -> None:
        group = distributed.active()
        assert group is not None
        self.group = group
        self.plan, self.weights, self.output, self.metadata = plan, weights, output, metadata
        self.sharded = max_shard_size is not None
        self.dcp = False  # --format dcp: a DCP folder, its tensors spread like a single file's
        self.max_shard_size = max_shard_size
        self.seconds = 0.0
        self.layout: list[list[OutputTensor]] = []
        self.names: list[str] = []

    def run(
        self,
        precision: Precision,
        device: torch.device | None,
        force: bool,
        progress: Callable[[int, int], None] | None,
    ) -> list[dict[str, Any]]:
        plan_digest.agree("comparing the plans", self._prepare)
        start = time.perf_counter()
        tmp: Path | None = None
        stack = contextlib.ExitStack()
        try:
            with stack:
                opened = distributed.step("opening the output", lambda: self._open(stack, force))
                tmp = Path(str(opened[0]))
                ranks = distributed.step(
                    "writing", lambda: self._write(tmp, precision, device, progress)
                )
                if self.dcp:
                    distributed.step("saving the DCP checkpoint", lambda: self._save(tmp))
                distributed.step("committing the output", lambda: self._commit(tmp, stack))
        except BaseException:
            if tmp is not None and self.group.rank != 0:
                _remove_quietly(tmp)  # rank 0 may be gone; its own cleanup is atomic's
            raise
        self.seconds = time.perf_counter() - start
        return ranks

    # Step 1
    def _prepare(self) -> plan_digest.Summary:
        # Every rank checks the name and the inputs; what is at the output, rank 0 when it
        # commits (atomic_destination).
        layout: Layout = "dcp" if self.dcp else "shards" if self.sharded else "file"
        check_output(self.output, reads=input_reads(self.plan), layout=layout, existing=False)
        self.layout = shard_layout(self.plan.output_tensors(), self.max_shard_size)
        self.names = [shard_file_name(i, len(self.layout)) for i in range(len(self.layout))]
        tasks = schedule(self.plan, self.weights, chunk_elements=1 << 62)
        self.cost = {t.entry.key: t.read_bytes for t in tasks}
        ckpts = self.plan.checkpoints
        summary = plan_digest.input_summary([str(c.path) for c in ckpts], [c.files for c in ckpts])
        summary.update(
            tensors=len(self.plan.keys),
            headers=plan_digest.bytes_digest(self._header(group)[0] for group in self.layout),
            weights=plan_digest.digest((t.entry.key, t.inputs, t.total) for t in tasks),
            output=f"{self.output} (max shard size {self.max_shard_size}, dcp {self.dcp})",
        )
        return summary

    def _header(self, group: list[OutputTensor]) -> tuple[bytes, list[int]]:
        return build_header([(t.key, t.dtype, t.shape) for t in group], self.metadata)

    def _owners(self) -> list[int]:
        """The rank of each output file (sharded) or of each tensor (single file)."""
        world = self.group.world
        if self.sharded:
            costs = [sum(self.cost.get(t.key, 0) for t in group) for group in self.layout]
        else:
            # Largest first, not contiguous runs: a few large tensors (embeddings) would leave
            # one run far heavier (measured 162 vs 252 MB on bench_distributed's mix).
            costs = [self.cost.get(k.key, 0) for k in self.plan.keys]
        return distributed.assign_balanced(costs, world)

    # Step 2
    def _open(self, stack: contextlib.ExitStack, force: bool) -> str | None:
        if self.group.rank != 0:
            return None
        folder = self.sharded or self.dcp
        tmp = stack.enter_context(
            atomic_destination(self.output, force, folder=folder, reads=input_reads(self.plan))
        )
        if folder:
            tmp.mkdir(exist_ok=True)  # atomic_destination creates it (locked)
        else:
            header, sizes = self._header(self.layout[0])
            preallocate(tmp, header, sum(sizes))  # every rank writes its tensors in place
        return str(tmp)

    # Step 3
    def _write(
        self,
        tmp: Path,
        precision: Precision,
        device: torch.device | None,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, Any]:
        start = time.perf_counter()
        owners, rank = self._owners(), self.group.rank
        stats = CombineStats()
        if self.sharded:
            mine = [i for i, r in enumerate(owners) if r == rank]
            keys = [t.key for i in mine for t in self.layout[i]]
        else:
            keys = [k.key for k, r in zip(self.plan.keys, owners) if r == rank]
            mine = [0] if keys else []
        by_key = {k.key: k for k in self.plan.keys}
        sub = Plan(self.plan.checkpoints, [by_key[k] for k in keys])
        if keys:
            advance = self._progress(progress, keys)
            chunks = _with_test_hooks(
                linear_combination(
                    sub,
                    self.weights,
                    precision=precision,
                    device=device,
                    progress=advance,
                    stats=stats,
                ),  # fmt: skip
                rank,
            )
            try:
                if self.sharded:
                    paths = [tmp / self.names[i] for i in mine]
                    write_files(paths, [self.layout[i] for i in mine], chunks, self.metadata)
                elif self.dcp:
                    stage = stage_path(tmp, rank)
                    write_files([stage], [sub.output_tensors()], chunks, {"format": "pt"})
                else:
                    self._write_ranges(tmp, chunks)
            finally:
                _close(chunks)  # on a write error the engine's reader thread stops first
        return {
            "stats": stats,
            "files": [self.names[i] for i in mine] if self.sharded else [],
            "seconds": time.perf_counter() - start,
        }

    def _write_ranges(self, tmp: Path, chunks: Iterator[tuple[str, torch.Tensor]]) -> None:
        """Write this rank's tensors at their offsets in the preallocated single file."""
        header, sizes = self._header(self.layout[0])
        write_at(tmp, tensor_offsets(header, [t.key for t in self.layout[0]], sizes), chunks)

    def _progress(
        self, progress: Callable[[int, int], None] | None, keys: list[str]
    ) -> Callable[[int], None] | None:
        """Rank 0's bar: its own progress scaled to the global bytes (the ranks are balanced)."""
        if progress is None or self.group.rank != 0:
            return None
        total = sum(self.cost.values())
        mine = sum(self.cost.get(k, 0) for k in keys)
        scale = total / mine if mine else 0.0
        return lambda n: progress(int(n * scale), total)

    # Step 3b (DCP)
    def _save(self, tmp: Path) -> None:
        """Every rank at once: DCP's collective save of the staged tensors."""
        stage: Path | None = stage_path(tmp, self.group.rank)
        if stage is not None and not stage.exists():
            stage = None  # this rank has no tensors: it still takes part in the collective save
        try:
            save_staged(tmp, stage, collective=True, process_group=self.group.control)
        except (WaError, OSError):
            raise
        except Exception as e:  # DCP's CheckpointException, or a collective that failed
            raise WaError(
                f"cannot write '{self.output}': torch.distributed.checkpoint failed: "
                f"{distributed.first_line(e)}",
                ExitCode.OUTPUT,
            ) from e

    # Step 4
    def _commit(self, tmp: Path, stack: contextlib.ExitStack) -> None:
        if self.group.rank != 0:
            return
        if self.sharded:
            write_index(tmp / INDEX_NAME, [tmp / n for n in self.names], self.layout, self.metadata)
        elif self.dcp:  # every rank has removed its staging file (it said ok after doing so)
            self.names = sorted(p.name for p in tmp.iterdir())
        try:
            stack.close()  # atomic_destination: fsync, rename into place, fsync the folder
        except OSError as e:
            raise WaError(
                f"cannot write '{self.output}': {e.strerror or e}", ExitCode.OUTPUT
            ) from e

    def final_paths(self) -> list[Path]:
        if self.dcp:
            return [self.output / n for n in self.names]
        if not self.sharded:
            return [self.output]
        return [self.output / n for n in [*self.names, INDEX_NAME]]


def _with_test_hooks(
    chunks: Iterator[tuple[str, torch.Tensor]], rank: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """``WA_TEST_HOOKS=1 WA_TEST_KILL_RANK=R``: rank R dies by SIGKILL mid-write (for the
    failure tests)."""
    if hooks.value(KILL_HOOK_ENV) != str(rank):  # only with WA_TEST_HOOKS=1
        return chunks

    def killing() -> Iterator[tuple[str, torch.Tensor]]:
        # After the first chunk is written: when the second is asked for, or at the end.
        try:
            for n, item in enumerate(chunks):
                if n == 1:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield item
        finally:
            _close(chunks)
        os.kill(os.getpid(), signal.SIGKILL)

    return killing()


def _close(chunks: Iterator[Any]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def _merge(plan: Plan, parts: list[CombineStats]) -> CombineStats:
    """Every rank's stats as one; non-finite counts in the plan's key order, as one process."""
    total = CombineStats()
    found: dict[str, int] = {}
    for s in parts:
        total.bytes_read += s.bytes_read
        total.bytes_written += s.bytes_written
        total.combined += s.combined
        total.copied += s.copied
        found.update(s.non_finite)
    total.non_finite = {k.key: found[k.key] for k in plan.keys if k.key in found}
    return total


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
