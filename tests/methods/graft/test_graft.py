"""Entropy-weighted grafting (Filter Grafting, arXiv 2001.05868; code fxmeng/filter-grafting).

Oracles: SPEC's alpha table, closed forms (A = 0 is the plain mean, a model grafted with itself
is itself), numpy's own histogram for entropies, a float64 recomputation of the ring, and a port
of the reference code's key walk for the paper rule.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from tests.oracles import np_entropy, spec_alpha
from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.graft.alpha import (
    PAPER_DEFAULT_ALPHA,
    alphas_from_entropies,
    graft_alpha,
    module_of,
    plan_alphas,
    plan_entropies,
    ring_pairs,
    ring_pairs_to_write,
)
from wa_cli.methods.graft.state import graft_ring, graft_state_dicts


class TinyNet(nn.Module):
    """Conv2d -> BatchNorm2d -> ReLU -> Linear, with conv-named keys as in the reference ResNets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)


def tiny_state_dict(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A TinyNet state dict whose tensors have seed-dependent values and spreads."""
    torch.manual_seed(seed)
    sd = TinyNet().state_dict()
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, t in sd.items():
        if t.is_floating_point():
            # Different shapes of distribution per seed, so entropies (and alphas) differ.
            noise = torch.randn(t.shape, generator=g, dtype=torch.float64)
            out[k] = (noise ** (1 + 2 * (seed % 2)) * (0.1 + seed)).to(dtype)
        else:
            out[k] = torch.tensor(100 + seed)  # num_batches_tracked, int64
    return out


# --- the coefficient ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dh,expected",
    [(0.0, 0.50), (1e-3, 0.56), (0.01, 0.67), (0.1, 0.70), (0.5, 0.70), (2.0, 0.70)],
)
def test_alpha_table_from_spec(dh: float, expected: float) -> None:
    assert graft_alpha(2.0 + dh, 2.0, round_to=2) == expected
    assert graft_alpha(2.0, 2.0 + dh, round_to=2) == pytest.approx(1 - expected, abs=1e-12)


def test_alpha_closed_form_values() -> None:
    # atan(0.5) = 0.4636476090008061, atan(5) = 1.373400766945016 (closed-form constants).
    assert graft_alpha(1.001, 1.0) == pytest.approx(0.4 / math.pi * 0.4636476090008061 + 0.5)
    assert graft_alpha(1.01, 1.0) == pytest.approx(0.4 / math.pi * 1.373400766945016 + 0.5)
    for dh in (1e-4, 3e-3, 0.2, 5.0):
        assert graft_alpha(0.0, dh) == pytest.approx(1 - graft_alpha(dh, 0.0), abs=1e-15)
        assert 0.3 < graft_alpha(dh, 0.0) < 0.7


@pytest.mark.parametrize("dh", [-1.0, -1e-3, 0.0, 0.02, 3.0])
def test_zero_amplitude_is_one_half(dh: float) -> None:
    assert graft_alpha(dh, 0.0, a=0.0) == 0.5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"a": 1.0}, r"a must be in \[0, 1\)"),
        ({"a": -0.1}, r"a must be in \[0, 1\)"),
        ({"c": 0.0}, "c must be a finite number > 0"),
        ({"c": -5.0}, "c must be a finite number > 0"),
        ({"c": math.inf}, "c must be a finite number > 0"),
        ({"round_to": -1}, "round_to"),
    ],
)
def test_alpha_rejects_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(WaError, match=match) as e:
        graft_alpha(1.0, 0.5, **kwargs)
    assert e.value.code == ExitCode.USAGE


def test_alpha_rejects_non_finite_entropy() -> None:
    with pytest.raises(WaError, match="entropies must be finite"):
        graft_alpha(math.nan, 0.5)


# --- rules --------------------------------------------------------------------------------------


def test_module_of() -> None:
    assert module_of("layer1.0.bn1.running_mean") == "layer1.0.bn1"
    assert module_of("weight") == ""


def test_module_rule_uses_each_modules_weight() -> None:
    sd = tiny_state_dict(0)
    floating = {k for k, t in sd.items() if t.is_floating_point()}
    plan = plan_alphas(list(sd), floating)
    assert plan.source == {
        "conv1.weight": "conv1.weight",
        "conv1.bias": "conv1.weight",
        "bn1.weight": "bn1.weight",
        "bn1.bias": "bn1.weight",
        "bn1.running_mean": "bn1.weight",
        "bn1.running_var": "bn1.weight",
        "fc.weight": "fc.weight",
        "fc.bias": "fc.weight",
    }
    assert plan.entropy_keys == ["conv1.weight", "bn1.weight", "fc.weight"]
    assert not plan.half_open and plan.round_to is None


def test_module_rule_without_weight_uses_first_floating_tensor() -> None:
    keys = ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "weight", "bias"]
    plan = plan_alphas(keys, {"bn.running_mean", "bn.running_var", "weight", "bias"})
    assert plan.source == {
        "bn.running_mean": "bn.running_mean",
        "bn.running_var": "bn.running_mean",
        "weight": "weight",
        "bias": "weight",
    }


def test_tensor_rule_gives_every_floating_tensor_its_own_alpha() -> None:
    sd = tiny_state_dict(0)
    floating = [k for k, t in sd.items() if t.is_floating_point()]
    plan = plan_alphas(list(sd), set(floating), rule="tensor")
    assert plan.source == {k: k for k in floating}
    assert "bn1.num_batches_tracked" not in plan.source


def test_entropies_are_read_only_for_the_keys_the_rule_needs() -> None:
    sd = tiny_state_dict(1)
    plan = plan_alphas(list(sd), {k for k, t in sd.items() if t.is_floating_point()})
    read: list[str] = []

    def getter(key: str) -> torch.Tensor:
        read.append(key)
        return sd[key]

    h = plan_entropies(getter, plan)
    assert read == ["conv1.weight", "bn1.weight", "fc.weight"]
    for k in read:
        assert h[k] == pytest.approx(np_entropy(sd[k]), rel=1e-12)


def test_missing_entropy_is_an_error() -> None:
    plan = plan_alphas(["fc.weight"], {"fc.weight"})
    with pytest.raises(WaError, match="no entropies for 'fc.weight'"):
        alphas_from_entropies(plan, {})


def test_unknown_rule_is_an_error() -> None:
    with pytest.raises(WaError, match="unknown graft rule 'layer'") as e:
        plan_alphas(["a.weight"], {"a.weight"}, rule="layer")  # type: ignore[arg-type]
    assert e.value.code == ExitCode.USAGE


# --- the paper rule -----------------------------------------------------------------------------


def reference_entropy(x: torch.Tensor, n: int = 10) -> float:
    """fxmeng/filter-grafting's entropy() (half-open bins by comparisons), in float64."""
    x = x.reshape(-1).to(torch.float64)
    scale = (x.max() - x.min()) / n
    h = 0.0
    for i in range(n):
        p = float(torch.sum((x >= x.min() + i * scale) & (x < x.min() + (i + 1) * scale))) / len(x)
        if p != 0:
            h -= p * math.log(p)
    return h


def reference_graft(
    u_sd: dict[str, torch.Tensor], v_sd: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The reference grafting() key walk (floating keys only; w starts at 0.5 where it crashes)."""
    out = {}
    w = 0.5
    for key, u in u_sd.items():
        if not u.is_floating_point():
            continue
        if "conv" in key:
            dh = reference_entropy(u) - reference_entropy(v_sd[key])
            w = float(np.round(0.4 / np.pi * np.arctan(500 * dh) + 0.5, 2))
        out[key] = u.double() * w + v_sd[key].double() * (1 - w)
    return out


def ordered_sd(seed: int) -> OrderedDict[str, torch.Tensor]:
    """stem (before any conv) -> conv/bn block -> second conv (with bias) -> bn -> fc."""
    g = torch.Generator().manual_seed(seed)
    shapes = OrderedDict(
        [
            ("stem.scale", (4,)),
            ("conv1.weight", (8, 3, 3, 3)),
            ("bn1.weight", (8,)),
            ("bn1.bias", (8,)),
            ("bn1.running_mean", (8,)),
            ("bn1.running_var", (8,)),
            ("bn1.num_batches_tracked", None),
            ("layer1.conv2.weight", (8, 8, 3, 3)),
            ("layer1.conv2.bias", (8,)),
            ("layer1.bn2.weight", (8,)),
            ("fc.weight", (4, 8)),
            ("fc.bias", (4,)),
        ]
    )
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, shape in shapes.items():
        if shape is None:
            sd[k] = torch.tensor(7 * seed + 1)
        else:
            sd[k] = torch.randn(shape, generator=g) ** (1 + 2 * (seed % 2)) * (seed + 1)
    return sd


def test_paper_rule_inherits_the_preceding_conv_alpha() -> None:
    sd = ordered_sd(0)
    floating = {k for k, t in sd.items() if t.is_floating_point()}
    plan = plan_alphas(list(sd), floating, rule="paper")
    assert plan.source == {
        "stem.scale": None,
        "conv1.weight": "conv1.weight",
        "bn1.weight": "conv1.weight",
        "bn1.bias": "conv1.weight",
        "bn1.running_mean": "conv1.weight",
        "bn1.running_var": "conv1.weight",
        "layer1.conv2.weight": "layer1.conv2.weight",
        "layer1.conv2.bias": "layer1.conv2.bias",
        "layer1.bn2.weight": "layer1.conv2.bias",
        "fc.weight": "layer1.conv2.bias",
        "fc.bias": "layer1.conv2.bias",
    }
    assert plan.half_open and plan.round_to == 2


def test_paper_rule_reproduces_the_reference_graft() -> None:
    u, v = ordered_sd(1), ordered_sd(2)
    expected = reference_graft(u, v)
    out = graft_ring([u, v], rule="paper")[0]
    for k, t in expected.items():
        torch.testing.assert_close(out[k], t.to(torch.float32), rtol=1e-6, atol=1e-7)
    assert out["bn1.num_batches_tracked"] == u["bn1.num_batches_tracked"]
    # The alphas are the two-decimal ones, and a key before the first conv gets 0.5.
    plan = plan_alphas(list(u), set(expected), rule="paper")
    hu, hv = plan_entropies(u, plan), plan_entropies(v, plan)
    alphas = alphas_from_entropies(plan, lambda k: (hu[k], hv[k]))
    assert alphas["stem.scale"] == PAPER_DEFAULT_ALPHA
    assert all(round(a, 2) == a for a in alphas.values())
    assert len(set(alphas.values())) > 1


def test_paper_rule_warns_when_order_unknown_or_keys_precede_conv(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="wa_cli.methods.graft.alpha"):
        plan_alphas(["a.w", "conv.w"], {"a.w", "conv.w"}, rule="paper", ordered=False)
    text = caplog.text
    assert "key order is not known" in text
    assert "before the first key containing 'conv'" in text and "'a.w'" in text


# --- grafting -----------------------------------------------------------------------------------


def test_ring_pairs() -> None:
    assert ring_pairs(2) == [(0, 1), (1, 0)]
    assert ring_pairs(4) == [(0, 3), (1, 0), (2, 1), (3, 2)]
    assert ring_pairs_to_write(2) == [(0, 1)]
    assert ring_pairs_to_write(3) == ring_pairs(3)
    with pytest.raises(WaError, match="at least 2 models"):
        ring_pairs(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("rule", ["module", "tensor", "paper"])
def test_grafting_a_model_with_itself_returns_it_exactly(dtype: torch.dtype, rule: str) -> None:
    sd = tiny_state_dict(3, dtype)
    for out in graft_ring([sd, {k: t.clone() for k, t in sd.items()}], rule=rule):  # type: ignore[arg-type]
        assert list(out) == list(sd)
        for k in sd:
            assert out[k].dtype == sd[k].dtype
            assert torch.equal(out[k], sd[k]), k


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("alpha", [0.3, 0.56, 0.67, 0.7])
def test_identical_inputs_are_fixed_points_for_any_alpha(dtype: torch.dtype, alpha: float) -> None:
    # In float64, alpha u + (1 - alpha) u is often one ulp off u; the graft must not be.
    u = {"w": torch.randn(1000, generator=torch.Generator().manual_seed(11)).to(dtype)}
    assert torch.equal(graft_state_dicts(u, {"w": u["w"].clone()}, alpha)["w"], u["w"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_zero_amplitude_is_the_plain_mean(dtype: torch.dtype) -> None:
    u, v = tiny_state_dict(4, dtype), tiny_state_dict(5, dtype)
    out = graft_ring([u, v], a=0.0)[0]
    tol = {torch.float32: 1e-6, torch.float16: 1e-3}[dtype]
    for k, t in u.items():
        if t.is_floating_point():
            mean = ((t.double() + v[k].double()) / 2).to(dtype)
            torch.testing.assert_close(out[k], mean, rtol=tol, atol=tol * 1e-3)
        else:
            assert torch.equal(out[k], t)


@pytest.mark.parametrize("rule", ["module", "tensor", "paper"])
def test_two_model_ring_gives_one_model(rule: str) -> None:
    u, v = tiny_state_dict(6), tiny_state_dict(7)
    floating = {k for k, t in u.items() if t.is_floating_point()}
    plan = plan_alphas(list(u), floating, rule=rule)  # type: ignore[arg-type]
    hu, hv = plan_entropies(u, plan), plan_entropies(v, plan)
    a_u = alphas_from_entropies(plan, lambda k: (hu[k], hv[k]))
    a_v = alphas_from_entropies(plan, lambda k: (hv[k], hu[k]))
    assert any(abs(x - 0.5) > 0.01 for x in a_u.values())  # the alphas are not all trivial
    for k in floating:
        assert a_u[k] + a_v[k] == pytest.approx(1.0, abs=1e-12)
    out_u, out_v = graft_ring([u, v], rule=rule)  # type: ignore[arg-type]
    for k in floating:
        torch.testing.assert_close(out_u[k], out_v[k], rtol=1e-6, atol=1e-6)


def test_three_model_ring_against_float64_recomputation() -> None:
    models = [tiny_state_dict(s) for s in (8, 9, 10)]
    outs = graft_ring(models)
    module_weight = {"conv1": "conv1.weight", "bn1": "bn1.weight", "fc": "fc.weight"}
    for i, out in enumerate(outs):
        u, v = models[i], models[i - 1]  # model 0 receives from model 2
        for k, t in u.items():
            if not t.is_floating_point():
                assert torch.equal(out[k], t)
                continue
            src = module_weight[k.split(".")[0]]
            alpha = spec_alpha(np_entropy(u[src]), np_entropy(v[src]))
            expected = alpha * u[k].double().numpy() + (1 - alpha) * v[k].double().numpy()
            torch.testing.assert_close(
                out[k], torch.from_numpy(expected).float(), rtol=1e-6, atol=1e-7
            )


def test_int_and_bool_buffers_keep_the_receivers_value() -> None:
    u = {"w": torch.randn(3), "n": torch.tensor(5), "mask": torch.tensor([True, False])}
    v = {"w": torch.randn(3), "n": torch.tensor(9), "mask": torch.tensor([False, True])}
    out = graft_state_dicts(u, v, 0.3)
    assert out["n"].dtype == torch.int64 and out["n"].item() == 5
    assert torch.equal(out["mask"], u["mask"])
    torch.testing.assert_close(out["w"], 0.3 * u["w"] + 0.7 * v["w"])
    assert out["n"].data_ptr() != u["n"].data_ptr()  # a copy, not the receiver's storage


def test_graft_state_dicts_rejects_mismatches() -> None:
    u = {"a.weight": torch.zeros(2), "b.weight": torch.zeros(2)}
    with pytest.raises(WaError, match="only in receiver: 'b.weight'") as e:
        graft_state_dicts(u, {"a.weight": torch.zeros(2)}, 0.5)
    assert e.value.code == ExitCode.INCOMPATIBLE
    with pytest.raises(WaError, match=r"shape mismatch for 'b.weight': \(2,\) in receiver") as e:
        graft_state_dicts(u, {"a.weight": torch.zeros(2), "b.weight": torch.zeros(3)}, 0.5)
    assert e.value.code == ExitCode.INCOMPATIBLE
    with pytest.raises(WaError, match="no alpha for floating key 'b.weight'"):
        graft_state_dicts(u, u, {"a.weight": 0.5})
    with pytest.raises(WaError, match="not in the receiver: 'c'"):
        graft_state_dicts(u, u, {"a.weight": 0.5, "b.weight": 0.5, "c": 0.5})


def test_plan_rejects_bad_bins_before_reading_tensors() -> None:
    with pytest.raises(WaError, match="bins must be an integer from 2"):
        plan_alphas(["a.weight"], {"a.weight"}, bins=1)
