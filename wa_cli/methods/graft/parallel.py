"""Graft's first pass under torchrun: each rank measures the entropies of its module groups.

The alphas of a module come from the entropies of its source keys in every input
(``wa_cli.methods.graft.alpha``). The groups of keys that share a module go to ranks by the bytes
they read (largest first to the least loaded rank), each rank measures its groups, and the
entropies are gathered, so every rank computes the same alpha table from the same numbers and the
second pass (``combine_to_file``, distributed by output shard) writes what one process writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from wa_cli.engine import distributed, plan_digest
from wa_cli.engine.plan import Plan
from wa_cli.io.reader import Checkpoint
from wa_cli.methods.graft.alpha import AlphaPlan, module_of

EntropyFn = Callable[[Checkpoint, Sequence[str]], dict[str, float]]


def shared_entropies(
    check: Plan, ckpts: list[Checkpoint], plan: AlphaPlan, params: dict[str, object],
    measure: EntropyFn,
) -> list[dict[str, float]]:  # fmt: skip
    """Every input's entropies by key, measured across the ranks (``measure(ckpt, keys)``)."""
    group = distributed.active()
    assert group is not None

    def summary() -> plan_digest.Summary:
        s = plan_digest.input_summary([str(c.path) for c in ckpts], [c.files for c in ckpts])
        specs = [(k.key, str(k.out_dtype), k.shape, k.sources) for k in check.keys]
        s.update(
            tensors=len(check.keys),
            headers=plan_digest.digest(specs),
            weights=plan_digest.digest([params, plan.entropy_keys]),
            output="(graft)",
        )
        return s

    plan_digest.agree("comparing the plans", summary)
    modules: dict[str, list[str]] = {}
    for key in plan.entropy_keys:
        modules.setdefault(module_of(key), []).append(key)
    groups = list(modules.values())
    costs = [sum(c.info(k).nbytes for c in ckpts for k in keys) for keys in groups]
    owners = distributed.assign_balanced(costs, group.world)
    mine = [k for keys, r in zip(groups, owners) if r == group.rank for k in keys]

    def measure_mine() -> list[dict[str, float]]:
        return [measure(c, mine) for c in ckpts]

    parts = distributed.step("measuring entropies", measure_mine)
    merged: list[dict[str, float]] = []
    for i in range(len(ckpts)):
        found = {k: v for part in parts for k, v in part[i].items()}
        merged.append({k: found[k] for k in plan.entropy_keys})
    return merged
