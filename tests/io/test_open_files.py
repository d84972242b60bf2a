"""Inputs open their files only while read (500 inputs under ``ulimit -n 64``), and a file that
changes between two passes (or while read) is an error, never a wrong output."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

from tests.helpers import REPO, assert_one_line_error, make_trajectory, run_wa
from tests.io.faults import temporaries


def test_500_inputs_under_ulimit_64(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    expected = torch.zeros(4, dtype=torch.float64)
    for i in range(500):
        t = torch.full((4,), float(i))
        save_file({"w": t, "b": t[:2].clone()}, folder / f"ckpt_{i:03d}.safetensors")
        expected += t.double()
    out = tmp_path / "avg.safetensors"

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = subprocess.run(
        [sys.executable, "-m", "wa_cli", "average", str(folder), "-o", str(out), "-q"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=limit,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(load_file(out)["w"], (expected / 500).float())


def _swap_before_second_pass(monkeypatch, victim, replacement_state, in_place):
    from wa_cli.methods.graft import files

    real = files.combine_to_file

    def swap_then_write(*args, **kwargs):
        if in_place:  # same inode, same size, new bytes and time
            data = bytearray(victim.read_bytes())
            data[-4:] = b"\x01\x02\x03\x04"
            with open(victim, "r+b") as f:
                f.write(data)
            st = os.stat(victim)
            os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        else:
            tmp = victim.with_name("new.safetensors")
            save_file(replacement_state, tmp, metadata={"format": "pt"})
            os.replace(tmp, victim)
        return real(*args, **kwargs)

    monkeypatch.setattr(files, "combine_to_file", swap_then_write)


def test_graft_input_replaced_between_passes_is_an_error(tmp_path, capsys, monkeypatch):
    traj = make_trajectory(tmp_path / "run", n=2)
    other = {k: v + 1 if v.is_floating_point() else v for k, v in traj.states[1].items()}
    _swap_before_second_pass(monkeypatch, traj.paths[1], other, in_place=False)
    out = tmp_path / "g.safetensors"
    r = run_wa(["graft", *traj.paths, "-o", out], capsys)
    assert_one_line_error(r, 3, "changed while wa ran", "ckpt_1")
    assert not out.exists() and temporaries(tmp_path) == []


def test_graft_input_rewritten_in_place_between_passes_is_an_error(tmp_path, capsys, monkeypatch):
    traj = make_trajectory(tmp_path / "run", n=2)
    _swap_before_second_pass(monkeypatch, traj.paths[0], None, in_place=True)
    out = tmp_path / "g.safetensors"
    r = run_wa(["graft", *traj.paths, "-o", out], capsys)
    assert_one_line_error(r, 3, "changed while wa ran", "ckpt_0")
    assert not out.exists() and temporaries(tmp_path) == []
