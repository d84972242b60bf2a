"""``wa average`` / ``wa ema`` of independently trained runs warn (issue 22, item 5).

sample_checkpoints' run_a (seed 0) and run_b (seed 1) are two real, independently initialised
trainings: their mean is a broken model, and wa says so in one stderr line (and in --json),
using graft's relatedness measure. Checkpoints of one run give no warning. The output is still
the mean: the oracle is the float64 mean of the files.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from tests.helpers import REPO, cnn_state, run_wa

A = REPO / "sample_checkpoints" / "run_a"
B = REPO / "sample_checkpoints" / "run_b"
WARNING = "look independently trained"


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if WARNING in line]


def test_average_of_two_seeds_warns_once(tmp_path, capsys):
    a, b = A / "ckpt_1350.safetensors", B / "ckpt_1350.safetensors"
    out = tmp_path / "avg.safetensors"
    r = run_wa(["average", a, b, "-o", out, "--json"], capsys)
    assert r.code == 0, r.stderr
    lines = _warnings(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("wa: warning: "), r.stderr
    assert any(WARNING in w for w in json.loads(r.stdout)["warnings"])
    got, sa, sb = load_file(out), load_file(a), load_file(b)
    for k in sa:
        if sa[k].is_floating_point():
            want = (sa[k].double() + sb[k].double()) / 2
            torch.testing.assert_close(got[k].double(), want, rtol=1e-6, atol=1e-7)


def test_a_second_run_after_a_trajectory_is_found(tmp_path, capsys):
    r = run_wa(["average", A, B / "ckpt_1350.safetensors", "-o", tmp_path / "o.safetensors"],
               capsys)  # fmt: skip
    assert r.code == 0, r.stderr
    assert len(_warnings(r.stderr)) == 1


def test_ema_of_two_seeds_warns(tmp_path, capsys):
    r = run_wa(["ema", A / "ckpt_1305.safetensors", B / "ckpt_1350.safetensors",
                "--decay", "0.5", "-o", tmp_path / "e.safetensors"], capsys)  # fmt: skip
    assert r.code == 0, r.stderr
    assert len(_warnings(r.stderr)) == 1


def test_one_run_gives_no_warning(tmp_path, capsys):
    r = run_wa(["average", A, "-o", tmp_path / "swa.safetensors"], capsys)
    assert r.code == 0, r.stderr
    assert not _warnings(r.stderr)
    r = run_wa(["ema", A, "--half-life", "200", "-o", tmp_path / "ema.safetensors"], capsys)
    assert r.code == 0, r.stderr
    assert not _warnings(r.stderr)


def test_random_initialisations_warn_and_a_fine_tune_does_not(tmp_path, capsys):
    s0, s1 = cnn_state(0), cnn_state(1)
    tuned = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in s0.items()}  # fmt: skip
    for name, state in (("s0", s0), ("s1", s1), ("tuned", tuned)):
        save_file(state, tmp_path / f"{name}.safetensors")
    r = run_wa(["average", tmp_path / "s0.safetensors", tmp_path / "s1.safetensors",
                "-o", tmp_path / "a.safetensors"], capsys)  # fmt: skip
    assert r.code == 0 and len(_warnings(r.stderr)) == 1, r.stderr
    r = run_wa(["average", tmp_path / "s0.safetensors", tmp_path / "tuned.safetensors",
                "-o", tmp_path / "b.safetensors"], capsys)  # fmt: skip
    assert r.code == 0 and not _warnings(r.stderr), r.stderr
