"""Several post-hoc EMA widths in one pass (``sigma_rel=[...]``, ``--sigma-rel S,S -o DIR``).

Oracle: each width's own one-target run (whose values test_posthoc.py checks against an
independent float64 computation): the K outputs must equal those byte for byte (tensors and
header metadata), while the inputs are read once instead of K times (counted at the engine's one
read call, ChunkTask.read).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tests.helpers import assert_one_line_error, run_wa
from wa_cli.engine import combine
from wa_cli.errors import WaError
from wa_cli.methods.ema import ema_to_file
from wa_cli.train import PowerEMA

STEPS = [100, 250, 300, 600, 700, 1000]
WIDTHS = [0.05, 0.1, 0.2]


def _trajectory(tmp_path):
    g = torch.Generator().manual_seed(0)
    paths = []
    for s in STEPS:
        state = {
            "a": torch.randn(700, generator=g).to(torch.bfloat16),  # float32 accumulator
            "b": torch.randn(3, 4, generator=g),  # float64 accumulator
            "n": torch.tensor(s),  # non-float: copied
        }
        paths.append(tmp_path / f"ckpt_{s}.safetensors")
        save_file(state, paths[-1], metadata={"step": str(s)})
    return paths


def _snapshots(tmp_path):
    model = nn.Linear(4, 3)
    ema = PowerEMA(model, sigma_rels=(0.05, 0.10), directory=tmp_path / "snaps", every=25)
    g = torch.Generator().manual_seed(3)
    for _ in range(100):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        ema.update()
        ema.maybe_save()
    return sorted((tmp_path / "snaps").glob("*.safetensors"))


def _contents(path):
    with safe_open(path, "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def _count_reads(monkeypatch):
    counted = {"bytes": 0}
    read = combine.ChunkTask.read

    def counting(self, ckpt, source, buf):
        counted["bytes"] += buf.numel()
        return read(self, ckpt, source, buf)

    monkeypatch.setattr(combine.ChunkTask, "read", counting)
    return counted


@pytest.mark.parametrize("make", [_trajectory, _snapshots], ids=["raw", "snapshots"])
def test_several_widths_equal_their_own_runs_and_read_the_inputs_once(tmp_path, monkeypatch, make):
    paths = make(tmp_path)
    counted = _count_reads(monkeypatch)
    reports = ema_to_file(paths, tmp_path / "many", sigma_rel=WIDTHS)
    many_bytes = counted["bytes"]
    assert many_bytes > 0
    assert [r.params["sigma_rel"] for r in reports] == pytest.approx(WIDTHS)
    for width, report in zip(WIDTHS, reports):
        counted["bytes"] = 0
        one = tmp_path / f"one_{width}.safetensors"
        single = ema_to_file(paths, one, sigma_rel=width)
        assert counted["bytes"] == many_bytes  # K widths read what one width reads
        assert report.stats.bytes_read == single.stats.bytes_read
        assert report.input_weights == single.input_weights
        assert report.warnings == single.warnings
        path = tmp_path / "many" / f"ema_sigma_{width:g}.safetensors"
        assert report.outputs == [str(path)]
        (meta, tensors), (meta1, tensors1) = _contents(path), _contents(one)
        assert tensors.keys() == tensors1.keys()
        for key in tensors:
            assert tensors[key].dtype == tensors1[key].dtype
            assert torch.equal(tensors[key].view(-1).view(torch.uint8),
                               tensors1[key].view(-1).view(torch.uint8))  # fmt: skip
        assert meta == meta1
        assert json.loads(meta["wa_params"])["sigma_rel"] == pytest.approx(width)


def test_several_widths_refuse_shards_and_cuda_and_write_nothing(tmp_path):
    paths = _trajectory(tmp_path)
    with pytest.raises(WaError, match="one safetensors file each"):
        ema_to_file(paths, tmp_path / "d", sigma_rel=[0.05, 0.1], max_shard_size="1MB")
    with pytest.raises(WaError, match="CPU only"):
        ema_to_file(paths, tmp_path / "d", sigma_rel=[0.05, 0.1], device="cuda")
    with pytest.raises(WaError, match="distinct"):
        ema_to_file(paths, tmp_path / "d", sigma_rel=[0.1, 0.1])
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_the_cli_writes_every_width_from_one_read(tmp_path, capsys, monkeypatch):
    paths = [str(p) for p in _trajectory(tmp_path)]
    counted = _count_reads(monkeypatch)
    folder = tmp_path / "out"
    result = run_wa(["ema", *paths, "--sigma-rel", "0.05,0.1", "-o", str(folder), "-q"], capsys)
    assert result.code == 0, result.err
    two = counted["bytes"]
    counted["bytes"] = 0
    ema_to_file(paths, tmp_path / "one.safetensors", sigma_rel=0.05)
    assert two == counted["bytes"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "ema_sigma_0.05.safetensors", "ema_sigma_0.1.safetensors",
    ]  # fmt: skip
    bad = run_wa(["ema", *paths, "--sigma-rel", "0.05,0.1", "-o", str(tmp_path / "c"),
                  "--device", "cuda"], capsys)  # fmt: skip
    assert_one_line_error(bad, code=2)


def test_a_read_failing_midway_leaves_no_output_of_any_width(tmp_path, monkeypatch):
    paths = _trajectory(tmp_path)
    calls = {"n": 0}
    read = combine.ChunkTask.read

    def failing(self, ckpt, source, buf):
        calls["n"] += 1
        if calls["n"] == 8:
            raise OSError(5, "Input/output error")
        return read(self, ckpt, source, buf)

    monkeypatch.setattr(combine.ChunkTask, "read", failing)
    with pytest.raises((OSError, WaError)):
        ema_to_file(paths, tmp_path / "d", sigma_rel=[0.05, 0.1])
    assert calls["n"] >= 8
    assert list((tmp_path / "d").iterdir()) == []
