"""wa's own earlier outputs are no trajectory checkpoints (issue 22, item 3).

``wa average ckpts/ -o ckpts/swa.safetensors`` leaves its output among the checkpoints; a folder
or glob expansion leaves such files (their metadata records ``wa_version``) out with a one-line
note, and naming one explicitly still uses it. Oracle: the float64 mean of the saved tensors.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from tests.helpers import make_trajectory, run_wa


def _mean(states):
    return {k: sum(s[k].double() for s in states) / len(states) for k in states[0]}


def _assert_mean(path, states) -> None:
    got, want = load_file(path), _mean(states)
    for k, v in want.items():
        if v.is_floating_point() and states[0][k].is_floating_point():
            torch.testing.assert_close(got[k].double(), v, rtol=1e-6, atol=1e-7)


def _notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "written by wa" in line]


def test_a_folder_leaves_out_the_output_wa_wrote_into_it(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "ckpts", n=3)
    swa = tmp_path / "ckpts" / "swa.safetensors"
    r = run_wa(["average", tmp_path / "ckpts", "-o", swa], capsys)
    assert r.code == 0, r.stderr
    r = run_wa(["average", tmp_path / "ckpts", "--last", "5", "-o", swa, "--force", "--json"],
               capsys)  # fmt: skip
    assert r.code == 0, r.stderr
    assert len(json.loads(r.stdout)["inputs"]) == 3
    notes = _notes(r.stderr)
    assert len(notes) == 1 and "swa.safetensors" in notes[0], r.stderr
    _assert_mean(swa, traj.states)
    # The same through a quoted glob, and with an EMA (where an extra input would shift weights).
    r = run_wa(["ema", str(tmp_path / "ckpts" / "*.safetensors"), "--decay", "0.5",
                "--dry-run", "--json"], capsys)  # fmt: skip
    assert r.code == 0, r.stderr
    assert len(json.loads(r.stdout)["checkpoints"]) == 3
    assert len(_notes(r.stderr)) == 1


def test_a_wa_output_named_explicitly_is_used(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "ckpts", n=2)
    swa = tmp_path / "ckpts" / "swa.safetensors"
    assert run_wa(["average", tmp_path / "ckpts", "-o", swa], capsys).code == 0
    out = tmp_path / "out.safetensors"
    r = run_wa(["average", traj.paths[0], swa, "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert not _notes(r.stderr)
    # (a + (a + b) / 2) / 2, recomputed from the saved tensors
    a, b = traj.states
    want = {k: (a[k].double() + (a[k].double() + b[k].double()) / 2) / 2 for k in a}
    got = load_file(out)
    for k, v in want.items():
        if a[k].is_floating_point():
            torch.testing.assert_close(got[k].double(), v, rtol=1e-6, atol=1e-7)


def test_a_wa_shard_folder_inside_the_folder_is_left_out(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "ckpts", n=3)
    shards = tmp_path / "ckpts" / "swa"
    r = run_wa(["average", tmp_path / "ckpts", "-o", shards, "--max-shard-size", "2KB"], capsys)
    assert r.code == 0, r.stderr
    r = run_wa(["average", tmp_path / "ckpts", "--dry-run", "--json"], capsys)
    assert r.code == 0, r.stderr
    assert len(json.loads(r.stdout)["checkpoints"]) == len(traj.paths)
    assert len(_notes(r.stderr)) == 1
    # The shard folder named explicitly is one checkpoint, as always.
    r = run_wa(["average", shards, traj.paths[0], "--dry-run", "--json"], capsys)
    assert r.code == 0, r.stderr
    assert len(json.loads(r.stdout)["checkpoints"]) == 2


def test_a_folder_of_wa_outputs_only_says_so(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "ckpts", n=2)
    (tmp_path / "outs").mkdir()
    out = tmp_path / "outs" / "swa.safetensors"
    assert run_wa(["average", *traj.paths, "-o", out], capsys).code == 0
    r = run_wa(["average", tmp_path / "outs", "--dry-run"], capsys)
    assert r.code == 3, r.stderr
    assert "holds only files wa wrote" in r.stderr and "swa.safetensors" in r.stderr
