"""Entropy-weighted grafting of one model's weights into another's (Filter Grafting).

Meng et al., "Filter Grafting for Deep Neural Networks", CVPR 2020 (arXiv 2001.05868; code
fxmeng/filter-grafting). For a receiver tensor u and a donor tensor v of the same key,

    alpha = (A / pi) * arctan(c * (H(u) - H(v))) + 0.5,    A = 0.4, c = 500,
    u'    = alpha * u + (1 - alpha) * v,

so the tensor that carries more information (higher weight entropy H, see
``wa_cli.methods.graft.entropy``) keeps more of itself. N models graft in a ring: model i receives
from model i - 1, model 0 from model N - 1, all from the pre-graft weights.

Which alpha a key uses is a rule (``Rule``):

* ``"module"`` (default): keys are grouped by module (the name up to the last '.'); a module's
  alpha comes from its ``weight`` tensor, else its first floating tensor, and all its floating
  tensors (weight, bias, BN running statistics) use it.
* ``"tensor"``: every floating tensor gets its own alpha.
* ``"paper"``: the reference code's rule. Keys are walked in state-dict order; a key whose name
  contains "conv" gets a fresh alpha from its own entropy (half-open bins, alpha rounded to two
  decimals); every other key reuses the most recent one, so BN and the classifier inherit the
  preceding conv's alpha. Keys before the first conv key (where the reference code would crash)
  get ``PAPER_DEFAULT_ALPHA`` = 0.5, a plain mean.

Non-float tensors (``num_batches_tracked``, masks) get no alpha: they keep the receiver's value
(the reference code blends and truncates them).

The work is split so that a streaming caller reads one tensor at a time: ``plan_alphas`` looks
only at key names and dtypes and says which tensors need entropies; ``plan_entropies`` computes
them from a getter; ``alphas_from_entropies`` maps a receiver's and a donor's entropies to the
alphas, which the averaging engine then uses as the coefficients [alpha, 1 - alpha].
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from wa_cli.engine.params import number
from wa_cli.errors import ExitCode, WaError, listing
from wa_cli.methods.graft.entropy import check_bins, tensor_entropy

log = logging.getLogger(__name__)

Rule = Literal["module", "tensor", "paper"]
RULES: tuple[Rule, ...] = ("module", "tensor", "paper")

# The paper rule's alpha for keys before the first conv key: the reference code has no alpha there
# (NameError); 0.5 is the neutral choice, a plain mean.
PAPER_DEFAULT_ALPHA = 0.5

EntropyPairs = Mapping[str, tuple[float, float]] | Callable[[str], tuple[float, float]]
TensorSource = Mapping[str, torch.Tensor] | Callable[[str], torch.Tensor]


def check_graft_params(a: float, c: float) -> None:
    """Raise ``WaError`` unless 0 <= a < 1 and c is a finite number > 0 (before reading tensors).

    Example:
        >>> check_graft_params(0.4, 500.0)
    """
    a, c = number("a", a, finite=False), number("c", c, finite=False)
    if not (0.0 <= a < 1.0):
        raise WaError.naming(
            "{a} must be in [0, 1), got {got!r} (the graft amplitude; paper: 0.4; 0 = plain mean)",
            ExitCode.USAGE,
            got=a,
        )
    if not (c > 0.0 and math.isfinite(c)):
        raise WaError.naming(
            "{c} must be a finite number > 0, got {got!r} (the graft steepness; paper: 500)",
            ExitCode.USAGE,
            got=c,
        )


def graft_alpha(
    h_receiver: float,
    h_donor: float,
    *,
    a: float = 0.4,
    c: float = 500.0,
    round_to: int | None = None,
) -> float:
    """The receiver's coefficient alpha = (a / pi) * arctan(c * (H(u) - H(v))) + 0.5.

    alpha lies in (0.5 - a/2, 0.5 + a/2); a = 0 gives 0.5 (a plain mean), and swapping receiver
    and donor gives 1 - alpha.

    Args:
        h_receiver: entropy H(u) of the receiver's tensor.
        h_donor: entropy H(v) of the donor's tensor.
        a: amplitude A, 0 <= a < 1 (paper: 0.4).
        c: steepness, c > 0 (paper: 500).
        round_to: decimals to round alpha to (the reference code rounds to 2), None for none.
            Rounds like numpy (scale, round half to even, unscale), as the reference does.

    Returns:
        alpha as a float.

    Raises:
        WaError: a or c out of range, a non-finite entropy, or a negative ``round_to``.

    Example:
        >>> graft_alpha(2.0, 1.99, round_to=2)
        0.67
    """
    check_graft_params(a, c)
    if not (math.isfinite(h_receiver) and math.isfinite(h_donor)):
        raise WaError(
            f"entropies must be finite, got receiver {h_receiver!r} and donor {h_donor!r}",
            code=ExitCode.BAD_INPUT,
        )
    alpha = a / math.pi * math.atan(c * (h_receiver - h_donor)) + 0.5
    if round_to is not None:
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 0:
            raise WaError(
                f"round_to must be a whole number of decimals >= 0 or None, got {round_to!r}",
                code=ExitCode.USAGE,
            )
        scale = 10.0**round_to
        alpha = round(alpha * scale) / scale
    return alpha


def module_of(key: str) -> str:
    """The module a state-dict key belongs to: the name up to the last '.' ('' at top level).

    Example:
        >>> module_of("layer1.0.bn1.running_mean")
        'layer1.0.bn1'
    """
    return key.rpartition(".")[0]


@dataclass(frozen=True)
class AlphaPlan:
    """Which entropies decide each floating key's alpha, known from key names and dtypes alone.

    Attributes:
        rule: the rule that built the plan.
        source: for every floating key, the key whose (receiver, donor) entropies give its alpha,
            or None for a fixed ``PAPER_DEFAULT_ALPHA`` (paper rule, before the first conv key).
        half_open: entropies use the reference code's half-open bins (paper rule).
        round_to: alpha is rounded to this many decimals (paper rule: 2), or None.
        bins: histogram bins B for the entropies.
    """

    rule: Rule
    source: dict[str, str | None]
    half_open: bool
    round_to: int | None
    bins: int = 10

    @property
    def entropy_keys(self) -> list[str]:
        """The keys whose entropies are needed, each once, in key order."""
        return list(dict.fromkeys(s for s in self.source.values() if s is not None))


def plan_alphas(
    keys: Sequence[str],
    floating: Collection[str],
    *,
    rule: Rule = "module",
    bins: int = 10,
    ordered: bool = True,
    warn: Callable[[str], None] | None = None,
) -> AlphaPlan:
    """Decide, from names alone, whose entropy gives each floating key its alpha.

    Args:
        keys: all keys of the checkpoint, in state-dict order when known.
        floating: the keys whose tensors are floating point; the others get no alpha.
        rule: "module" (default), "tensor" or "paper" (see the module docstring).
        bins: histogram bins for the entropies (paper: 10).
        ordered: whether ``keys`` is in state-dict order. The paper rule depends on that order;
            safetensors files store keys sorted, so pass False for them and a warning is given.
        warn: receives the paper rule's warnings (one line each); by default they are logged.

    Returns:
        An ``AlphaPlan``; its ``entropy_keys`` are the only tensors whose entropies are needed.

    Raises:
        WaError: an unknown rule, or bins < 2.

    Example:
        >>> plan = plan_alphas(["fc.weight", "fc.bias"], {"fc.weight", "fc.bias"})
        >>> plan.source, plan.entropy_keys
        ({'fc.weight': 'fc.weight', 'fc.bias': 'fc.weight'}, ['fc.weight'])
    """
    if rule not in RULES:
        raise WaError(
            f"unknown graft rule {rule!r}; expected one of {', '.join(RULES)}", code=ExitCode.USAGE
        )
    check_bins(bins)  # before any tensor is read
    float_keys = [k for k in keys if k in floating]
    source: dict[str, str | None] = {}
    if rule == "tensor":
        source = {k: k for k in float_keys}
    elif rule == "module":
        by_module: dict[str, list[str]] = {}
        for k in float_keys:
            by_module.setdefault(module_of(k), []).append(k)
        for mod, members in by_module.items():
            weight = f"{mod}.weight" if mod else "weight"
            src = weight if weight in members else members[0]
            source.update(dict.fromkeys(members, src))
    else:
        say = warn if warn is not None else log.warning
        if not ordered:
            say(
                "the paper graft rule follows state-dict order, but the key order is not known "
                "(safetensors stores keys sorted): non-conv keys may inherit the wrong conv's alpha"
            )
        current: str | None = None
        for k in float_keys:
            if "conv" in k:
                current = k
            source[k] = current
        before = [k for k, s in source.items() if s is None]
        if before:
            say(
                f"paper graft rule: {len(before)} floating key(s) come before the first key "
                f"containing 'conv' and use alpha {PAPER_DEFAULT_ALPHA:.1f} (a plain mean): "
                f"{listing(before)}"
            )
    paper = rule == "paper"
    return AlphaPlan(
        rule=rule, source=source, half_open=paper, round_to=2 if paper else None, bins=bins
    )


def plan_entropies(tensors: TensorSource, plan: AlphaPlan) -> dict[str, float]:
    """Entropies of one model's tensors that ``plan`` needs, read one tensor at a time.

    Args:
        tensors: a state dict, or a callable key -> tensor (e.g. a lazy reader's getter), so that
            only the needed tensors are ever loaded.
        plan: from ``plan_alphas``; gives the keys, the bins and the bin rule.

    Returns:
        {key: entropy in nats} for ``plan.entropy_keys``.

    Example:
        >>> sd = {"fc.weight": torch.arange(10.0), "fc.bias": torch.zeros(3)}
        >>> plan = plan_alphas(list(sd), set(sd))
        >>> round(plan_entropies(sd, plan)["fc.weight"], 4)
        2.3026
    """
    get = tensors if callable(tensors) else tensors.__getitem__
    return {
        k: tensor_entropy(get(k), bins=plan.bins, half_open=plan.half_open, name=k)
        for k in plan.entropy_keys
    }


def alphas_from_entropies(
    plan: AlphaPlan, entropies: EntropyPairs, *, a: float = 0.4, c: float = 500.0
) -> dict[str, float]:
    """The receiver's alpha for every floating key, from (receiver, donor) entropy pairs.

    Args:
        plan: from ``plan_alphas``.
        entropies: {key: (H(receiver), H(donor))} or a callable key -> that pair, for at least
            ``plan.entropy_keys``.
        a: amplitude A (paper: 0.4).
        c: steepness (paper: 500).

    Returns:
        {floating key: alpha}; non-float keys are absent (they keep the receiver's value).

    Raises:
        WaError: a needed entropy pair is missing, or a/c out of range.

    Example:
        >>> plan = plan_alphas(["fc.weight", "fc.bias"], {"fc.weight", "fc.bias"})
        >>> alphas_from_entropies(plan, {"fc.weight": (1.0, 1.0)})
        {'fc.weight': 0.5, 'fc.bias': 0.5}
    """
    alpha_of: dict[str, float] = {}
    for k in plan.entropy_keys:
        if callable(entropies):
            h_u, h_v = entropies(k)
        elif k in entropies:
            h_u, h_v = entropies[k]
        else:
            raise WaError(f"no entropies for {k!r}: the graft plan needs them to compute alpha")
        alpha_of[k] = graft_alpha(h_u, h_v, a=a, c=c, round_to=plan.round_to)
    return {k: PAPER_DEFAULT_ALPHA if s is None else alpha_of[s] for k, s in plan.source.items()}


def entropy_pairs(
    entropies: Sequence[Mapping[str, float]], receiver: int, donor: int
) -> Callable[[str], tuple[float, float]]:
    """``key -> (H(receiver), H(donor))``: the entropies :func:`alphas_from_entropies` takes."""

    def pair(key: str) -> tuple[float, float]:
        return entropies[receiver][key], entropies[donor][key]

    return pair


def ring_pairs(n: int) -> list[tuple[int, int]]:
    """(receiver, donor) for n models grafted in a ring: i receives from i - 1, 0 from n - 1.

    For n = 2 the two grafts give the same model (alpha_0 + alpha_1 = 1, see
    ``ring_pairs_to_write``).

    Example:
        >>> ring_pairs(3)
        [(0, 2), (1, 0), (2, 1)]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise WaError(f"grafting needs at least 2 models, got {n!r}")
    return [(i, (i - 1) % n) for i in range(n)]


def ring_pairs_to_write(n: int) -> list[tuple[int, int]]:
    """The ring grafts whose outputs differ: all of them, except for n = 2, only the first.

    With two models, alpha for (0 <- 1) is 1 - alpha for (1 <- 0) (arctan is odd), so both
    outputs are alpha u_0 + (1 - alpha) u_1: write one. (With alpha rounded to 2 decimals the
    identity still holds: rounding half to even is symmetric about 0.5.)

    Example:
        >>> ring_pairs_to_write(2)
        [(0, 1)]
    """
    pairs = ring_pairs(n)
    return pairs[:1] if n == 2 else pairs
