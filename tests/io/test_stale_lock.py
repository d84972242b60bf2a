"""A live run's temporary is never taken for stale; a dead run's is removed. Real processes.

Run A is a real ``wa average`` held mid-write by the test hooks; the test waits for the line it
prints when the write has begun (no sleep). A second process then looks for stale temporaries of
the same output: one that cannot see A's PID (as in another PID namespace: really, through
``unshare --pid``, where the machine allows it; and by a monkeypatched PID check) must leave A's
temporary alone, because A holds its lock. Once A is killed by SIGKILL, its temporary is stale.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import REPO
from tests.io.faults import temporaries
from wa_cli.io import atomic

_REMOVE_STALE = "import sys; from pathlib import Path; from wa_cli.io.atomic import remove_stale; "
_REMOVE_STALE += "print(len(remove_stale(Path(sys.argv[1]))))"


def _inputs(folder: Path) -> list[Path]:
    """Two checkpoints of one 16 MB tensor: 16 written chunks, each followed by the hook's pause."""
    folder.mkdir()
    paths = []
    for i in range(2):
        path = folder / f"c{i}.safetensors"
        save_file({"w": torch.full((1 << 22,), float(i))}, path, metadata={"step": str(i)})
        paths.append(path)
    return paths


def _start_writer(paths: list[Path], out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WA_TEST_HOOKS": "1"}
    env.update(WA_TEST_WRITE_DELAY="5", WA_TEST_WRITE_MARKER="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "wa_cli", "average", *map(str, paths), "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()  # blocks until the write has begun (or wa ended)
    if not line.startswith("wa-test: writing"):
        proc.kill()
        pytest.fail(f"wa did not start writing: {line!r} {proc.stderr.read()}")
    return proc


def _unshare_works() -> bool:
    try:
        r = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_a_live_temporary_whose_pid_is_not_visible_is_kept(tmp_path, monkeypatch):
    out = tmp_path / "avg.safetensors"
    proc = _start_writer(_inputs(tmp_path / "in"), out)
    try:
        (live,) = temporaries(tmp_path)
        monkeypatch.setattr(atomic, "_alive", lambda pid: False)  # as from another namespace
        assert atomic.remove_stale(out) == []
        assert temporaries(tmp_path) == [live]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert temporaries(tmp_path) == [live]  # a SIGKILL leaves it; its lock is gone
        monkeypatch.undo()
        assert atomic.remove_stale(out) == [Path(live)]
        assert temporaries(tmp_path) == []
    finally:
        proc.kill()
        proc.communicate(timeout=60)


def test_a_run_in_another_pid_namespace_keeps_the_live_temporary(tmp_path):
    if not _unshare_works():
        pytest.skip("unshare --pid is not allowed on this machine")
    out = tmp_path / "avg.safetensors"
    proc = _start_writer(_inputs(tmp_path / "in"), out)
    try:
        (live,) = temporaries(tmp_path)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        other = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc",
             sys.executable, "-c", _REMOVE_STALE, str(out)],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() == "0"
        assert temporaries(tmp_path) == [live]
        proc.send_signal(signal.SIGINT)  # the live run still finishes its own way
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "interrupted by SIGINT" in stderr
        assert temporaries(tmp_path) == []
    finally:
        proc.kill()
        proc.communicate(timeout=60)


def test_write_delay_is_ignored_without_the_test_switch(tmp_path):
    """``WA_TEST_WRITE_DELAY=1e9`` once slept for ever in a user's run."""
    paths = _inputs(tmp_path / "in")
    env = {k: v for k, v in os.environ.items() if k != "WA_TEST_HOOKS"}
    env.update(PYTHONPATH=str(REPO), WA_TEST_WRITE_DELAY="1e9", WA_TEST_WRITE_MARKER="1")
    proc = subprocess.run(
        [sys.executable, "-m", "wa_cli", "average", *map(str, paths), "-o", tmp_path / "o.st"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wa-test" not in proc.stderr


@pytest.mark.parametrize("value", ["1e9", "inf", "nan", "abc", "-1"])
def test_write_delay_is_bounded_even_with_the_switch(monkeypatch, value):
    from wa_cli.io import hooks

    monkeypatch.setenv("WA_TEST_HOOKS", "1")
    monkeypatch.setenv("WA_TEST_WRITE_DELAY", value)
    assert 0 <= hooks.write_delay() <= hooks.MAX_WRITE_DELAY
