"""The one progress bar: None off a terminal or with -q; on a terminal, bytes or batches."""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console

from wa_cli.cli import render


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_off_a_terminal_or_when_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with render.progress_bar("averaging", quiet=False) as progress:
        assert progress is None
    monkeypatch.setattr(sys, "stderr", _Tty())
    with render.progress_bar("averaging", quiet=True, unit="batches") as progress:
        assert progress is None


@pytest.mark.parametrize(
    ("unit", "calls", "completed"),
    [("bytes", [(300, 1000), (700, 1000)], 1000), ("batches", [(1, 5), (3, 5)], 3)],
)
def test_bar_counts_bytes_by_advance_and_batches_by_done(
    monkeypatch: pytest.MonkeyPatch, unit: str, calls: list[tuple[int, int]], completed: int
) -> None:
    monkeypatch.setattr(sys, "stderr", _Tty())
    out = _Tty()
    monkeypatch.setattr(render, "stderr", Console(file=out, force_terminal=True, width=80))
    seen = []
    real = render.Progress.update

    def spy(self, task, **kwargs):
        real(self, task, **kwargs)
        seen.append(self.tasks[0].completed)

    monkeypatch.setattr(render.Progress, "update", spy)
    with render.progress_bar("work", quiet=False, unit=unit) as progress:
        assert progress is not None
        for n, total in calls:
            progress(n, total)
    assert seen[-1] == completed
