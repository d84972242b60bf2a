"""Weight entropy and filter norms (Filter Grafting, arXiv 2001.05868).

Oracles: hand-computed histograms, closed forms (0 for a constant, ln B for one bin each), an
independent float64 numpy recomputation, and a port of the reference code's half-open loop.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.graft import entropy as entropy_mod
from wa_cli.methods.graft.entropy import (
    bin_counts,
    count_invalid_filters,
    entropy_from_counts,
    filter_l1_norms,
    tensor_entropy,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.fixture(autouse=True, params=["direct", "table/thresholds"])
def counting_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs on both counting paths: the formulas on the elements (small tensors) and
    the bit-pattern table or exact thresholds (large ones)."""
    from wa_cli.methods.graft import histogram

    if request.param != "direct":
        monkeypatch.setattr(histogram, "DIRECT_ELEMENTS", 0)


def reference_counts(t: torch.Tensor, n: int = 10) -> list[int]:
    """A port of fxmeng/filter-grafting's entropy() loop, counting: edges in the tensor's dtype."""
    x = t.reshape(-1)
    if not x.is_floating_point() or x.dtype.itemsize == 1:
        x = x.float()  # the reference's arithmetic cannot run in float8 or integers
    scale = (x.max() - x.min()) / n
    return [
        int(torch.sum((x >= x.min() + i * scale) * (x < x.min() + (i + 1) * scale)))
        for i in range(n)
    ]


def reference_entropy(t: torch.Tensor, n: int = 10) -> float:
    """The same loop's entropy: p and H in float32, as the reference computes them."""
    x = t.reshape(-1)
    scale = (x.max() - x.min()) / n
    entropy: torch.Tensor | int = 0
    for i in range(n):
        p = torch.sum(
            (x >= x.min() + i * scale) * (x < x.min() + (i + 1) * scale), dtype=torch.float
        ) / len(x)
        if p != 0:
            entropy -= p * torch.log(p)
    return float(entropy)


def oracle_counts(x: np.ndarray, bins: int, half_open: bool) -> list[int]:
    """The reference loop's counts (half-open) or the float64 formula's (closed)."""
    if half_open:
        return reference_counts(torch.from_numpy(np.ascontiguousarray(x)), bins)
    return numpy_counts(x, bins, False)


def numpy_counts(x: np.ndarray, bins: int, half_open: bool) -> list[int]:
    """float64 reference: bin floor((x - min) / s), s = (max - min) / B."""
    x = np.asarray(x, dtype=np.float64).ravel()
    lo, hi = x.min(), x.max()
    if lo == hi:
        return [0] * bins if half_open else [x.size] + [0] * (bins - 1)
    idx = np.floor((x - lo) / ((hi - lo) / bins)).astype(np.int64)
    # Half-open: the maximum (and anything past the last edge) is in no bin; closed: clamp.
    idx = idx[(x != hi) & (idx < bins)] if half_open else np.minimum(idx, bins - 1)
    return np.bincount(idx, minlength=bins)[:bins].tolist()


def float64_bin_index(x: np.ndarray, bins: int = 10) -> np.ndarray:
    x64 = x.astype(np.float64)
    return np.minimum(np.floor((x64 - x64.min()) / ((x64.max() - x64.min()) / bins)), bins - 1)


