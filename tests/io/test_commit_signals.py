"""A signal in the commit window: the message says what is on disk, and the disk is consistent.

The real ``wa`` process (``python -m wa_cli``'s entry, real handlers) sends itself a real signal
at a chosen instant of the commit: right after an output was renamed into place, before wa's
own bookkeeping. Before the fix the handler ran at once and wa said "nothing was written" while
the new output was in place and the old one gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from tests.helpers import REPO, CliResult, make_trajectory, run_wa_process
from tests.io.faults import temporaries

_DRIVER = """
import os, signal, sys
import wa_cli.io.atomic as atomic

SIG, AFTER = int(sys.argv[1]), int(sys.argv[2])
real_commit = atomic._commit
count = [0]

def commit(p):
    real_commit(p)
    count[0] += 1
    if count[0] == AFTER:
        os.kill(os.getpid(), SIG)  # lands right after the rename, before it is recorded

atomic._commit = commit
sys.argv = ["wa", *sys.argv[3:]]
import wa_cli.__main__ as m
m.main()
"""


def _run(sig: int, after: int, args: list[object]) -> CliResult:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(int(sig)), str(after), *map(str, args)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_right_after_the_rename_reports_the_new_output(tmp_path, sig):
    traj = make_trajectory(tmp_path / "run", n=3)
    out = tmp_path / "avg.safetensors"
    assert run_wa_process(["average", *traj.paths[:2], "-o", out]).code == 0
    old = out.read_bytes()
    r = _run(sig, 1, ["average", *traj.paths, "-o", out, "--force"])
    assert r.code == 128 + sig, r.stderr
    name = signal.Signals(sig).name
    assert r.stderr.splitlines() == [f"wa: error: interrupted by {name}; after writing '{out}'"]
    assert out.read_bytes() != old  # the new output is complete and in place
    with safe_open(str(out), "pt") as f:
        assert len(list(f.keys())) == len(traj.states[0])
    assert temporaries(tmp_path) == []


def test_signal_inside_a_folder_exchange_reports_the_new_folder(tmp_path):
    traj = make_trajectory(tmp_path / "run", n=3)
    out = tmp_path / "avg"
    args = ["average", "--max-shard-size", "2KB", "-o", out]
    assert run_wa_process([*args[:-2], "-o", out, *traj.paths[:2]]).code == 0
    r = _run(signal.SIGINT, 1, [*args, "--force", *traj.paths])
    assert r.code == 130, r.stderr
    assert r.stderr.splitlines() == [f"wa: error: interrupted by SIGINT; after writing '{out}'"]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert "ckpt_2" in json.dumps(index["metadata"])  # the new folder, whole
    assert temporaries(tmp_path) == []


def test_signal_between_the_outputs_of_a_graft_ring_commits_the_whole_set(tmp_path):
    traj = make_trajectory(tmp_path / "run", n=3)
    r = _run(signal.SIGINT, 1, ["graft", *traj.paths, "-o", tmp_path / "out"])
    assert r.code == 130, r.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == 3  # all three outputs, not one of them
    for name in written:
        assert f"{name}'" in r.stderr.splitlines()[0]
    assert len(r.stderr.splitlines()) == 1
    assert temporaries(tmp_path) == []


_KILL_DRIVER = """
import os, signal, sys
import wa_cli.io.atomic as atomic

real_commit = atomic._commit

def commit(p):
    real_commit(p)
    os.kill(os.getpid(), signal.SIGKILL)  # a crash right after the first rename of the set

atomic._commit = commit
sys.argv = ["wa", *sys.argv[1:]]
import wa_cli.__main__ as m
m.main()
"""


def test_a_sigkill_inside_a_ring_commit_is_finished_by_the_next_run(tmp_path):
    """The set's commit is journaled: the mix a SIGKILL leaves is completed, not guessed at."""
    from safetensors.torch import load_file

    from wa_cli.io import atomic

    traj = make_trajectory(tmp_path / "run", n=3)
    out, reference = tmp_path / "out", tmp_path / "reference"
    assert run_wa_process(["graft", *traj.paths, "-o", out, "--c", "1"]).code == 0
    old = {p.name: load_file(p) for p in out.iterdir()}
    assert run_wa_process(["graft", *traj.paths, "-o", reference]).code == 0
    new = {p.name: load_file(p) for p in reference.iterdir()}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["graft", *map(str, traj.paths), "-o", str(out), "--force"]
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_DRIVER, *args], capture_output=True, env=env, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    now = {p.name: load_file(p) for p in out.iterdir() if not p.name.startswith(".")}
    same = [n for n in now if all(torch.equal(now[n][k], new[n][k]) for k in new[n])]
    assert 1 <= len(same) < 3  # the crash left a mix: some new, some old
    assert any(p.name.startswith(".wa-commit-") for p in out.iterdir())

    atomic.remove_stale(out / sorted(new)[0])  # what the next run writing there does first
    for name, tensors in new.items():
        got = load_file(out / name)
        assert all(torch.equal(got[k], tensors[k]) for k in tensors), name
        assert any(not torch.equal(got[k], old[name][k]) for k in tensors)
    assert sorted(p.name for p in out.iterdir()) == sorted(new)  # no journal, no temporary
