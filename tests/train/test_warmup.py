"""Warmup schedules: golden values worked out by hand from the formulas in SPEC.md."""

from __future__ import annotations

import math

import pytest
import torch

from wa_cli.errors import WaError
from wa_cli.train.warmup import goyal_warmup, linear_warmup, swa_schedule, untuned_warmup


def lrs_over(sched: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[list[float]]:
    """lrs[s] = the learning rates used by optimizer step s (0-based)."""
    opt = sched.optimizer
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def sgd(*lrs: float, **kw) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, **kw)


def test_linear_warmup_then_cosine_with_floor() -> None:
    # W = 10, T = 110, eta = 0.1: f(0) = 0, f(5) = 0.5, f(9) = 0.9, f(10) = 1,
    # f(60) = (1 + cos(pi/2)) / 2 = 0.5, f(110) = 0 -> floored at min_lr / eta = 0.1
    lr = lrs_over(linear_warmup(sgd(0.1), 10, 110, "cosine", min_lr=0.01), 111)
    golden = {0: 0.0, 5: 0.05, 9: 0.09, 10: 0.1, 60: 0.05, 110: 0.01}
    for s, value in golden.items():
        assert lr[s][0] == pytest.approx(value, abs=1e-12), s
    # f(35): p = 0.25, (1 + cos(pi/4)) / 2
    assert lr[35][0] == pytest.approx(0.1 * (1 + math.sqrt(0.5)) / 2, abs=1e-12)


def test_linear_decay_and_per_group_floors() -> None:
    # linear: (T - s) / (T - W); floor min_lr = 0.005 is 0.05 of group 0's lr and 0.5 of group 1's
    lr = lrs_over(linear_warmup(sgd(0.1, 0.01), 10, 110, "linear", min_lr=0.005), 111)
    assert lr[60] == pytest.approx([0.05, 0.005])  # f = 0.5; group 1 is at its floor
    assert lr[100] == pytest.approx([0.01, 0.005])  # f = 0.1
    assert lr[110] == pytest.approx([0.005, 0.005])


def test_constant_after_warmup() -> None:
    lr = lrs_over(linear_warmup(sgd(0.2), 4), 8)
    assert [x[0] for x in lr] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2, 0.2])


def test_goyal_starts_from_eta_over_k() -> None:
    # k = 4, 10 steps per epoch, 5 epochs: W = 50; f = 1/4 + 3/4 s / 50
    lr = lrs_over(goyal_warmup(sgd(0.4), scale=4, steps_per_epoch=10), 60)
    assert lr[0][0] == pytest.approx(0.1)
    assert lr[25][0] == pytest.approx(0.4 * (0.25 + 0.75 * 0.5))
    assert lr[49][0] == pytest.approx(0.4 * (0.25 + 0.75 * 49 / 50))
    assert lr[50][0] == pytest.approx(0.4)
    assert lr[59][0] == pytest.approx(0.4)


def test_untuned_warmup_for_adam() -> None:
    # beta2 = 0.999 (Adam's default): linear min(1, t / 2000); exponential 1 - exp(-t / 1000)
    def adam() -> torch.optim.Adam:
        return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    lin = lrs_over(untuned_warmup(adam(), "linear"), 2001)
    assert lin[0][0] == pytest.approx(0.0005)  # t = 1
    assert lin[999][0] == pytest.approx(0.5)  # t = 1000
    assert lin[1999][0] == pytest.approx(1.0)  # t = 2000
    assert lin[2000][0] == pytest.approx(1.0)
    exp = lrs_over(untuned_warmup(adam(), "exponential"), 1000)
    assert exp[0][0] == pytest.approx(1 - math.exp(-0.001))
    assert exp[999][0] == pytest.approx(1 - math.exp(-1))


def test_untuned_warmup_needs_beta2_for_sgd() -> None:
    with pytest.raises(WaError, match="pass beta2"):
        untuned_warmup(sgd(0.1))
    lr = lrs_over(untuned_warmup(sgd(1.0), "linear", beta2=0.9), 3)
    assert [x[0] for x in lr] == pytest.approx([0.05, 0.1, 0.15])


def test_swa_schedule_holds_decays_and_holds() -> None:
    # eta = 0.1, swa_lr = 0.01 (r = 0.1), H = 10, A = 8: f(14) = 1 - 0.9 * 4 / 8 = 0.55
    lr = lrs_over(swa_schedule(sgd(0.1), swa_lr=0.01, hold_steps=10, anneal_steps=8), 40)
    golden = {0: 0.1, 9: 0.1, 10: 0.1, 14: 0.055, 17: 0.1 * (1 - 0.9 * 7 / 8), 18: 0.01, 39: 0.01}
    for s, value in golden.items():
        assert lr[s][0] == pytest.approx(value, abs=1e-12), s


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda o: linear_warmup(o, 10, decay="cosine"), "needs total_steps"),
        (lambda o: linear_warmup(o, 10, 5, "linear"), "must be >= warmup_steps"),
        (lambda o: linear_warmup(o, 10, start_factor=2.0), "start_factor"),
        (lambda o: goyal_warmup(o, scale=0.5, steps_per_epoch=1), "scale"),
    ],
)
def test_bad_arguments_raise_wa_errors(call, fragment: str) -> None:
    with pytest.raises(WaError, match=fragment):
        call(sgd(0.1))
