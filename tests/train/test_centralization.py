"""Gradient centralization: zero row means, the constant-row-mean invariant, the paper's update."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wa_cli.errors import WaError
from wa_cli.train.centralization import (
    applies_to,
    centralize_gradients,
    enable_gradient_centralization,
)
from wa_cli.train.lookahead import Lookahead


def row_means(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).mean(dim=1)


def net(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    ).to(dtype)


def batch(seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 2, 5, 5, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g)


def backward(model: nn.Module, seed: int) -> None:
    x, y = batch(seed)
    nn.functional.cross_entropy(model(x), y).backward()


def test_centralized_gradients_have_zero_row_means_and_1d_are_untouched() -> None:
    model = net()
    backward(model, 0)
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    centralize_gradients(model.parameters())
    for name, p in model.named_parameters():
        if p.ndim > 1:
            torch.testing.assert_close(row_means(p.grad), torch.zeros(p.shape[0], dtype=p.dtype))
            # Phi removes exactly the row mean: the float64 recomputation
            g = before[name]
            torch.testing.assert_close(p.grad, g - row_means(g).view(-1, *[1] * (g.ndim - 1)))
        else:
            assert torch.equal(p.grad, before[name]), name


def test_conv_only_and_fan_in_one_are_skipped() -> None:
    assert applies_to(torch.empty(4, 2, 3, 3), conv_only=True)
    assert not applies_to(torch.empty(3, 100), conv_only=True)
    assert applies_to(torch.empty(3, 100))
    assert not applies_to(torch.empty(8, 1, 1, 1))  # fan-in 1: Phi would zero the gradient
    assert not applies_to(torch.empty(8))
    w = nn.Parameter(torch.zeros(8, 1, 1, 1))
    w.grad = torch.arange(8.0).view(8, 1, 1, 1)
    centralize_gradients([w])
    assert torch.equal(w.grad, torch.arange(8.0).view(8, 1, 1, 1))


@pytest.mark.parametrize("weight_decay", [0.0, 5e-2])
def test_sgd_momentum_gc_keeps_each_weight_rows_mean_constant(weight_decay: float) -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=weight_decay)
    enable_gradient_centralization(opt, fold_weight_decay=True)
    start = {n: row_means(p.detach()).clone() for n, p in model.named_parameters() if p.ndim > 1}
    for seed in range(15):
        opt.zero_grad()
        backward(model, seed)
        opt.step()
    for name, p in model.named_parameters():
        if p.ndim > 1:
            torch.testing.assert_close(row_means(p.detach()), start[name], rtol=0, atol=1e-12)


def test_without_folding_weight_decay_moves_the_row_means() -> None:
    # The pre-hook runs before SGD adds wd * w, so wd * mean_row(w) is not removed.
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-2)
    enable_gradient_centralization(opt, fold_weight_decay=False)
    w = model[0].weight
    start = row_means(w.detach()).clone()
    for seed in range(5):
        opt.zero_grad()
        backward(model, seed)
        opt.step()
    assert (row_means(w.detach()) - start).abs().max() > 1e-6


@pytest.mark.parametrize("fold", [True, None], ids=["explicit", "default"])
def test_folded_update_is_phi_of_gradient_plus_weight_decay(fold: bool | None) -> None:
    # The GC reference SGD: d_p = grad + wd * p, then centralize d_p, then the step.
    lr, wd = 0.1, 0.05
    model = net()
    backward(model, 3)
    w = model[4].weight
    g, w0 = w.grad.clone(), w.detach().clone()
    d = g + wd * w0
    expected = w0 - lr * (d - d.mean(dim=1, keepdim=True))
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    if fold is None:
        enable_gradient_centralization(opt)
    else:
        enable_gradient_centralization(opt, fold_weight_decay=fold)
    opt.step()
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-14)


def test_default_with_decoupled_decay_centralizes_the_gradient_only() -> None:
    # AdamW's decay never enters the gradient: the default gives AdamW the centralized gradient.
    model, reference = net(), net()
    backward(model, 4)
    backward(reference, 4)
    for p in reference.parameters():
        if p.ndim > 1 and p[0].numel() > 1:
            p.grad -= p.grad.reshape(p.shape[0], -1).mean(1).reshape(-1, *[1] * (p.ndim - 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    enable_gradient_centralization(opt)
    opt.step()
    torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1).step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_the_handle_switches_it_off() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    enable_gradient_centralization(opt).remove()
    backward(model, 0)
    g = model[0].weight.grad.clone()
    opt.step()  # hook removed: the raw gradient is used
    assert (row_means(g).abs() > 1e-9).any()
    assert row_means(model[0].weight.grad).abs().max() > 1e-9


def test_folding_is_refused_for_decoupled_weight_decay() -> None:
    opt = torch.optim.AdamW(net().parameters(), lr=1e-3, weight_decay=0.01)
    with pytest.raises(WaError, match="decoupled weight decay"):
        enable_gradient_centralization(opt, fold_weight_decay=True)


def test_folding_is_refused_for_adamw_without_the_group_entry() -> None:
    # torch before 2.5 keeps no "decoupled_weight_decay" in AdamW's groups: AdamW by type then.
    opt = torch.optim.AdamW(net().parameters(), lr=1e-3, weight_decay=0.01)
    for group in opt.param_groups:
        group.pop("decoupled_weight_decay", None)
    with pytest.raises(WaError, match="param group 0 of AdamW uses decoupled weight decay"):
        enable_gradient_centralization(opt, fold_weight_decay=True)
    with pytest.raises(WaError, match="of AdamW uses decoupled weight decay"):
        enable_gradient_centralization(Lookahead(opt), fold_weight_decay=True)


def test_folding_is_refused_when_a_group_says_decoupled() -> None:
    opt = torch.optim.SGD(net().parameters(), lr=0.1, weight_decay=0.01)
    opt.param_groups[0]["decoupled_weight_decay"] = True  # e.g. Adam(decoupled_weight_decay=True)
    with pytest.raises(WaError, match="decoupled weight decay"):
        enable_gradient_centralization(opt, fold_weight_decay=True)
    # Coupled decay is folded, and AdamW without weight decay has nothing to fold.
    enable_gradient_centralization(
        torch.optim.SGD(net().parameters(), lr=0.1, weight_decay=0.01), fold_weight_decay=True
    ).remove()
    enable_gradient_centralization(
        torch.optim.AdamW(net().parameters(), lr=1e-3, weight_decay=0.0), fold_weight_decay=True
    ).remove()
