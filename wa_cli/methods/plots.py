"""Plots wa writes: the format the suffix names, matplotlib without pyplot, written atomically.

Shared by ``inspect-entropy --plot`` (entropy per layer) and ``ema --plot`` (a post-hoc EMA's
profile). matplotlib is the ``plot`` extra: a missing one is a one-line usage error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.atomic import PLOT, atomic_destination

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".eps": "eps", ".ps": "ps"}
"""The plot formats by suffix: matplotlib writes these without other packages (no LaTeX, no
Pillow). The suffix names the format written: ``e.pdf`` is a PDF, never a PNG named .pdf."""


def plot_format(path: str | os.PathLike[str]) -> str:
    """The format a plot at ``path`` is written in, from its suffix; ``WaError`` for another.

    Example:
        >>> plot_format("entropy.pdf")
        'pdf'
    """
    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise WaError.naming(
            "{plot} '{path}': wa writes the format its suffix names, one of {formats} (got {got})",
            ExitCode.USAGE,
            path=str(path),
            formats=", ".join(PLOT_FORMATS),
            got=suffix or "no suffix",
        )
    return PLOT_FORMATS[suffix]


def check_plot_available(path: str | os.PathLike[str] | None = None) -> None:
    """Raise a one-line ``WaError`` when matplotlib (the ``plot`` extra) is missing, or when
    ``path``'s suffix names no format wa writes (:func:`plot_format`)."""
    if path is not None:
        plot_format(path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise WaError.naming(
            "{plot} needs matplotlib, which is not installed "
            "(pip install matplotlib, or pip install -e '.[plot]' in a checkout of wa)",
            ExitCode.USAGE,
        ) from None


def new_figure(width: float = 6.5, height: float = 4.5) -> Figure:
    """A Figure with its own Agg canvas: no pyplot global state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write ``fig`` atomically to ``path`` in the format its suffix names."""
    destination = Path(path)
    try:
        with atomic_destination(destination, force, kind=PLOT) as tmp:
            fig.savefig(tmp, format=plot_format(destination), dpi=120)
    except OSError as e:  # a full disk, a vanished folder: one line, no plot left half-written
        raise WaError(f"cannot write '{destination}': {e.strerror or e}", ExitCode.OUTPUT) from e
    return destination
