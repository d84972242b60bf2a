"""PowerEMA: the per-step recursion exactly, snapshots that reconstruct other widths."""

from __future__ import annotations

import torch
from safetensors import safe_open
from torch import nn

from wa_cli.methods.ema.power import Profile, gamma_of_sigma_rel, reconstruct
from wa_cli.train import PowerEMA


def _trajectory(model: nn.Module, steps: int, seed: int = 0):
    """Move the model's weights along a seeded random walk, one step at a time."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        yield {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_equals_the_per_step_recursion_in_float64():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()
    ema = PowerEMA(model, sigma_rels=(0.05, 0.2))
    oracles: list[dict[str, torch.Tensor]] = [{}, {}]
    for t, state in enumerate(_trajectory(model, 50), start=1):
        model[1].num_batches_tracked += 1
        state["1.num_batches_tracked"] = model[1].num_batches_tracked.clone()
        ema.update()
        for oracle, s in zip(oracles, (0.05, 0.2)):
            beta = (1 - 1 / t) ** (gamma_of_sigma_rel(s) + 1)
            for k, v in state.items():
                if not v.is_floating_point():
                    oracle[k] = v
                else:
                    oracle[k] = v.clone() if t == 1 else beta * oracle[k] + (1 - beta) * v
    for oracle, s in zip(oracles, (0.05, 0.2)):
        got = ema.averaged_state(s)
        assert set(got) == set(oracle)
        for k in oracle:
            torch.testing.assert_close(got[k], oracle[k], rtol=1e-13, atol=1e-13)
    assert ema.averaged_state(0.05)["1.num_batches_tracked"].item() == 50


def test_bf16_model_is_averaged_in_float32():
    model = nn.Linear(4, 4).bfloat16()
    ema = PowerEMA(model, sigma_rels=(0.05,))
    for _ in _trajectory(model, 3):
        ema.update()
    assert ema.averages[0]["weight"].dtype == torch.float32
    assert ema.averaged_state(0.05)["weight"].dtype == torch.bfloat16


def test_resume_through_state_dict_is_exact():
    torch.manual_seed(0)
    model = nn.Linear(3, 3).double()
    whole = PowerEMA(model, sigma_rels=(0.1,))
    states = list(_trajectory(model, 30))
    first, second = PowerEMA(model, sigma_rels=(0.1,)), PowerEMA(model, sigma_rels=(0.1,))
    for i, state in enumerate(states):
        model.load_state_dict(state)
        whole.update()
        (first if i < 15 else second).update()
        if i == 14:
            second.load_state_dict(first.state_dict())
    for k, v in whole.averaged_state(0.1).items():
        assert torch.equal(v, second.averaged_state(0.1)[k])


def test_snapshots_reconstruct_a_width_within_the_reported_fit_error(tmp_path):
    """θ_t = t (a steady drift): the EMA of width S is the profile's mean time, so the relative
    difference between the reconstruction and a directly tracked EMA is a pure profile error."""
    model = nn.Linear(1, 1, bias=False).double()
    target_s = 0.07
    snaps = PowerEMA(model, sigma_rels=(0.05, 0.10), directory=tmp_path, every=100)
    direct = PowerEMA(model, sigma_rels=(target_s,))
    for t in range(1, 601):
        with torch.no_grad():
            model.weight.fill_(float(t))
        snaps.update(), direct.update()
        snaps.maybe_save()
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == 12
    profiles, values = [], []
    for f in files:
        with safe_open(f, "pt") as h:
            meta = h.metadata()
            values.append(h.get_tensor("weight").item())
        profiles.append(
            Profile(int(meta["step"]), gamma_of_sigma_rel(float(meta["wa_ema_sigma_rel"])))
        )
    fit = reconstruct(profiles, Profile(600, gamma_of_sigma_rel(target_s)))
    rebuilt = sum(w * v for w, v in zip(fit.weights, values))
    expected = direct.averaged_state(target_s)["weight"].item()
    assert abs(rebuilt - expected) / expected <= fit.relative_error
    assert fit.relative_error < 0.05
