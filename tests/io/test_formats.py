"""Suffixes: one list, used by the reader, folder expansion, step parsing and the writer."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import assert_one_line_error, cnn_state, run_wa
from wa_cli.errors import WaError
from wa_cli.io.formats import checkpoint_suffix, is_pickle_name, strip_checkpoint_suffix
from wa_cli.io.output_check import check_output_name
from wa_cli.io.reader import open_checkpoint
from wa_cli.select import expand_inputs, step_from_name


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("model_best.pth.tar", ".pth.tar"),
        ("a.PT.TAR", ".PT.TAR"),
        ("x.ckpt", ".ckpt"),
        ("x.safetensors", ".safetensors"),
        ("m.safetensors.index.json", None),  # an index is not a checkpoint file suffix
        ("backup.tar", None),
    ],
)
def test_suffix_is_matched_longest_first(name, suffix):
    assert checkpoint_suffix(name) == suffix


def test_pth_tar_is_a_pickle_everywhere(tmp_path):
    states = [cnn_state(i) for i in range(2)]
    for epoch, state in zip((9, 10), states):
        # timm's CheckpointSaver names: checkpoint-<epoch>.pth.tar
        torch.save({"epoch": epoch, "state_dict": state}, tmp_path / f"checkpoint-{epoch}.pth.tar")
    (tmp_path / "summary.csv").write_text("epoch\n")
    (tmp_path / "backup.tar").write_bytes(b"\0" * 10)
    paths = expand_inputs([tmp_path])
    assert [p.name for p in paths] == ["checkpoint-9.pth.tar", "checkpoint-10.pth.tar"]
    ckpts = [open_checkpoint(p) for p in paths]
    assert torch.equal(ckpts[1].tensor("4.weight"), states[1]["4.weight"])
    assert [step_from_name(c) for c in ckpts] == [9, 10]
    assert strip_checkpoint_suffix("checkpoint-10.pth.tar") == "checkpoint-10"


def test_pickle_named_outputs_are_refused(tmp_path):
    assert is_pickle_name("avg.pth.tar")
    with pytest.raises(WaError, match=r"ends in \.pth\.tar.*'avg\.safetensors'"):
        check_output_name(tmp_path / "avg.pth.tar")


def test_cli_averages_pth_tar_files(tmp_path, capsys):
    for i in range(2):
        torch.save({"state_dict": cnn_state(i)}, tmp_path / f"c{i}.pth.tar")
    out = tmp_path / "avg.safetensors"
    inputs = [tmp_path / "c0.pth.tar", tmp_path / "c1.pth.tar"]
    result = run_wa(["average", *inputs, "-o", out], capsys)
    assert result.code == 0, result.stderr
    got = load_file(out)["4.weight"]
    expected = (cnn_state(0)["4.weight"].double() + cnn_state(1)["4.weight"].double()) / 2
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-7)
    bad = run_wa(["average", tmp_path / "c0.pth.tar", "-o", tmp_path / "x.pt.tar"], capsys)
    assert_one_line_error(bad, 2, "pickle suffix")
