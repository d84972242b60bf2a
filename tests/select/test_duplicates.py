"""Duplicates are dropped only when confirmed in full (issue 22, item 2).

A sampled hash (the start, the end and evenly spaced blocks of a file; the first and last bytes
of each tensor) only nominates a pair. Distinct checkpoints whose samples agree (a file whose
differing bytes lie between the samples, a frozen-backbone fine-tune, two runs saved at one
step) are all used; real copies are still used once, with the note. Oracles: float64
recomputations from the tensors the test saved.
"""

from __future__ import annotations

import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from tests.helpers import run_wa
from wa_cli.io.fingerprint import file_sample as _file_sample

N = 1 << 19  # 2 MiB of float32: the samples are 64 KiB blocks every ~233 KB


def _mean(*states: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: sum(s[k].double() for s in states) / len(states) for k in states[0]}


def _assert_state(path, want: dict[str, torch.Tensor]) -> None:
    got = load_file(path)
    assert set(got) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k].double(), v, rtol=1e-6, atol=1e-7)


def test_a_file_differing_between_the_samples_is_no_copy(tmp_path, capsys):
    a = {"w": torch.zeros(N)}
    b = {"w": torch.zeros(N)}
    b["w"][25_000:25_100] = 1.0  # bytes ~100 KB in: inside the first MB, between two samples
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    size = os.path.getsize(tmp_path / "a.safetensors")
    assert _file_sample(tmp_path / "a.safetensors", size) == _file_sample(
        tmp_path / "b.safetensors", size
    )  # the trap: the sampled hashes agree
    out = tmp_path / "out.safetensors"
    r = run_wa(["average", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "-o", out],
               capsys)  # fmt: skip
    assert r.code == 0, r.stderr
    assert "used once" not in r.stderr
    _assert_state(out, _mean(a, b))
    # A real copy of it is still used once, with the note.
    shutil.copyfile(tmp_path / "b.safetensors", tmp_path / "b_copy.safetensors")
    r = run_wa(["average", tmp_path / "a.safetensors", tmp_path / "b.safetensors",
                tmp_path / "b_copy.safetensors", "-o", out, "--force"], capsys)  # fmt: skip
    assert r.code == 0, r.stderr
    assert "b_copy.safetensors' has the same bytes as" in r.stderr
    _assert_state(out, _mean(a, b))


def _fine_tune(folder, steps):
    """A frozen-backbone fine-tune: two 1 MiB backbone tensors never change, the head does."""
    folder.mkdir()
    torch.manual_seed(0)
    backbone = {"a_backbone": torch.randn(N // 2), "z_backbone": torch.randn(N // 2)}
    states = []
    for step in steps:
        state = {**backbone, "head.weight": torch.randn(4, 4)}
        save_file(state, folder / f"ft_step{step}.safetensors")
        states.append(state)
    return states


def test_a_frozen_backbone_fine_tune_keeps_every_checkpoint(tmp_path, capsys):
    steps = [100, 200, 300, 400]
    states = _fine_tune(tmp_path / "ft", steps)
    files = sorted((tmp_path / "ft").iterdir())
    samples = {_file_sample(f, os.path.getsize(f)) for f in files}
    assert len(samples) == 1  # the trap: every sample lands on the frozen backbone
    out = tmp_path / "ema.safetensors"
    r = run_wa(["ema", tmp_path / "ft", "--half-life", "100", "-o", out, "--json"], capsys)
    assert r.code == 0, r.stderr
    assert "used once" not in r.stderr
    assert len(json.loads(r.stdout)["inputs"]) == 4
    # Oracle: the EMA recurrence in float64, beta = 0.5 ** (gap / half-life).
    e = {k: v.double() for k, v in states[0].items()}
    for prev, step, state in zip(steps[:-1], steps[1:], states[1:], strict=True):
        beta = 0.5 ** ((step - prev) / 100)
        e = {k: beta * e[k] + (1 - beta) * state[k].double() for k in e}
    _assert_state(out, e)
    r = run_wa(["average", tmp_path / "ft", "-o", tmp_path / "avg.safetensors"], capsys)
    assert r.code == 0, r.stderr
    _assert_state(tmp_path / "avg.safetensors", _mean(*states))


def _lightning(path, step: int, weight: torch.Tensor) -> None:
    path.parent.mkdir(parents=True)
    torch.save({"global_step": step, "epoch": 0, "state_dict": {"fc.weight": weight}}, path)


def test_two_runs_saved_at_the_same_step_are_not_merged(tmp_path, capsys):
    torch.manual_seed(1)
    wa = torch.randn(64, 64)
    wb = wa.clone()
    wb[20:40] = torch.randn(20, 64)  # the first and last 256 bytes agree: the samples do
    a = tmp_path / "run_a" / "epoch=0-step=100.ckpt"
    b = tmp_path / "run_b" / "epoch=0-step=100.ckpt"
    _lightning(a, 100, wa)
    _lightning(b, 100, wb)
    out = tmp_path / "out.safetensors"
    r = run_wa(["average", a, b, "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert "used once" not in r.stderr
    _assert_state(out, _mean({"fc.weight": wa}, {"fc.weight": wb}))
    # The same step and the same tensors in full (Lightning's last.ckpt): used once.
    c = tmp_path / "run_a" / "last.ckpt"
    torch.save({"global_step": 100, "epoch": 0, "state_dict": {"fc.weight": wa},
                "callbacks": {"x": 1}}, c)  # fmt: skip
    r = run_wa(["average", a, c, b, "-o", out, "--force"], capsys)
    assert r.code == 0, r.stderr
    assert "last.ckpt' records the same global_step (100) and holds the same tensors" in r.stderr
    _assert_state(out, _mean({"fc.weight": wa}, {"fc.weight": wb}))