def reference_loop_entropy(x: np.ndarray, n: int = 10) -> float:
    """fxmeng/filter-grafting's entropy(): half-open bins by comparisons (here in float64)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    lo = x.min()
    scale = (x.max() - lo) / n
    h = 0.0
    for i in range(n):
        p = np.sum((x >= lo + i * scale) & (x < lo + (i + 1) * scale)) / x.size
        if p != 0:
            h -= p * math.log(p)
    return h


def edge_values(lo: float, hi: float, bins: int, dtype: type) -> np.ndarray:
    """The representable values nearest every float64 bin edge, +-3 ulps, plus min and max."""
    lo, hi = float(dtype(lo)), float(dtype(hi))
    step = (hi - lo) / bins
    out = []
    for j in range(bins + 1):
        for direction in (-np.inf, np.inf):
            v = dtype(lo + j * step)
            for _ in range(4):
                out.append(v)
                v = np.nextafter(v, dtype(direction))
    return np.clip(np.array(out + [lo, hi], dtype=dtype), dtype(lo), dtype(hi))


# --- closed forms and hand-computed histograms -------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("half_open", [False, True])
def test_constant_tensor_has_zero_entropy(dtype: torch.dtype, half_open: bool) -> None:
    t = torch.full((7, 3), 0.25, dtype=dtype)
    assert tensor_entropy(t, half_open=half_open) == 0.0


def test_empty_tensor_has_zero_entropy() -> None:
    assert tensor_entropy(torch.empty(0, 4)) == 0.0


def test_one_element_per_bin_gives_ln_b() -> None:
    # min 0, max 9, s = 0.9: element k lands in bin floor(k / 0.9) = k, and 9 -> clamped to bin 9.
    t = torch.arange(10.0)
    assert bin_counts(t) == [1] * 10
    assert tensor_entropy(t) == pytest.approx(math.log(10), rel=1e-15)


@pytest.mark.parametrize("bins", [2, 5, 10, 32])
def test_uniform_spread_over_bins_gives_ln_b(bins: int) -> None:
    # 40 elements at each bin's centre, plus nothing else: p_j = 1/B for every bin.
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    t = centres.repeat(40)[torch.randperm(40 * bins, generator=torch.Generator().manual_seed(0))]
    assert bin_counts(t, bins=bins) == [40] * bins
    assert tensor_entropy(t, bins=bins) == pytest.approx(math.log(bins), rel=1e-14)


def test_hand_computed_two_bin_histogram() -> None:
    t = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert bin_counts(t, bins=2) == [3, 1]
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert tensor_entropy(t, bins=2) == pytest.approx(expected, rel=1e-15)


def test_half_open_rule_drops_every_maximum() -> None:
    # Paper-compatible: the maximum falls in no bin, so p sums to 1 - #max/N.
    t = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert bin_counts(t, bins=2, half_open=True) == [3, 0]
    assert tensor_entropy(t, bins=2, half_open=True) == pytest.approx(-0.75 * math.log(0.75))
    t = torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0, 3.0])
    counts = bin_counts(t, bins=3, half_open=True)
    assert counts == [1, 1, 1] and sum(counts) == t.numel() - 3
    assert tensor_entropy(t, bins=3, half_open=True) == pytest.approx(
        -3 * (1 / 6) * math.log(1 / 6)
    )
    assert tensor_entropy(torch.arange(10.0), half_open=True) == pytest.approx(0.9 * math.log(10))


def test_half_open_rule_drops_the_maximum_even_when_the_formula_keeps_it() -> None:
    # For some ranges (max - min) / s rounds below B in float64, so floor() would put the maximum
    # in the last bin; the paper rule's bins [min + j s, min + (j+1) s) still exclude it.
    rng = np.random.default_rng(0)
    lo = rng.standard_normal(1000).astype(np.float32)
    hi = lo + (rng.random(1000) * 3).astype(np.float32)
    width = hi.astype(np.float64) - lo.astype(np.float64)
    i = int(np.argmax(np.floor(width / (width / 7)) < 7))
    assert np.floor(width[i] / (width[i] / 7)) == 6  # the seeded search found such a range
    t = torch.tensor([lo[i], hi[i], hi[i]])
    assert bin_counts(t, bins=7, half_open=True) == [1, 0, 0, 0, 0, 0, 0]
    assert bin_counts(t, bins=7) == [1, 0, 0, 0, 0, 0, 2]


def test_base_two_gives_bits() -> None:
    assert tensor_entropy(torch.tensor([0.0, 1.0]), base=2) == pytest.approx(1.0, rel=1e-15)
    t = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    assert tensor_entropy(t, base=2) == pytest.approx(tensor_entropy(t) / math.log(2), rel=1e-14)


def test_entropy_is_permutation_and_shape_invariant() -> None:
    t = torch.randn(64, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    shuffled = t.reshape(-1)[torch.randperm(t.numel(), generator=torch.Generator().manual_seed(3))]
    assert tensor_entropy(shuffled) == tensor_entropy(t)
    assert tensor_entropy(t.transpose(0, 1)) == tensor_entropy(t)  # non-contiguous view


def test_entropy_is_bounded_by_ln_b() -> None:
    for seed in range(5):
        t = torch.randn(500, generator=torch.Generator().manual_seed(seed)) ** 3
        assert 0.0 <= tensor_entropy(t) <= math.log(10)


def test_integer_tensor_histogram() -> None:
    assert bin_counts(torch.arange(10)) == [1] * 10


# --- exact bin edges against a float64 reference ----------------------------------------------


@pytest.mark.parametrize("np_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("lo,hi", [(-1.3, 2.7), (0.0, 1.0), (-0.05, 0.07), (3.0, 7.0)])
@pytest.mark.parametrize("half_open", [False, True])
def test_values_on_bin_edges_land_where_float64_says(
    np_dtype: type, lo: float, hi: float, half_open: bool
) -> None:
    x = edge_values(lo, hi, 10, np_dtype)
    # The data must be able to catch the same formula computed in the tensor's own dtype.
    t = torch.from_numpy(x)
    naive = torch.floor((t - t.min()) / ((t.max() - t.min()) / 10))
    assert (naive.clamp(max=9).numpy() != float64_bin_index(x)).any()
    assert bin_counts(t, half_open=half_open) == oracle_counts(x, 10, half_open)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("half_open", [False, True])
def test_random_tensors_match_float64_reference(dtype: torch.dtype, half_open: bool) -> None:
    g = torch.Generator().manual_seed(4)
    t = (torch.randn(5000, generator=g) * 0.05).to(dtype)
    x = t.to(torch.float64).numpy()
    for bins in (2, 10, 17):
        counts = bin_counts(t, bins=bins, half_open=half_open)
        assert counts == (reference_counts(t, bins) if half_open else numpy_counts(x, bins, False))
        if half_open:
            assert tensor_entropy(t, bins=bins, half_open=True) == reference_entropy(t, bins)
        else:
            assert tensor_entropy(t, bins=bins) == pytest.approx(
                entropy_from_counts(numpy_counts(x, bins, False), x.size), rel=1e-14
            )


def test_closed_rule_matches_numpy_histogram_on_random_data() -> None:
    # np.histogram bins by its own edges (last bin closed): an independent implementation.
    x = np.random.default_rng(5).standard_normal(4000)
    counts, _ = np.histogram(x, bins=10)
    assert bin_counts(torch.from_numpy(x)) == counts.tolist()


def test_half_open_rule_matches_reference_loop() -> None:
    x = torch.from_numpy(np.random.default_rng(6).standard_normal(3000).astype(np.float32))
    assert bin_counts(x, half_open=True) == reference_counts(x)
    assert tensor_entropy(x, half_open=True) == reference_entropy(x)


def test_half_open_rule_keeps_the_maximum_when_the_float32_edge_rounds_above_it() -> None:
    # The case: float32 lo + 10·s lands above the max, so the reference counts the max
    # in bin 9; a float64 edge would drop it.
    rng = np.random.default_rng(8)
    for _ in range(2000):
        x = rng.standard_normal(144).astype(np.float32)
        t = torch.from_numpy(x)
        scale = (t.max() - t.min()) / 10
        if t.min() + 10 * scale > t.max():
            break
    else:
        pytest.fail("no float32 range whose last edge rounds above its maximum")
    counts = bin_counts(t, half_open=True)
    assert counts == reference_counts(t)
    assert sum(counts) == x.size  # nothing dropped: the max is in bin 9
    assert numpy_counts(x, 10, True) != counts  # the float64 rule would drop it


def test_paper_rule_alpha_matches_the_reference_on_random_conv_pairs() -> None:
    # 200 random 16x1x3x3 conv pairs: the reference's alpha = round(a/pi·atan(c·ΔH) + 0.5, 2).
    from wa_cli.methods.graft.alpha import alphas_from_entropies, plan_alphas, plan_entropies

    g = torch.Generator().manual_seed(9)
    agree = 0
    for _ in range(200):
        u, v = (torch.randn(16, 1, 3, 3, generator=g) * 0.3 for _ in range(2))
        expected = round(
            0.4 / np.pi * np.arctan(500 * (reference_entropy(u) - reference_entropy(v))) + 0.5, 2
        )
        plan = plan_alphas(["conv1.weight"], {"conv1.weight"}, rule="paper")
        hu = plan_entropies({"conv1.weight": u}, plan)
        hv = plan_entropies({"conv1.weight": v}, plan)
        alpha = alphas_from_entropies(
            plan, {"conv1.weight": (hu["conv1.weight"], hv["conv1.weight"])}
        )
        assert bin_counts(u, half_open=True) == reference_counts(u)
        agree += alpha["conv1.weight"] == expected
    assert agree == 200


@settings(max_examples=60, deadline=None)
@example(values=[0.0, 2.665269679145802e-42], bins=2, half_open=False)  # a subnormal range
@example(values=[-1e-45, 1e-45, 0.0], bins=10, half_open=True)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=60),
    st.integers(2, 12),
    st.booleans(),
)
def test_counts_match_reference_for_arbitrary_values(
    values: list[float], bins: int, half_open: bool
) -> None:
    x = np.array(values, dtype=np.float32)
    assert bin_counts(torch.from_numpy(x), bins=bins, half_open=half_open) == oracle_counts(
        x, bins, half_open
    )


@pytest.mark.parametrize("half_open", [False, True])
def test_chunked_path_matches_reference(monkeypatch: pytest.MonkeyPatch, half_open: bool) -> None:
    # Chunks of 7 elements: counts accumulate across many uneven chunks.
    monkeypatch.setattr(entropy_mod, "_CHUNK", 7)
    x = np.concatenate([edge_values(-1.3, 2.7, 10, np.float32), np.float32([2.7, 2.7])])
    assert bin_counts(torch.from_numpy(x), half_open=half_open) == oracle_counts(x, 10, half_open)


@pytest.mark.gpu
@pytest.mark.parametrize("half_open", [False, True])
def test_cuda_matches_cpu(half_open: bool) -> None:
    x = np.concatenate(
        [edge_values(-0.05, 0.07, 10, np.float32), np.random.default_rng(7).normal(0, 0.02, 10**6)]
    ).astype(np.float32)
    t = torch.from_numpy(x)
    assert bin_counts(t.cuda(), half_open=half_open) == bin_counts(t, half_open=half_open)
    assert bin_counts(t.cuda(), half_open=half_open) == oracle_counts(x, 10, half_open)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bins", [1, 0, -3, True, 2.5])
def test_rejects_fewer_than_two_bins(bins: object) -> None:
    with pytest.raises(WaError, match="bins must be an integer from 2") as e:
        tensor_entropy(torch.randn(10), bins=bins)  # type: ignore[arg-type]
    assert e.value.code == ExitCode.USAGE


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_rejects_non_finite_values_naming_the_tensor(bad: float) -> None:
    with pytest.raises(WaError, match="'fc.weight' holds NaN or inf") as e:
        tensor_entropy(torch.tensor([0.0, bad, 1.0]), name="fc.weight")
    assert e.value.code == ExitCode.BAD_INPUT


@pytest.mark.parametrize("base", [0.0, -2.0, 1.0])
def test_rejects_bad_base(base: float) -> None:
    with pytest.raises(WaError, match="base"):
        tensor_entropy(torch.tensor([0.0, 1.0]), base=base)


# --- filter L1 norms ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_filter_l1_norms_match_float64_sum(dtype: torch.dtype) -> None:
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(8)).to(dtype)
    expected = np.abs(w.to(torch.float64).numpy()).reshape(16, -1).sum(axis=1)
    norms = filter_l1_norms(w)
    assert norms.dtype == torch.float64 and norms.shape == (16,)
    np.testing.assert_allclose(norms.numpy(), expected, rtol=1e-12)


def test_count_invalid_filters_hand_case() -> None:
    w = torch.tensor(
        [[1.0, -2.0], [0.05, -0.04], [0.005, 0.0], [0.0, 0.0]]
    )  # norms 3, .09, .005, 0
    assert count_invalid_filters(w) == 3
    assert count_invalid_filters(w, threshold=0.01) == 2
    assert count_invalid_filters(w, threshold=0.0) == 0


def test_filter_norms_need_two_dimensions() -> None:
    with pytest.raises(WaError, match="'bn.weight' has shape \\(4,\\)"):
        filter_l1_norms(torch.ones(4), name="bn.weight")
    with pytest.raises(WaError, match="threshold"):
        count_invalid_filters(torch.ones(2, 2), threshold=-0.1)
