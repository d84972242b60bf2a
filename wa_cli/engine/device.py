"""``device="auto"|"cpu"|"cuda[:N]"``: where the reduction (or the forward passes) run."""

from __future__ import annotations

import torch

from wa_cli.errors import WaError

_CHOICES = "'auto', 'cpu', 'cuda', 'cuda:N'"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks the first GPU when there is one, else the CPU.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(spec, torch.device):
        return spec
    if not isinstance(spec, str | None):
        raise WaError.naming(
            "{device=}{spec!r} is not one of {choices}", spec=spec, choices=_CHOICES
        )
    if spec is None or spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise WaError.naming(
            "{device=}{spec!r} is not one of {choices}", spec=spec, choices=_CHOICES
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise WaError.naming(
            "{device=}{spec!r} is not one of {choices}", spec=spec, choices=_CHOICES
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise WaError.naming(
                "{device=}{spec!r} asks for a GPU, but CUDA is not available here (use "
                "{device=}'cpu' or 'auto')",
                spec=spec,
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise WaError.naming(
                "{device=}{spec!r}: only {count} GPU(s) are visible (cuda:0..{last})",
                spec=spec,
                count=count,
                last=count - 1,
            )
    return device
