"""Lookahead: alpha = 1 is the inner optimizer; closed forms and float64 recursions otherwise."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from wa_cli.errors import WaError
from wa_cli.train.lookahead import Lookahead


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)


def batches(n: int, dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(123)
    return [
        (torch.randn(16, 4, generator=g, dtype=dtype), torch.randn(16, 2, generator=g, dtype=dtype))
        for _ in range(n)
    ]


def train(model: nn.Module, opt: torch.optim.Optimizer, data, sched=None) -> None:
    for x, y in data:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()


@pytest.mark.parametrize("inner_state", ["none", "pullback"])
def test_alpha_one_reproduces_the_inner_optimizer_bit_for_bit(inner_state: str) -> None:
    data = batches(12)
    ref = tiny_model()
    train(ref, torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9), data)
    model = tiny_model()
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, Lookahead(inner, k=3, alpha=1.0, inner_state=inner_state), data)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)


def test_k1_alpha_half_on_a_quadratic_matches_the_hand_recursion() -> None:
    # f(theta) = 1/2 sum a_i theta_i^2, SGD lr eta: fast = phi - eta a phi, then
    # phi <- phi + 0.5 (fast - phi) = (1 - 0.5 eta a) phi, so phi_t = (1 - 0.5 eta a)^t phi_0.
    a = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    phi0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    theta = nn.Parameter(phi0.clone())
    eta, steps = 0.1, 7
    opt = Lookahead(torch.optim.SGD([theta], lr=eta), k=1, alpha=0.5)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (a * theta**2).sum()).backward()
        opt.step()
    torch.testing.assert_close(
        theta.detach(), (1 - 0.5 * eta * a) ** steps * phi0, rtol=1e-12, atol=0
    )


def test_resume_mid_cycle_continues_exactly() -> None:
    data = batches(13)

    def make(model: nn.Module):
        inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        opt = Lookahead(inner, k=5, alpha=0.5, inner_state="pullback")
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
        return opt, sched

    ref = tiny_model()
    opt, sched = make(ref)
    train(ref, opt, data, sched)

    first = tiny_model()
    opt1, sched1 = make(first)
    train(first, opt1, data[:7], sched1)  # 7 = one sync at 5, then 2 steps into the next cycle
    buf = io.BytesIO()
    torch.save(
        {"model": first.state_dict(), "opt": opt1.state_dict(), "sched": sched1.state_dict()}, buf
    )
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    resumed = tiny_model(seed=99)  # different init: everything must come from the state dicts
    opt2, sched2 = make(resumed)
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    train(resumed, opt2, data[7:], sched2)
    for p, q in zip(resumed.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)
    assert opt2.param_groups is opt2.optimizer.param_groups


def naive_lookahead_sgd(w0, grad, steps, lr, mu, k, alpha, alias: bool):
    """Float64 recursion from the spec: SGD with momentum, Lookahead, pullback momentum.

    ``alias=True`` models the reference code, whose m_slow is the live buffer after the first
    sync, so later syncs compute m <- alpha m + (1 - alpha) (alpha m) = alpha (2 - alpha) m.
    """
    w, m = w0.clone(), torch.zeros_like(w0)
    phi, m_slow = w0.clone(), torch.zeros_like(w0)
    synced = False
    for t in range(1, steps + 1):
        m = mu * m + grad(w)
        w = w - lr * m
        if t % k == 0:
            phi = phi + alpha * (w - phi)
            w = phi.clone()
            pulled = alpha * m + (1 - alpha) * m_slow
            m = alpha * (2 - alpha) * m if alias and synced else pulled
            m_slow = m.clone()
            synced = True
    return w


def test_pullback_matches_a_float64_recomputation_and_keeps_a_copy() -> None:
    torch.manual_seed(0)
    A = torch.randn(5, 5, dtype=torch.float64)
    A = A @ A.T / 5 + torch.eye(5, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    w0 = torch.randn(5, dtype=torch.float64)

    def grad(w: torch.Tensor) -> torch.Tensor:
        return A @ w - b

    steps, lr, mu, k, alpha = 23, 0.05, 0.9, 4, 0.5
    w = nn.Parameter(w0.clone())
    opt = Lookahead(
        torch.optim.SGD([w], lr=lr, momentum=mu), k=k, alpha=alpha, inner_state="pullback"
    )
    for _ in range(steps):
        opt.zero_grad()
        w.grad = grad(w.detach())
        opt.step()
    expected = naive_lookahead_sgd(w0, grad, steps, lr, mu, k, alpha, alias=False)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-12)
    aliased = naive_lookahead_sgd(w0, grad, steps, lr, mu, k, alpha, alias=True)
    assert not torch.allclose(w.detach(), aliased, rtol=1e-6, atol=1e-9)


def test_reset_zeroes_the_momentum_at_each_sync() -> None:
    model = tiny_model()
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = Lookahead(inner, k=2, alpha=0.5, inner_state="reset")
    data = batches(3)
    train(model, opt, data[:2])
    assert all(
        torch.count_nonzero(inner.state[p]["momentum_buffer"]) == 0 for p in model.parameters()
    )
    train(model, opt, data[2:])
    assert all(
        torch.count_nonzero(inner.state[p]["momentum_buffer"]) > 0 for p in model.parameters()
    )


def test_schedulers_on_the_wrapper_set_the_inner_learning_rate() -> None:
    model = tiny_model()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = Lookahead(inner)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(model, opt, batches(1), sched)
    assert inner.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"k": 0}, "k must be an integer >= 1"),
        ({"alpha": 1.5}, "alpha must be in [0, 1]"),
        ({"inner_state": "slow"}, "inner_state must be"),
    ],
)
def test_bad_arguments_raise_one_line_errors(kwargs: dict, fragment: str) -> None:
    model = tiny_model()
    with pytest.raises(WaError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_loading_a_state_dict_of_another_model_is_refused() -> None:
    small = nn.Linear(2, 2)
    opt = Lookahead(torch.optim.SGD(tiny_model().parameters(), lr=0.1))
    other = Lookahead(torch.optim.SGD(small.parameters(), lr=0.1))
    with pytest.raises(WaError, match="slow tensors"):
        opt.load_state_dict(copy.deepcopy(other.state_dict()))
