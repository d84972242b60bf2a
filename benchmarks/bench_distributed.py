"""Benchmark ``wa average`` under torchrun with 1, 2 and 4 processes on this machine, in one run.

Variants, interleaved in a rotating order for ``--repeats`` rounds (medians reported):

* ``K=1``: ``python -m wa_cli average IN... -o OUT --force -q --json`` (no torchrun, no group);
* ``K=2``, ``K=4``: ``python -m torch.distributed.run --standalone --nproc-per-node K -m wa_cli
  average ...`` (gloo on localhost; each rank reads and writes its share).

for a single-file output and a sharded one (``--max-shard-size``). The table shows the wall time
of the whole launch (interpreter and torch start-up of every rank, rendezvous, the run), wa's own
``seconds`` (rank 0, from the plans agreeing to the commit), the read rate over those seconds, and
each rank's bytes and rate. Every output is checked byte for byte against the ``K=1`` output of
the same kind (the exit status is 1 if one differs).

What one machine can show: K ranks on one machine share its cores, its memory bandwidth and its
disk, so K > 1 can only help where one process leaves the disk idle (it cannot here: on 2 cores
and a warm page cache the reduction is CPU-bound); the figure that carries to K nodes is the
per-rank throughput. Inputs are the cached synthetic trajectories of ``bench_average.py``:

    python benchmarks/bench_distributed.py --workload fp32-100mb --count 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import bench_average as ba  # noqa: E402 - the sibling script's generator and measurement

PROCESSES = (1, 2, 4)


def command(k: int, inputs: list[Path], out: Path, shard: str | None) -> list[str]:
    args = ["average", *map(str, inputs), "-o", str(out), "--force", "-q", "--json"]
    if shard:
        args += ["--max-shard-size", shard]
    if k == 1:
        return [sys.executable, "-m", "wa_cli", *args]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={k}"]
    return [sys.executable, *launcher, "-m", "wa_cli", *args]


def digest(out: Path) -> str:
    """One hash over the output's files (names and bytes), to compare outputs of the variants."""
    h = hashlib.sha256()
    files = sorted(out.iterdir()) if out.is_dir() else [out]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(64 * ba.MB):
                h.update(chunk)
    return h.hexdigest()


def report_of(record: dict) -> dict:
    """wa's --json report (rank 0's stdout; torchrun adds nothing to stdout)."""
    text = record["stdout"]
    return json.loads(text[text.index("{") :])


def run(args: argparse.Namespace, inputs: list[Path], out_dir: Path) -> dict:
    modes = {"single": None, "sharded": args.shard_size}
    rows: dict[str, list[dict]] = {f"{m} K={k}": [] for m in modes for k in args.processes}
    hashes: dict[str, set[str]] = {key: set() for key in rows}
    for r in range(args.repeats):
        ks = list(args.processes)
        order = ks[r % len(ks) :] + ks[: r % len(ks)]
        for mode, shard in modes.items():
            for k in order:
                # One -o per mode: the command line is in the provenance, so K alone differs.
                out = out_dir / mode if shard else out_dir / f"{mode}.safetensors"
                os.sync()
                record = ba.measure(command(k, inputs, out, shard), args.threads)
                report = report_of(record)
                key = f"{mode} K={k}"
                rows[key].append({"wall_s": record["wall_s"], "report": report})
                hashes[key].add(digest(out))
                ba.log(
                    f"round {r + 1}/{args.repeats} {key:12s} wall {record['wall_s']:6.2f} s, "
                    f"wa {report['seconds']:6.2f} s"
                )
    return {"rows": rows, "hashes": {k: sorted(v) for k, v in hashes.items()}}


def summarize(result: dict, input_bytes: int) -> list[dict]:
    table = []
    for key, runs in result["rows"].items():
        wall = statistics.median(r["wall_s"] for r in runs)
        seconds = statistics.median(r["report"]["seconds"] for r in runs)
        ranks = runs[-1]["report"].get("ranks") or [
            {"rank": 0, "bytes_read": runs[-1]["report"]["bytes_read"], "seconds": seconds}
        ]
        per_rank = [
            statistics.median(
                (rr.get("ranks") or [{"seconds": rr["seconds"]}])[i]["seconds"]
                for rr in (r["report"] for r in runs)
            )
            for i in range(len(ranks))
        ]
        table.append(
            {
                "variant": key,
                "wall_s": round(wall, 2),
                "wa_s": round(seconds, 3),
                "read_gb_s": round(input_bytes / seconds / 1e9, 3) if seconds else None,
                "rank_read_mb": [round(r["bytes_read"] / 1e6, 1) for r in ranks],
                "rank_gb_s": [
                    round(r["bytes_read"] / s / 1e9, 3) if s else None
                    for r, s in zip(ranks, per_rank)
                ],
            }
        )
    return table


def render(table: list[dict]) -> str:
    lines = [
        f"{'variant':14s} {'wall s':>7s} {'wa s':>7s} {'read GB/s':>9s}  per rank: MB read, GB/s",
    ]
    for row in table:
        shares = ", ".join(
            f"{mb:.0f} MB @ {rate}" for mb, rate in zip(row["rank_read_mb"], row["rank_gb_s"])
        )
        lines.append(
            f"{row['variant']:14s} {row['wall_s']:7.2f} {row['wa_s']:7.3f} "
            f"{row['read_gb_s'] or 0:9.3f}  {shares}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=sorted(ba.WORKLOADS), default="fp32-100mb")
    p.add_argument("--count", type=int, default=4, help="number of checkpoints")
    p.add_argument("--repeats", type=int, default=2, help="rounds per variant (median reported)")
    p.add_argument("--processes", type=int, nargs="+", default=list(PROCESSES))
    p.add_argument("--shard-size", default="50MB", help="--max-shard-size of the sharded mode")
    p.add_argument("--threads", type=int, help="OMP threads per process (default: torch's)")
    default_dir = os.environ.get("WA_BENCH_DATA", str(ba.REPO.parent / "bench_data"))
    p.add_argument("--data-dir", type=Path, default=Path(default_dir), help="cache and outputs")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table on stderr)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = ba.WORKLOADS[args.workload]
    inputs = ba.ensure_trajectory(args.data_dir, args.workload, work, args.count)
    out_dir = args.data_dir / "out" / f"dist-{args.workload}-x{args.count}"
    out_dir.mkdir(parents=True, exist_ok=True)
    input_bytes = sum(p.stat().st_size for p in inputs)
    ba.log(f"warm cache: read {input_bytes / 1e9:.2f} GB in {ba.warm_cache(inputs):.1f} s")
    result = run(args, inputs, out_dir)
    table = summarize(result, input_bytes)
    identical = all(
        len({h for key, hs in result["hashes"].items() if key.startswith(mode) for h in hs}) == 1
        for mode in ("single", "sharded")
    )
    text = render(table) + f"\noutputs byte-identical across K: {identical}"
    full = {"machine": ba.machine_info(), "input_bytes": input_bytes, "table": table}
    full["identical"] = identical
    if args.json:
        ba.log(text)
        print(json.dumps(full, indent=2))
    else:
        print(text)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
