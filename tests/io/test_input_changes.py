"""An input that changes while wa reads it: one line, exit 3, no output, and never a hang.

Each case runs the real ``wa average`` in a fresh process with a deterministic hook: right after
the reader has read a checkpoint's header, the test's code truncates that file or swaps it for a
FIFO (no writer ever comes). Before the fix the FIFO case blocked for ever in ``open``; the
timeout turns that into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, CliResult, assert_one_line_error, make_trajectory
from tests.io.faults import temporaries

_DRIVER = """
import os, sys
from pathlib import Path
import wa_cli.io.reader as reader

MODE, VICTIM = sys.argv[1], sys.argv[2]
real_read_header = reader.read_header

def read_header(path, *args, **kwargs):
    header = real_read_header(path, *args, **kwargs)
    if Path(path).name == VICTIM:
        if MODE == "truncate":
            os.truncate(path, os.path.getsize(path) // 2)
        else:  # a FIFO that no process ever writes
            os.unlink(path)
            os.mkfifo(path)
    return header

reader.read_header = read_header
from wa_cli.cli.app import main
main(sys.argv[3:])
"""


def _run(mode: str, victim: str, args: list[str]) -> CliResult:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, mode, victim, *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("mode", ["truncate", "fifo"])
def test_an_input_changed_after_its_header_is_one_line_and_no_output(tmp_path, mode):
    traj = make_trajectory(tmp_path / "run", n=2)
    out = tmp_path / "avg.safetensors"
    r = _run(mode, traj.paths[1].name, ["average", *map(str, traj.paths), "-o", str(out)])
    assert_one_line_error(r, 3, str(traj.paths[1]), "changed while wa ran")
    assert r.stdout == ""
    assert not out.exists() and temporaries(tmp_path) == []


def test_a_fifo_swapped_in_while_the_descriptor_was_closed_never_blocks(tmp_path):
    """Readers close descriptors to stay under the open-file limit; opening one again checks
    (without blocking) that the path is still the same regular file."""
    from wa_cli.errors import WaError
    from wa_cli.io.reader import open_checkpoint

    traj = make_trajectory(tmp_path / "run", n=1)
    ckpt = open_checkpoint(traj.paths[0])
    ckpt.close()
    traj.paths[0].unlink()
    os.mkfifo(traj.paths[0])
    with pytest.raises(WaError, match="changed while wa ran .*FIFO") as e:
        ckpt.tensor(ckpt.keys()[0])
    assert e.value.code == 3
