"""Environment variables wa reads (docs/environment.md): bad values are one line naming them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, CliResult, assert_one_line_error, make_trajectory, run_wa


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("value", ["no", "NO", "false", "off", "0", ""])
def test_wa_debug_off_values_keep_tracebacks_off(tmp_path, capsys, monkeypatch, value):
    monkeypatch.setenv("WA_DEBUG", value)
    r = run_wa(
        ["average", tmp_path / "missing.safetensors", "-o", tmp_path / "o.safetensors"], capsys
    )
    assert_one_line_error(r, 3, "missing.safetensors")


@pytest.mark.parametrize("value", ["1", "true", "Yes", "on"])
def test_wa_debug_on_values_raise(tmp_path, capsys, monkeypatch, value):
    from wa_cli.errors import WaError

    monkeypatch.setenv("WA_DEBUG", value)
    with pytest.raises(WaError):
        run_wa(
            ["average", tmp_path / "missing.safetensors", "-o", tmp_path / "o.safetensors"], capsys
        )


def test_wa_debug_unknown_value_warns_and_stays_off(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WA_DEBUG", "maybe")
    r = run_wa(
        ["average", tmp_path / "missing.safetensors", "-o", tmp_path / "o.safetensors"], capsys
    )
    lines = r.stderr.splitlines()
    assert r.code == 3 and "Traceback" not in r.stderr
    assert lines[0].startswith("wa: warning: WA_DEBUG='maybe' is not one of"), lines
    assert lines[1].startswith("wa: error: ") and len(lines) == 2


# A launch variable that is wrong: one line naming it, before torch tries to connect (RANK=2 of
# WORLD_SIZE=2 printed 38 lines of C++ stack and blamed MASTER_ADDR; LOCAL_RANK=zero and
# WA_DIST_TIMEOUT=inf gave tracebacks).
LAUNCH = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"RANK": "2"}, "RANK='2'"),
        ({"LOCAL_RANK": "zero"}, "LOCAL_RANK='zero'"),
        ({"WA_DIST_TIMEOUT": "inf"}, "WA_DIST_TIMEOUT"),
        ({"WA_DIST_TIMEOUT": "1e400"}, "WA_DIST_TIMEOUT"),
        ({"WA_DIST_TIMEOUT": "nan"}, "WA_DIST_TIMEOUT"),
        ({"WA_DIST_TIMEOUT": "-1"}, "WA_DIST_TIMEOUT"),
        ({"WA_DIST_TIMEOUT": "abc"}, "WA_DIST_TIMEOUT"),
    ],
)
def test_a_bad_launch_variable_is_one_line_naming_it(tmp_path, change, named):
    traj = make_trajectory(tmp_path / "run", n=2)
    env = {**LAUNCH, "MASTER_PORT": str(free_port()), **change}
    proc = subprocess.run(
        [sys.executable, "-m", "wa_cli", "average", *map(str, traj.paths),
         "-o", str(tmp_path / "o.safetensors"), "--device", "cpu"],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    r = CliResult(proc.returncode, proc.stdout, proc.stderr)
    assert_one_line_error(r, 2, named)
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_without_its_peer_says_whom_it_waits_for_and_ctrl_c_ends_it(tmp_path, rank):
    """No peer: it used to wait the whole timeout (1800 s) in silence, deaf to Ctrl-C."""
    traj = make_trajectory(tmp_path / "run", n=2)
    port = free_port()
    env = {**LAUNCH, "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wa_cli", "average", *map(str, traj.paths),
         "-o", str(tmp_path / "o.safetensors"), "--device", "cpu"],
        env={**os.environ, "PYTHONPATH": str(REPO), **env, "WA_DIST_TIMEOUT": "300"},
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    started = time.monotonic()
    line = proc.stderr.readline()  # the marker: wa says it waits (after a few seconds)
    waited = time.monotonic() - started
    peer = "rank 1" if rank == 0 else "rank 0"
    assert line.startswith(f"wa: rank {rank}: waiting for {peer} at 127.0.0.1:{port}"), line
    assert waited < 120  # seconds, not the timeout
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert time.monotonic() - started < 180
    assert (proc.returncode, rest.splitlines()) == (
        130,
        ["wa: error: interrupted by SIGINT; nothing was written"],
    ), rest
