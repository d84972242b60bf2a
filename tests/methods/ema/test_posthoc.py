"""Post-hoc EMA over files: raw trajectories by quadrature, snapshots by reconstruction.

Oracles: the closed-form weights are checked in test_power.py against numerical integration;
here the output must equal Σ w_i θ_i computed in float64 from the files and rounded once, with
w_i from an independent computation (numerical integration for the raw trajectory, a direct
least-squares solve for the snapshots).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from wa_cli.errors import WaError
from wa_cli.methods.ema import ema_to_file
from wa_cli.methods.ema.power import Profile, gamma_of_sigma_rel, inner
from wa_cli.train import PowerEMA

integrate = pytest.importorskip("scipy.integrate")

STEPS = [100, 250, 300, 600, 700, 1000]


def _trajectory(tmp_path, steps, slope=None):
    g = torch.Generator().manual_seed(0)
    paths, states = [], []
    a, b = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    for s in steps:
        w = a + b * s if slope == "linear" else torch.randn(3, 4, generator=g) + s / 100
        state = {"w": w.float(), "n": torch.tensor(s)}
        paths.append(tmp_path / f"ckpt_{s}.safetensors")
        save_file(state, paths[-1], metadata={"step": str(s)})
        states.append(state)
    return paths, states


def _hat_weights(steps, t, gamma):
    p = lambda x: (gamma + 1) / t * (x / t) ** gamma  # noqa: E731
    out = []
    for i in range(len(steps)):
        e = np.eye(len(steps))[i]
        h = lambda x, e=e: float(np.interp(x, steps, e))  # noqa: E731 (flat outside: extrapolation)
        edges = [0, *steps]
        out.append(sum(integrate.quad(lambda x, h=h: p(x) * h(x), lo, hi, epsabs=1e-14)[0]
                       for lo, hi in zip(edges[:-1], edges[1:])))  # fmt: skip
    return out


def test_raw_trajectory_linear_quadrature_equals_the_weighted_sum(tmp_path):
    paths, states = _trajectory(tmp_path, STEPS)
    out = tmp_path / "o.safetensors"
    report = ema_to_file(paths, out, sigma_rel=0.1)
    gamma = gamma_of_sigma_rel(0.1)
    w = _hat_weights(STEPS, 1000, gamma)
    np.testing.assert_allclose(report.input_weights, w, atol=1e-10)
    expected = sum(wi * s["w"].double() for wi, s in zip(w, states)).float()
    torch.testing.assert_close(load_file(out)["w"], expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(load_file(out)["n"], states[-1]["n"])  # non-float: copied from the last
    assert report.params["extrapolated"] == pytest.approx((100 / 1000) ** (gamma + 1))


def test_at_step_leaves_later_checkpoints_out_and_warns_on_extrapolation(tmp_path):
    paths, _ = _trajectory(tmp_path, STEPS)
    report = ema_to_file(paths, tmp_path / "o.safetensors", sigma_rel=0.25, at_step=300)
    assert len(report.input_weights) == 3
    assert any("before the first checkpoint" in w for w in report.warnings)
    with pytest.raises(WaError, match="not a saved step"):
        ema_to_file(paths, tmp_path / "p.safetensors", sigma_rel=0.1, at_step=301)


def test_linear_quadrature_is_exact_for_a_linear_drift_from_step_zero(tmp_path):
    steps = [0, 130, 170, 520, 1000]
    paths, states = _trajectory(tmp_path, steps, slope="linear")
    out = tmp_path / "o.safetensors"
    ema_to_file(paths, out, gamma=3.0)
    a, b = states[0]["w"].double(), (states[-1]["w"].double() - states[0]["w"].double()) / 1000
    exact = a + b * 1000 * 4 / 5  # ∫ p_T(τ)(a + bτ) dτ with (γ+1)/(γ+2) = 4/5
    torch.testing.assert_close(load_file(out)["w"].double(), exact, rtol=1e-5, atol=1e-5)


def test_snapshots_reconstruct_with_an_independent_solve(tmp_path):
    model = nn.Linear(4, 3).double()
    ema = PowerEMA(model, sigma_rels=(0.05, 0.10), directory=tmp_path / "snaps", every=50)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
        ema.update()
        ema.maybe_save()
    paths = sorted((tmp_path / "snaps").glob("*.safetensors"))
    out = tmp_path / "o.safetensors"
    report = ema_to_file(paths, out, sigma_rel=0.07, at_step=250)
    snaps = [(int(p.stem.rsplit("_", 1)[1]), float(p.stem.split("_")[1]), p) for p in paths]
    used = sorted((s for s in snaps if s[0] <= 250), key=lambda s: s[0])
    assert len(report.input_weights) == len(used) == 10  # snapshots after step 250 left out
    profiles = [Profile(t, gamma_of_sigma_rel(sr)) for t, sr, _ in used]
    target = Profile(250, gamma_of_sigma_rel(0.07))
    gram = np.array([[inner(a, b) for b in profiles] for a in profiles])
    x = np.linalg.lstsq(gram, [inner(a, target) for a in profiles], rcond=None)[0]
    x /= x.sum()
    expected = sum(xi * load_file(p)["weight"] for xi, (_, _, p) in zip(x, used))
    torch.testing.assert_close(load_file(out)["weight"], expected, rtol=1e-9, atol=1e-9)
    assert report.params["fit_error"] < 0.05


def test_mixed_snapshots_and_raw_checkpoints_are_refused(tmp_path):
    paths, _ = _trajectory(tmp_path, [10, 20])
    save_file({"w": torch.zeros(3, 4), "n": torch.tensor(0)}, tmp_path / "s.safetensors",
              metadata={"step": "30", "wa_ema_sigma_rel": "0.05"})  # fmt: skip
    with pytest.raises(WaError, match="not an EMA snapshot"):
        ema_to_file([*paths, tmp_path / "s.safetensors"], tmp_path / "o.safetensors",
                            sigma_rel=0.1)  # fmt: skip
    assert math.isfinite(gamma_of_sigma_rel(0.1))


def test_ema_pytorch_posthoc_folder_is_read_with_its_sigma_rels(tmp_path):
    """A folder written by ema-pytorch's own PostHocEMA ({index}.{step}.pt, float16 by default,
    keys under ema_model. beside its initted/step counters)."""
    ema_pytorch = pytest.importorskip("ema_pytorch")
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    folder = tmp_path / "posthoc"
    emas = ema_pytorch.PostHocEMA(
        net, sigma_rels=(0.05, 0.28), update_every=1, checkpoint_every_num_steps=10,
        checkpoint_folder=str(folder),
    )  # fmt: skip
    g = torch.Generator().manual_seed(2)
    for _ in range(40):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        emas.update()
    paths = sorted(folder.glob("*.pt"))
    out = tmp_path / "o.safetensors"
    report = ema_to_file(paths, out, sigma_rel=0.15, snapshot_sigma_rels=[0.05, 0.28])
    got = load_file(out)
    assert set(got) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    files = [(int(p.name.split(".")[1]), [0.05, 0.28][int(p.name.split(".")[0])], p) for p in paths]
    profiles = [Profile(t, gamma_of_sigma_rel(sr)) for t, sr, _ in files]
    target = Profile(40, gamma_of_sigma_rel(0.15))
    gram = np.array([[inner(a, b) for b in profiles] for a in profiles])
    x = np.linalg.lstsq(gram, [inner(a, target) for a in profiles], rcond=None)[0]
    x /= x.sum()
    for key in got:
        expected = sum(
            xi * torch.load(p)[f"ema_model.{key}"].double() for xi, (_, _, p) in zip(x, files)
        )
        torch.testing.assert_close(got[key].double(), expected, rtol=2e-3, atol=2e-3)
    assert got["0.weight"].dtype == torch.float16
    assert report.params["posthoc"] == "reconstruction"


def test_half_life_with_linear_quadrature_integrates_the_exponential_kernel(tmp_path):
    paths, states = _trajectory(tmp_path, STEPS)
    half_life, t = 200.0, STEPS[-1]
    rate = math.log(2) / half_life
    p = lambda x: rate * math.exp(-rate * (t - x))  # noqa: E731
    expected = []
    for i in range(len(STEPS)):
        e = np.eye(len(STEPS))[i]
        h = lambda x, e=e: float(np.interp(x, STEPS, e))  # noqa: E731
        inside = sum(integrate.quad(lambda x, h=h: p(x) * h(x), lo, hi, epsabs=1e-14)[0]
                     for lo, hi in zip(STEPS[:-1], STEPS[1:]))  # fmt: skip
        expected.append(inside + (math.exp(-rate * (t - STEPS[0])) if i == 0 else 0.0))
    out = tmp_path / "o.safetensors"
    report = ema_to_file(paths, out, half_life=half_life, quadrature="linear", order="auto")
    np.testing.assert_allclose(report.input_weights, expected, atol=1e-10)
    mean = sum(w * s["w"].double() for w, s in zip(expected, states)).float()
    torch.testing.assert_close(load_file(out)["w"], mean, rtol=1e-6, atol=1e-6)
    with pytest.raises(WaError, match="quadrature='linear'"):
        ema_to_file(paths, tmp_path / "p.safetensors", decay=0.5, quadrature="linear")
