"""Real signals sent to a real ``wa`` process mid-write: one line, 128+signal, nothing left."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, make_trajectory, run_wa
from tests.io.faults import snapshot, temporaries


def _start(args, **kwargs):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WA_TEST_HOOKS": "1",
        "WA_TEST_WRITE_DELAY": "0.5",
    }
    return subprocess.Popen([sys.executable, "-m", "wa_cli", *map(str, args)], env=env, **kwargs)


def _wait_for_temporary(folder, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if temporaries(folder):
            return
        if proc.poll() is not None:
            pytest.fail(f"wa ended (exit {proc.returncode}) before it began writing")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("wa did not start writing")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_write_leaves_nothing_and_says_so_once(tmp_path, sig):
    traj = make_trajectory(tmp_path / "run", n=2)
    before = snapshot(tmp_path / "run")
    out = tmp_path / "avg.safetensors"
    proc = _start(
        ["average", *traj.paths, "-o", out],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_temporary(tmp_path, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert stderr.splitlines() == [
        f"wa: error: interrupted by {signal.Signals(sig).name}; nothing was written"
    ]
    assert stdout == ""
    assert not out.exists()
    assert temporaries(tmp_path) == []
    assert snapshot(tmp_path / "run") == before


def test_ctrl_c_on_a_terminal(tmp_path):
    traj = make_trajectory(tmp_path / "run", n=2)
    out = tmp_path / "avg.safetensors"
    leader, follower = pty.openpty()
    proc = _start(
        ["average", *traj.paths, "-o", out],
        stdin=follower, stdout=follower, stderr=follower, start_new_session=True,
    )  # fmt: skip
    os.close(follower)
    _wait_for_temporary(tmp_path, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    proc.wait(timeout=60)
    text = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        text += chunk
    os.close(leader)
    lines = [line for line in text.decode().splitlines() if line.strip()]
    assert proc.returncode == 130
    # The progress bar's own escapes may precede the line on the terminal.
    assert lines[-1].endswith("wa: error: interrupted by SIGINT; nothing was written"), lines
    assert sum("wa: error" in line for line in lines) == 1
    assert not any("Traceback" in line for line in lines)
    assert not out.exists() and temporaries(tmp_path) == []


def test_keyboard_interrupt_inside_a_command_is_reported_not_swallowed(
    tmp_path, capsys, monkeypatch
):
    """Typer turns KeyboardInterrupt into a silent exit 130; wa reports it."""
    from wa_cli.io import writer

    traj = make_trajectory(tmp_path / "run", n=2)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_write_groups", interrupted)
    r = run_wa(["average", *traj.paths, "-o", tmp_path / "o.safetensors"], capsys)
    assert r.code == 130
    assert r.stderr.splitlines() == ["wa: error: interrupted by SIGINT; nothing was written"]
    assert temporaries(tmp_path) == []


def test_signal_while_importing_is_one_line(tmp_path):
    """An interrupt in the first moments (typer and torch still loading): no traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = (
        "import os, signal, sys\n"
        "sys.argv = ['wa', '--help']\n"
        "import wa_cli.cli.signals as s\n"
        "real = s.entry\n"
        "def entry(run):\n"
        "    def late():\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"  # lands while the app is imported
        "        return run()\n"
        "    real(late)\n"
        "s.entry = entry\n"
        "import wa_cli.__main__ as m\n"
        "m.entry = entry\n"
        "m.main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stderr.splitlines() == ["wa: error: interrupted by SIGTERM; nothing was written"]
