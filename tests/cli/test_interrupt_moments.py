"""Ctrl-C at chosen moments of a real ``wa`` process's start (issue 22, items 13 and 14).

The moments are found in ``/proc`` (Linux), not by sleeping: the process is polled until its
handlers are installed (``SigCgt`` holds SIGTERM, which Python leaves alone and wa catches), or
until a shared library it loads is mapped (torch's, numpy's), then stopped with SIGSTOP, sent
SIGINT and continued, so the interrupt lands at that moment even on a loaded machine. numpy is
imported by torch's C extension while it loads, and that extension swallows a failed import: an
interrupt there was lost and the run replaced the old output with exit 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, make_trajectory

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/maps").exists(), reason="needs Linux /proc to find the moments"
)

LINE = "wa: error: interrupted by SIGINT; nothing was written"


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def _catches_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


MOMENTS = {
    "handlers installed": _catches_sigterm,
    "torch loading": lambda pid: "libtorch_python" in _maps(pid),
    "numpy loading inside torch": lambda pid: "_multiarray_umath" in _maps(pid),
}


def interrupt_at(args: list[str], moment, env: dict[str, str] | None = None):
    """Run ``wa args``, send SIGINT when ``moment(pid)`` first holds; (code, stdout, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wa_cli", *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not moment(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the moment never came (exit {proc.returncode}): {err[-500:]}")
    os.kill(proc.pid, signal.SIGSTOP)  # the interrupt lands here, however slow the poll was
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ctrl_c_while_starting_is_one_line_and_keeps_the_old_output(tmp_path, moment):
    traj = make_trajectory(tmp_path / "run", n=2)
    out = tmp_path / "avg.safetensors"
    out.write_bytes(b"the old output")
    args = ["average", *map(str, traj.paths), "-o", str(out), "--force"]
    code, stdout, stderr = interrupt_at(args, MOMENTS[moment])
    assert (code, stderr.splitlines(), stdout) == (130, [LINE], ""), stderr
    assert out.read_bytes() == b"the old output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg.safetensors", "run"]


def _full_pipe() -> tuple[int, int, int]:
    """A pipe whose buffer is already full: (read end, write end, filler bytes)."""
    import fcntl

    read, write = os.pipe()
    flags = fcntl.fcntl(write, fcntl.F_GETFL)
    fcntl.fcntl(write, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    filler = 0
    try:
        while True:
            filler += os.write(write, b"x" * 4096)
    except BlockingIOError:
        pass
    fcntl.fcntl(write, fcntl.F_SETFL, flags)
    return read, write, filler


def _writing_stderr(pid: int) -> bool:
    """Blocked writing to fd 2 (a full pipe): the kernel's wait channel or the syscall."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        syscall = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return "pipe_write" in wchan or syscall[:2] == ["1", "0x2"]


def test_ctrl_c_while_the_error_line_is_printed_keeps_one_line(tmp_path):
    """stderr is a full pipe, so wa blocks in the middle of printing its error; Ctrl-C then."""
    read, write, filler = _full_pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wa_cli", "average", str(tmp_path / "missing.safetensors"),
         "-o", str(tmp_path / "o.safetensors")],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=write, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write)
    deadline = time.monotonic() + 120
    while not _writing_stderr(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"wa never blocked on its error line (exit {proc.poll()})")
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    proc.wait(timeout=60)
    text = b"".join(chunks)[filler:].decode()
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wa: error: "), text
    assert "missing.safetensors" in lines[0]
    assert proc.returncode == 3, text  # the error's own code, not a traceback's 1
