"""Lookahead optimizer (Zhang et al. 2019, arXiv 1907.08610; code michaelrzhang/lookahead).

Any inner optimizer A takes k fast steps; then the slow weights move toward the fast ones and the
fast weights restart from there:  phi <- phi + alpha (theta - phi);  theta <- phi.

Inner-state handling at a sync (``inner_state``):
* ``"none"``: keep A's state as it is;
* ``"reset"``: zero A's momentum buffers;
* ``"pullback"``: m <- alpha m + (1 - alpha) m_slow, then m_slow <- m, where m_slow is a COPY of
  the momentum right after the previous sync (zero before the first one). The reference code
  keeps an alias of the live buffer instead, so after its first sync m_slow *is* m and the rule
  degenerates to m <- alpha (2 - alpha) m.

The wrapper shares ``param_groups`` with A, so LR schedulers built on either object act on the
same learning rates. ``state_dict()`` holds A's state, the slow weights, the slow momenta and the
step counter, so a resumed run continues exactly. With alpha = 1 (and ``inner_state`` "none" or
"pullback") every sync is a no-op and the wrapper reproduces A bit for bit: updates use
``torch.lerp``, which returns its end point exactly at weight 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch.optim import Optimizer

from wa_cli.errors import ExitCode, WaError

InnerState = Literal["none", "reset", "pullback"]

#: State entries treated as momentum by "reset" and "pullback" (SGD, Adam/AdamW/NAdam/RAdam).
MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


class Lookahead(Optimizer):
    """Wrap ``optimizer``: every ``k`` steps pull the weights back toward slow weights by ``alpha``.

    Create it before training starts: the slow weights are the parameters' values at construction.

    Args:
        optimizer: the inner ("fast") optimizer.
        k: sync period in inner steps (default 5).
        alpha: slow step size in [0, 1] (default 0.5; the reference code uses 0.8).
        inner_state: what happens to the inner optimizer's momentum at a sync.
        momentum_keys: state entries that "reset" and "pullback" act on.

    Example:
        >>> opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=5)
        ... # doctest: +SKIP
        >>> sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        k: int = 5,
        alpha: float = 0.5,
        inner_state: InnerState = "none",
        momentum_keys: tuple[str, ...] = MOMENTUM_KEYS,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise WaError(
                f"Lookahead wraps a torch.optim.Optimizer, got {type(optimizer).__name__}",
                ExitCode.USAGE,
            )
        if not (isinstance(k, int) and k >= 1):
            raise WaError(f"Lookahead k must be an integer >= 1, got {k!r}", ExitCode.USAGE)
        if not 0.0 <= alpha <= 1.0:
            raise WaError(f"Lookahead alpha must be in [0, 1], got {alpha}", ExitCode.USAGE)
        if inner_state not in ("none", "reset", "pullback"):
            raise WaError(
                f"inner_state must be 'none', 'reset' or 'pullback', got {inner_state!r}",
                ExitCode.USAGE,
            )
        # Optimizer.__init__ sets up hooks and the step wrapper; its own param groups are then
        # replaced by the inner optimizer's, so there is one set of groups (and lrs) for both.
        super().__init__([{"params": list(self._params(optimizer.param_groups))}], {})
        self.optimizer = optimizer
        self._share_groups()
        self.k, self.alpha, self.inner_state = k, alpha, inner_state
        self.momentum_keys = tuple(momentum_keys)
        self.lookahead_step = 0  # inner steps taken since construction
        for p in self._params(self.param_groups):
            self._init_slow(p)

    @staticmethod
    def _params(groups: list[dict[str, Any]]) -> Iterator[torch.Tensor]:
        for group in groups:
            yield from group["params"]

    def _share_groups(self) -> None:
        self.param_groups = self.optimizer.param_groups
        self.defaults = self.optimizer.defaults

    def _init_slow(self, p: torch.Tensor) -> None:
        state = self.state[p]
        state["slow_param"] = p.detach().clone()
        if self.inner_state == "pullback":
            state["slow_momentum"] = {}  # filled with zeros lazily: shapes follow the inner state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer (and slow weights for its parameters)."""
        if not hasattr(self, "optimizer"):  # called from Optimizer.__init__
            super().add_param_group(param_group)
            return
        self.optimizer.add_param_group(param_group)
        self._share_groups()
        for p in self.optimizer.param_groups[-1]["params"]:
            self._init_slow(p)

    @torch.no_grad()
    def sync(self) -> None:
        """Move the slow weights toward the fast ones and restart the fast ones from there."""
        for p in self._params(self.param_groups):
            state = self.state[p]
            slow = state["slow_param"]
            slow.lerp_(p.detach(), self.alpha)
            p.copy_(slow)
            if self.inner_state == "none":
                continue
            inner = self.optimizer.state.get(p, {})
            for key in self.momentum_keys:
                m = inner.get(key)
                if not isinstance(m, torch.Tensor):
                    continue
                if self.inner_state == "reset":
                    m.zero_()
                else:
                    m_slow = state["slow_momentum"].setdefault(key, torch.zeros_like(m))
                    m_slow.lerp_(m, self.alpha)  # alpha m + (1 - alpha) m_slow, kept as a copy
                    m.copy_(m_slow)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]  # torch's stub is overloaded
        """One inner step; every ``k``-th also syncs with the slow weights."""
        loss = self.optimizer.step(closure)
        self.lookahead_step += 1
        if self.lookahead_step % self.k == 0:
            self.sync()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Inner state, slow weights and momenta (by parameter index), step counter, k, alpha."""
        slow: dict[int, dict[str, Any]] = {}
        for i, p in enumerate(self._params(self.param_groups)):
            state = self.state[p]
            entry: dict[str, Any] = {"slow_param": state["slow_param"].clone()}
            if "slow_momentum" in state:
                entry["slow_momentum"] = {k: v.clone() for k, v in state["slow_momentum"].items()}
            slow[i] = entry
        return {
            "inner": self.optimizer.state_dict(),
            "lookahead": {
                "step": self.lookahead_step,
                "k": self.k,
                "alpha": self.alpha,
                "inner_state": self.inner_state,
                "slow": slow,
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; the run then continues exactly."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"inner", "lookahead"}:
            raise WaError(
                "not a Lookahead state dict (expected keys 'inner' and 'lookahead'; "
                "save it with Lookahead.state_dict())",
                ExitCode.BAD_INPUT,
            )
        la = state_dict["lookahead"]
        params = list(self._params(self.param_groups))
        if len(la["slow"]) != len(params):
            raise WaError(
                f"Lookahead state holds {len(la['slow'])} slow tensors but the optimizer has "
                f"{len(params)} parameters (load it into the same model and groups)",
                ExitCode.INCOMPATIBLE,
            )
        self.optimizer.load_state_dict(state_dict["inner"])
        self._share_groups()  # the inner load replaced its group dicts
        self.lookahead_step = int(la["step"])
        self.k, self.alpha, self.inner_state = int(la["k"]), float(la["alpha"]), la["inner_state"]
        for i, p in enumerate(self._params(self.param_groups)):
            entry = la["slow"][i]
            state = self.state[p]
            state["slow_param"] = entry["slow_param"].to(device=p.device, dtype=p.dtype).clone()
            state["slow_momentum"] = {
                k: v.to(p.device).clone() for k, v in entry.get("slow_momentum", {}).items()
            }
            if self.inner_state != "pullback":
                del state["slow_momentum"]

    def __repr__(self) -> str:
        return (
            f"Lookahead(k={self.k}, alpha={self.alpha}, inner_state={self.inner_state!r}, "
            f"optimizer={self.optimizer!r})"
        )
