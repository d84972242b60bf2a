"""File names that are not UTF-8, and a stdout that is ASCII only: the run works or says one line.

Before: a ``\\xff`` byte in a name ended ``wa average`` in a ``UnicodeEncodeError`` traceback
(the temporary's name), and its output's metadata, once written, held a lone surrogate that the
safetensors library refuses to parse; ``PYTHONIOENCODING=ascii`` with ``é`` in a name ended the
report in a traceback after the output was written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from tests.helpers import REPO, CliResult, assert_one_line_error, make_trajectory


def _wa(args: list[object], **env: str) -> CliResult:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    argv = [os.fsencode(a) if isinstance(a, bytes | os.PathLike) else str(a) for a in args]
    proc = subprocess.run(
        [sys.executable.encode(), b"-m", b"wa_cli", *map(os.fsencode, argv)],
        capture_output=True, env=full, timeout=120,
    )  # fmt: skip
    return CliResult(proc.returncode, proc.stdout.decode("ascii", "replace"),
                     proc.stderr.decode("ascii", "replace"))  # fmt: skip


@pytest.fixture
def named_inputs(tmp_path):
    traj = make_trajectory(tmp_path / "run", n=2)
    odd = [tmp_path / os.fsdecode(b"ckpt_\xff0.safetensors"), tmp_path / "ckpt_\u00e91.safetensors"]
    for src, dst in zip(traj.paths, odd):
        os.rename(src, dst)
    return traj, odd


def test_a_non_utf8_name_in_and_out_works_and_the_output_is_readable(tmp_path, named_inputs):
    traj, odd = named_inputs
    out = tmp_path / os.fsdecode(b"avg\xfe.safetensors")
    r = _wa(["average", *odd, "-o", out])
    assert r.code == 0, r.stderr
    assert "Traceback" not in r.stderr
    plain = tmp_path / "plain.safetensors"  # the library refuses a non-UTF-8 path, not the file
    shutil.copyfile(out, plain)
    with safe_open(str(plain), "pt") as f:
        assert "ckpt_" in f.metadata()["wa_inputs"]
        expected = (traj.states[0]["0.weight"] + traj.states[1]["0.weight"]) / 2
        torch.testing.assert_close(f.get_tensor("0.weight"), expected)


def test_an_ascii_only_stdout_prints_names_escaped(tmp_path, named_inputs):
    _, odd = named_inputs
    out = tmp_path / "avg\u00e9.safetensors"
    r = _wa(["average", *odd, "-o", out], PYTHONIOENCODING="ascii")
    assert r.code == 0, r.stderr
    assert "Traceback" not in r.stderr and "\\xe9" in r.stdout + r.stderr
    r = _wa(["average", *odd, "-o", out, "--force", "--json"], PYTHONIOENCODING="ascii")
    assert r.code == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert json.loads(r.stdout)["inputs"][1].endswith("ckpt_\u00e91.safetensors")


def test_a_missing_non_utf8_input_is_one_line(tmp_path):
    missing = tmp_path / os.fsdecode(b"gone\xff.safetensors")
    r = _wa(["average", missing, "-o", tmp_path / "o.safetensors"], PYTHONIOENCODING="ascii")
    assert_one_line_error(r, 3, "gone")
