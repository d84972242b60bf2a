"""The same checkpoint twice is used once: hard links, copies, and Lightning's ``last.ckpt``.

Part of :mod:`wa_cli.select`. Training libraries save the newest or best checkpoint a second
time (PEERS.md): timm's ``last.pth.tar`` and ``model_best.pth.tar`` are hard links to an epoch
file, and Lightning's ``last.ckpt`` is a separate copy (other bytes: its callback state differs)
of the checkpoint saved at the same ``global_step``. Averaged in, such a duplicate silently gets
twice the weight (0.25 instead of 0.2 in a mean of 4; 0.5 in an EMA). A checkpoint is a duplicate
of an earlier one when:

1. it is the same files (same device and inode: a hard link, or the same path given twice);
2. it is a single file of the same size whose bytes are all equal (a copy);
3. it records the same step inside (``step``/``global_step``), holds the same keys, shapes and
   dtypes, and all of its tensors' bytes are equal (Lightning's ``last.ckpt``).

Samples (the start, the end and evenly spaced blocks of a file; the first and last bytes of each
tensor) only nominate a pair; the pair is compared in full before an input is dropped. Sampled
bytes alone took distinct checkpoints for copies: a file whose first MB alone differs, a
frozen-backbone fine-tune whose head sits between the samples, two runs saved at one step.

Of a duplicate pair the one whose name holds a step is kept (``checkpoint-9.pth.tar``, not
``last.pth.tar``); otherwise the first given. Each dropped input is named in one warning line.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wa_cli.io.fingerprint import (
    file_digest,
    file_identity,
    file_sample,
    file_size,
    files_equal,
    tensor_sample,
    tensors_equal,
)
from wa_cli.select.order import checkpoint_stem
from wa_cli.select.steps import number_in_name, step_in_metadata

if TYPE_CHECKING:  # the reader imports torch; selection must not
    from wa_cli.io.reader import Checkpoint

logger = logging.getLogger(__name__)


def _identity(ckpt: Checkpoint) -> frozenset[tuple[int, int]] | None:
    return file_identity(ckpt.files)


def _named_step(ckpt: Checkpoint) -> bool:
    return number_in_name(checkpoint_stem(ckpt)) is not None


def _keep_first(a: int, b: int, ckpts: Sequence[Checkpoint]) -> tuple[int, int]:
    """(kept, dropped) of two duplicates: the one whose name holds a step, else the earlier."""
    if not _named_step(ckpts[a]) and _named_step(ckpts[b]):
        return b, a
    return a, b


def _same_files(ckpts: Sequence[Checkpoint]) -> dict[int, tuple[int, str]]:
    dropped: dict[int, tuple[int, str]] = {}
    seen: dict[frozenset[tuple[int, int]], int] = {}
    for i, c in enumerate(ckpts):
        ident = _identity(c)
        if ident is None:
            continue
        if ident in seen:
            j = seen[ident]
            same_path = os.path.abspath(c.path) == os.path.abspath(ckpts[j].path)
            why = "" if same_path else "is the same file as '{kept}' (a hard link)"
            kept, drop = _keep_first(j, i, ckpts)
            dropped[drop] = (kept, why)
            seen[ident] = kept
        else:
            seen[ident] = i
    return dropped


def _same_bytes(ckpts: Sequence[Checkpoint], skip: set[int]) -> dict[int, tuple[int, str]]:
    by_size: dict[int, list[int]] = {}
    for i, c in enumerate(ckpts):
        if i in skip or len(c.files) != 1:
            continue
        size = file_size(c.path)
        if size is not None:
            by_size.setdefault(size, []).append(i)
    dropped: dict[int, tuple[int, str]] = {}
    # Read once per nominated file: many files with one sample (a frozen backbone) cost one
    # read each, not one per pair.
    digest = functools.cache(lambda k: file_digest(ckpts[k].path))
    for size, group in by_size.items():
        if len(group) < 2:
            continue
        seen: dict[str, list[int]] = {}
        for i in group:
            sample = file_sample(ckpts[i].path, size)
            if sample is None:
                continue
            # The sample nominates; only bytes equal in full make a copy.
            twin = next(
                (
                    j
                    for j in seen.get(sample, [])
                    if digest(i) is not None
                    and digest(j) == digest(i)
                    and files_equal(ckpts[j].path, ckpts[i].path)
                ),
                None,
            )
            if twin is None:
                seen.setdefault(sample, []).append(i)
                continue
            kept, drop = _keep_first(twin, i, ckpts)
            dropped[drop] = (kept, "has the same bytes as '{kept}' (a copy)")
            seen[sample] = [kept if j == twin else j for j in seen[sample]]
    return dropped


def _same_step_and_tensors(
    ckpts: Sequence[Checkpoint], skip: set[int]
) -> dict[int, tuple[int, str]]:
    by_step: dict[tuple[str, int], list[int]] = {}
    for i, c in enumerate(ckpts):
        if i in skip:
            continue
        step = step_in_metadata(c.metadata, c.name)
        if step is not None:
            by_step.setdefault((step.where, step.value), []).append(i)
    dropped: dict[int, tuple[int, str]] = {}
    for (key, value), group in by_step.items():
        if len(group) < 2:
            continue
        seen: dict[str, list[int]] = {}
        for i in group:
            sample = tensor_sample(ckpts[i])
            # The sample nominates; only tensors equal in full make a duplicate.
            twin = next(
                (j for j in seen.get(sample, []) if tensors_equal(ckpts[j], ckpts[i])), None
            )
            if twin is None:
                seen.setdefault(sample, []).append(i)
                continue
            kept, drop = _keep_first(twin, i, ckpts)
            why = f"records the same {key} ({value}) and holds the same tensors as '{{kept}}'"
            dropped[drop] = (kept, why)
            seen[sample] = [kept if j == twin else j for j in seen[sample]]
    return dropped


def drop_duplicates(ckpts: Sequence[Checkpoint]) -> list[Checkpoint]:
    """The checkpoints with each duplicate left out (and closed), in the given order.

    Each one left out is named in a warning: ``'last.ckpt' records the same global_step (115)
    and holds the same tensors as 'epoch=4-step=115.ckpt'; used once``.

    Example:
        >>> kept = drop_duplicates(open_checkpoints(paths))  # doctest: +SKIP
    """
    dropped = _same_files(ckpts)
    dropped |= _same_bytes(ckpts, set(dropped))
    dropped |= _same_step_and_tensors(ckpts, set(dropped))
    if not dropped:
        return list(ckpts)
    for i in sorted(dropped):
        kept, why = dropped[i]
        while kept in dropped:  # a chain of duplicates names the one that stays
            kept = dropped[kept][0]
        if not why:
            logger.warning("input '%s' is given more than once; used once", ckpts[i].path)
        else:
            logger.warning("'%s' %s; used once", ckpts[i].path, why.format(kept=ckpts[kept].path))
        ckpts[i].close()
    return [c for i, c in enumerate(ckpts) if i not in dropped]
