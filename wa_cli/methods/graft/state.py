"""Filter Grafting on in-memory state dicts (Meng et al., CVPR 2020): the whole-tensor reference.

For notebooks and as the tests' reference; the CLI streams files through the chunked engine
(``wa_cli.methods.graft.files``) with the same alphas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from wa_cli.errors import ExitCode, WaError, listing
from wa_cli.methods.graft.alpha import (
    Rule,
    alphas_from_entropies,
    entropy_pairs,
    plan_alphas,
    plan_entropies,
    ring_pairs,
)


def graft_state_dicts(
    receiver: Mapping[str, torch.Tensor],
    donor: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float] | float,
) -> dict[str, torch.Tensor]:
    """Whole-tensor reference graft u' = alpha u + (1 - alpha) v, for notebooks and tests.

    Floating tensors are combined in float64 and cast back to the receiver's dtype (rounded
    once); non-float tensors are copied from the receiver. The CLI streams the same math through
    the chunked engine instead.

    Args:
        receiver: state dict of the model that receives (u).
        donor: state dict of the model that gives (v); same keys and shapes.
        alphas: {floating key: alpha} from ``alphas_from_entropies``, or one alpha for every key.

    Returns:
        A new state dict in the receiver's key order.

    Raises:
        WaError: different key sets or shapes, or a floating key without an alpha.

    Example:
        >>> u, v = {"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])}
        >>> graft_state_dicts(u, v, 0.75)["w"].item()
        1.5
    """
    missing, extra = set(receiver) - set(donor), set(donor) - set(receiver)
    if missing or extra:
        raise WaError(
            "receiver and donor must have the same keys: "
            f"only in receiver: {listing(sorted(missing)) or '-'}; "
            f"only in donor: {listing(sorted(extra)) or '-'}",
            code=ExitCode.INCOMPATIBLE,
        )
    if not isinstance(alphas, Mapping):
        alphas = {k: float(alphas) for k, t in receiver.items() if t.is_floating_point()}
    unknown = sorted(set(alphas) - set(receiver))
    if unknown:
        raise WaError(f"alphas given for keys not in the receiver: {listing(unknown)}")
    out: dict[str, torch.Tensor] = {}
    for k, u in receiver.items():
        v = donor[k]
        if u.shape != v.shape:
            raise WaError(
                f"shape mismatch for {k!r}: {tuple(u.shape)} in receiver vs {tuple(v.shape)} "
                "in donor (grafting needs one architecture)",
                code=ExitCode.INCOMPATIBLE,
            )
        if not u.is_floating_point():
            out[k] = u.clone()
            continue
        if k not in alphas:
            raise WaError(f"no alpha for floating key {k!r} (build alphas with the same keys)")
        u64 = u.detach().to(torch.float64)
        v64 = v.detach().to(device=u.device, dtype=torch.float64)
        # lerp = v + alpha (u - v): the same combination, and exact when u == v in every dtype
        # (alpha u + (1 - alpha) u can be one ulp off in float64).
        out[k] = torch.lerp(v64, u64, float(alphas[k])).to(u.dtype)
    return out


def graft_ring(
    models: Sequence[Mapping[str, torch.Tensor]],
    *,
    rule: Rule = "module",
    a: float = 0.4,
    c: float = 500.0,
    bins: int = 10,
) -> list[dict[str, torch.Tensor]]:
    """Graft n in-memory state dicts in a ring (i receives from i - 1), from pre-graft weights.

    Key order and dtypes come from ``models[0]`` (a state dict keeps its order, so the paper
    rule is well defined here). For two models both outputs are the same model to float
    tolerance; ``ring_pairs_to_write`` says which to keep.

    Args:
        models: n >= 2 state dicts of one architecture.
        rule: "module", "tensor" or "paper".
        a: amplitude A (paper: 0.4).
        c: steepness (paper: 500).
        bins: histogram bins (paper: 10).

    Returns:
        n grafted state dicts, output i for receiver i.

    Example:
        >>> sds = [{"w": torch.arange(10.0)}, {"w": torch.zeros(10)}]
        >>> [round(sd["w"][9].item(), 4) for sd in graft_ring(sds)]
        [6.299, 6.299]
    """
    pairs = ring_pairs(len(models))
    first = models[0]
    plan = plan_alphas(
        list(first), {k for k, t in first.items() if t.is_floating_point()}, rule=rule, bins=bins
    )
    entropies = [plan_entropies(m, plan) for m in models]
    outputs = []
    for r, d in pairs:
        alphas = alphas_from_entropies(plan, entropy_pairs(entropies, r, d), a=a, c=c)
        outputs.append(graft_state_dicts(models[r], models[d], alphas))
    return outputs
