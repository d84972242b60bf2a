"""bn-recalibrate runs the user's code; that code must not end, deafen or misdirect wa.

Issue 22 items 13 and 18, driven through the real command in a subprocess: ``os._exit(0)`` in
the user's code ended wa with exit 0 and no output; a loader that ignores SIGINT made Ctrl-C do
nothing; a factory that calls ``os.chdir`` broke wa's own relative paths. Markers the user code
prints on stderr say when it is running, so each signal lands at a chosen moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from safetensors.torch import save_file

from tests.helpers import REPO

HEADER = """
import atexit, os, signal, sys, time
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))

def batches():
    return [torch.randn(8, 4) for _ in range(3)]

def mark(text):
    sys.stderr.write(f"MARK {text}\\n")
    sys.stderr.flush()
"""


@pytest.fixture
def project(tmp_path):
    """A checkpoint of the user's model, and a function writing the user's code file."""
    code = HEADER
    exec(compile(code, "model", "exec"), namespace := {})
    save_file(namespace["build"]().state_dict(), tmp_path / "ckpt.safetensors")

    def write(extra: str) -> str:
        (tmp_path / "net.py").write_text(code + textwrap.dedent(extra))
        return str(tmp_path / "net.py")

    return write


def start(tmp_path, model: str, data: str, *extra: str, cwd=None):
    return subprocess.Popen(
        [sys.executable, "-m", "wa_cli", "bn-recalibrate", "ckpt.safetensors",
         "--model", model, "--data", data, "-o", "out.safetensors", *extra],
        cwd=cwd or tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc):
    out, err = proc.communicate(timeout=120)
    return proc.returncode, [line for line in err.splitlines() if not line.startswith("MARK")]


@pytest.mark.parametrize(
    ("extra", "model", "data", "named"),
    [
        ("def bad():\n    os._exit(0)\n", "bad", "batches", "factory 'bad' called os._exit(0)"),
        (
            "def gen():\n    yield torch.randn(8, 4)\n    os._exit(0)\n",
            "build", "gen", "data loader 'gen' (at batch 1) called os._exit(0)",
        ),
        (
            "def fwd(model, batch):\n    os._exit(0)\n",
            "build", "batches", "forward function 'fwd' (at batch 0) called os._exit(0)",
        ),
        ("os._exit(0)\n", "build", "batches", "importing model factory file"),
    ],
)  # fmt: skip
def test_user_code_that_exits_is_a_failure_naming_it(tmp_path, project, extra, model, data, named):
    path = project(extra)
    forward = ["--forward", f"{path}:fwd"] if "fwd" in extra else []
    code, lines = finish(start(tmp_path, f"{path}:{model}", f"{path}:{data}", *forward))
    assert code == 3, lines
    assert len(lines) == 1 and lines[0].startswith("wa: error: "), lines
    assert named in lines[0]
    assert not (tmp_path / "out.safetensors").exists()


def _wait_for(proc, marker: str) -> None:
    """Read stderr up to the line ``MARK marker`` (the user's code is running there)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            pytest.fail(f"wa ended (exit {proc.wait()}) before {marker!r}")
        if line.strip() == f"MARK {marker}":
            return
    pytest.fail(f"no {marker!r}")


def test_user_code_that_ignores_sigint_is_still_interrupted(tmp_path, project):
    path = project(
        """
        def deaf():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return build()

        def slow():
            mark("loading")
            time.sleep(600)
            yield torch.randn(8, 4)
        """
    )
    proc = start(tmp_path, f"{path}:deaf", f"{path}:slow")
    _wait_for(proc, "loading")
    proc.send_signal(signal.SIGINT)
    code, lines = finish(proc)
    assert (code, lines) == (130, ["wa: error: interrupted by SIGINT; nothing was written"])
    assert not (tmp_path / "out.safetensors").exists()


def test_user_code_that_swallows_the_interrupt_is_ended_by_a_second_ctrl_c(tmp_path, project):
    path = project(
        """
        def stubborn():
            while True:
                try:  # the marker inside the try: a signal after it is caught
                    mark("loading")
                    time.sleep(600)
                except BaseException:
                    mark("swallowed")
            yield
        """
    )
    proc = start(tmp_path, f"{path}:build", f"{path}:stubborn")
    _wait_for(proc, "loading")
    proc.send_signal(signal.SIGINT)
    _wait_for(proc, "swallowed")
    proc.send_signal(signal.SIGINT)
    code, lines = finish(proc)
    assert (code, lines) == (130, ["wa: error: interrupted by SIGINT; nothing was written"])


def test_an_atexit_hook_of_the_user_cannot_turn_a_failure_into_success(tmp_path, project):
    path = project(
        """
        def hooked():
            atexit.register(os._exit, 0)
            return build()

        def broken():
            raise ValueError("no data today")
        """
    )
    code, lines = finish(start(tmp_path, f"{path}:hooked", f"{path}:broken"))
    assert code == 3 and len(lines) == 1 and "no data today" in lines[0], lines


def test_a_factory_that_changes_directory_leaves_wa_s_paths_alone(tmp_path, project):
    """Relative checkpoint, data and output paths keep meaning what they meant at the start."""
    (tmp_path / "elsewhere").mkdir()
    project(
        """
        def wanders():
            os.chdir("elsewhere")
            return build()

        def local_file():
            assert os.path.basename(os.getcwd()) == "elsewhere"  # the user's chdir holds for them
            return batches()
        """
    )
    proc = start(tmp_path, "net.py:wanders", "net.py:local_file")
    code, lines = finish(proc)
    assert code == 0, lines
    assert (tmp_path / "out.safetensors").is_file()
    assert not (tmp_path / "elsewhere" / "out.safetensors").exists()
