"""The combination's corners against exact rational oracles (fractions.Fraction).

Each case reproduces a failure of an earlier engine: bf16 overflow, double rounding through
float32, an accumulator narrower than the output, extreme weights.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch
from safetensors.torch import load_file, save_file

from wa_cli.engine.rounding import round_to_odd_float32
from wa_cli.methods.average import average, average_to_file

# (significand bits, minimum normal exponent, largest finite value) of each output format.
FORMATS = {
    torch.bfloat16: (8, -126, (2 - 2**-7) * 2.0**127),
    torch.float16: (11, -14, 65504.0),
    torch.float32: (24, -126, (2 - 2**-23) * 2.0**127),
}


def round_exact(q: Fraction, dtype: torch.dtype) -> float:
    """The correctly rounded (to nearest, ties to even) value of ``q`` in ``dtype``."""
    bits, emin, largest = FORMATS[dtype]
    if q == 0:
        return 0.0
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    ulp = Fraction(2) ** (max(e, emin) - bits + 1)
    r = round(a / ulp) * ulp  # round() of a Fraction rounds half to even
    value = math.inf if r > largest else float(r)
    return math.copysign(value, q)


def exact_mean(rows: list[list[float]], weights: list[float]) -> list[Fraction]:
    total = sum(Fraction(w) for w in weights)
    return [
        sum(Fraction(w) * Fraction(r[i]) for w, r in zip(weights, rows)) / total
        for i in range(len(rows[0]))
    ]


def mean_of(tmp_path, rows, dtype, weights=None, out=None, precision="auto") -> torch.Tensor:
    paths = []
    for i, row in enumerate(rows):
        path = tmp_path / f"in{i}.safetensors"
        save_file({"w": torch.tensor(row, dtype=dtype)}, path)
        paths.append(path)
    return dict(average(paths, weights=weights, dtype=out, precision=precision))["w"]


def as_floats(t: torch.Tensor) -> list[float]:
    return t.double().tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_identical_inputs_at_the_top_of_the_range_give_themselves(tmp_path, dtype):
    top = torch.finfo(dtype).max
    row = [top, -top, top / 3, 1.0]
    for weights in (None, [1000.0, 1000.0], [1.0, 3.0]):
        result = mean_of(tmp_path, [row, row], dtype, weights)
        assert torch.equal(result, torch.tensor(row, dtype=dtype)), (weights, result)


def test_bf16_sum_past_float32_range_is_the_correctly_rounded_mean(tmp_path):
    rows = [[3.0e38, -3.0e38, 2.0e38, 1.0], [3.2e38, -2.9e38, 3.3e38, 2.0]]
    rows = [as_floats(torch.tensor(r).bfloat16()) for r in rows]
    result = mean_of(tmp_path, rows, torch.bfloat16)
    expected = [round_exact(q, torch.bfloat16) for q in exact_mean(rows, [1.0, 1.0])]
    assert as_floats(result) == expected
    heavy = mean_of(tmp_path, [[1e36], [1e36]], torch.bfloat16, [1000.0, 1000.0])
    assert as_floats(heavy) == as_floats(torch.tensor([1e36]).bfloat16())


def test_overflow_recheck_leaves_genuine_inf_and_nan_alone(tmp_path):
    rows = [[math.inf, math.nan, 3.0e38], [1.0, 1.0, 3.0e38]]
    result = mean_of(tmp_path, rows, torch.bfloat16)
    assert math.isinf(result[0].item()) and math.isnan(result[1].item())
    assert result[2].item() == torch.tensor(3.0e38).bfloat16().item()


@pytest.mark.parametrize("out", [torch.bfloat16, torch.float16])
def test_float64_to_16_bits_rounds_once(tmp_path, out):
    # The case: 1+2^-8 is a bf16 midpoint; the exact mean lies 2^-24 above it, which a
    # float32 step rounds back onto the midpoint (then to even: 1.0).
    rows = [[1 + 2**-8], [1 + 2**-8 + 2**-23]]
    if out == torch.float16:
        rows = [[1 + 2**-11], [1 + 2**-11 + 2**-23]]
    result = mean_of(tmp_path, rows, torch.float32, out=out)
    expected = [round_exact(q, out) for q in exact_mean(rows, [1.0, 1.0])]
    assert as_floats(result) == expected
    if out == torch.bfloat16:
        assert expected == [1.0078125]


@pytest.mark.parametrize("out", [torch.bfloat16, torch.float16])
def test_means_next_to_16_bit_midpoints_equal_the_exact_rounding(tmp_path, out):
    # m is a midpoint of the output format; m, m, m + k·ulp32(m) average to m + k·ulp32/3, which
    # a float32 step rounds onto m (then to even) for |k| = 1: the double rounding.
    rng = random.Random(0)
    bits = FORMATS[out][0]
    rows: list[list[float]] = [[], [], []]
    for _ in range(400):
        scale = 2.0 ** rng.randrange(-6, 6)
        m = (1 + (2 * rng.randrange(2 ** (bits - 1)) + 1) * 2.0**-bits) * scale
        k = rng.choice([-2, -1, 1, 2])
        rows[0].append(m)
        rows[1].append(m)
        rows[2].append(m + k * 2.0**-23 * scale)
    result = mean_of(tmp_path, rows, torch.float32, out=out)
    expected = [round_exact(q, out) for q in exact_mean(rows, [1.0, 1.0, 1.0])]
    assert as_floats(result) == expected


def test_bf16_means_of_three_inputs_are_correctly_rounded(tmp_path):
    # Inputs within a few binades of each other: the float32 accumulator holds their sum exactly,
    # so the output must be the exact mean's rounding (the quotient by 3 is rounded only once).
    torch.manual_seed(1)
    rows = [as_floats(torch.empty(3000).uniform_(0.5, 4.0).bfloat16()) for _ in range(3)]
    result = mean_of(tmp_path, rows, torch.bfloat16)
    expected = [round_exact(q, torch.bfloat16) for q in exact_mean(rows, [1.0] * 3)]
    assert as_floats(result) == expected


def test_accumulator_is_as_wide_as_the_output(tmp_path):
    result = mean_of(tmp_path, [[1.0], [1.0], [2.0]], torch.bfloat16, out=torch.float64)
    assert result.dtype == torch.float64
    assert result.item() == float(Fraction(4, 3))
    # --precision float32 cannot narrow a float64 output either.
    forced = mean_of(tmp_path, [[1.0], [1.0], [2.0]], torch.bfloat16, out=torch.float64,
                     precision="float32")  # fmt: skip
    assert forced.item() == float(Fraction(4, 3))


@pytest.mark.parametrize("weights", [[1e308, 1e308], [5e-324, 5e-324], [1e308, 5e-324]])
def test_extreme_weights_give_the_exact_mean(tmp_path, weights):
    rows = [[1.0, 2.0, -3.5], [3.0, 4.0, 0.25]]
    result = mean_of(tmp_path, rows, torch.float32, weights)
    expected = [round_exact(q, torch.float32) for q in exact_mean(rows, weights)]
    assert as_floats(result) == expected


def test_extreme_weights_are_reported_normalized(tmp_path):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"in{i}.safetensors")
        save_file({"w": torch.ones(3)}, paths[-1])
    report = average_to_file(paths, tmp_path / "out.safetensors", weights=[1e308, 1e308])
    assert report.input_weights == [0.5, 0.5]
    assert report.stats.non_finite == {}


def test_precision_float32_on_float32_inputs_is_reported(tmp_path):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"in{i}.safetensors")
        save_file({"w": torch.ones(3)}, paths[-1])
    report = average_to_file(paths, tmp_path / "o.safetensors", precision="float32")
    assert any("--precision float32" in n for n in report.notes)
    report = average_to_file(paths, tmp_path / "o.safetensors", force=True)
    assert not any("--precision float32" in n for n in report.notes)


def test_round_to_odd_then_nearest_is_correct_rounding():
    torch.manual_seed(0)
    # float64 values around bf16 midpoints, within float32's rounding of them.
    base = torch.randint(0, 2**8, (20000,), dtype=torch.float64)
    x = (1 + (2 * base + 1) * 2.0**-9) * (1 + torch.randint(-3, 4, (20000,)) * 2.0**-30)
    x = torch.cat([x, -x, torch.tensor([2.0**130, -(2.0**130), 0.0, 1e-45], dtype=torch.float64)])
    got = round_to_odd_float32(x).to(torch.bfloat16).double().tolist()
    expected = [round_exact(Fraction(v), torch.bfloat16) for v in x.tolist()]
    assert got == expected


@pytest.mark.parametrize("weights", [[1e308, 1e308], [3.0, 3.0], [1.0, 1.0]])
def test_equal_weights_are_the_uniform_mean_exactly(tmp_path, weights):
    """Equal weights of any size: x and −x average to 0 and halfway means round to even, as with
    1,1 (scaled to 1.11…, the products rounded and a fused multiply-add left ±3e-8·|x|)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4096, generator=g) * 100).to(torch.bfloat16)
    tie = torch.tensor([1.0, 1.0078125], dtype=torch.bfloat16)  # mean 1 + 2⁻⁸: halfway
    save_file({"x": x, "t": tie[:1]}, tmp_path / "a.safetensors")
    save_file({"x": -x, "t": tie[1:]}, tmp_path / "b.safetensors")
    out = tmp_path / "o.safetensors"
    average_to_file([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], out, weights=weights)
    got = load_file(out)
    assert torch.equal(got["x"], torch.zeros_like(x))
    assert got["t"].item() == 1.0  # round half to even
