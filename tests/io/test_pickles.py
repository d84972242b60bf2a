"""Pickles: weights_only always, the allow-list, and per-key refusals before any allocation."""

from __future__ import annotations

import argparse
import os
import resource
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import assert_one_line_error, cnn_state, run_wa
from wa_cli.errors import ExitCode, WaError
from wa_cli.io.reader import ReadOptions, open_checkpoint


class Payload:
    """A pickle that runs a command while it loads (the classic attack)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class DataOnly:
    """A plain class a user may allow on purpose."""

    def __init__(self, lr: float = 0.1):
        self.lr = lr


def timm_checkpoint(path: Path, epoch: int, metric: float, seed: int = 0) -> dict:
    """What timm's CheckpointSaver writes (train.py passes its argparse args)."""
    model = nn.Linear(4, 3)
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = {
        "epoch": epoch,
        "arch": "resnet18",
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict(),
        "version": 2,
        "args": argparse.Namespace(model="resnet18", lr=0.1, epochs=10, mean=None, aa="rand"),
        "metric": metric,
    }
    torch.save(state, path)
    return state


def test_timm_checkpoint_with_namespace_args_loads(tmp_path):
    saved = timm_checkpoint(tmp_path / "checkpoint-3.pth.tar", epoch=3, metric=71.5)
    ckpt = open_checkpoint(tmp_path / "checkpoint-3.pth.tar")
    assert set(ckpt.keys()) == {"weight", "bias"}
    assert torch.equal(ckpt.tensor("weight"), saved["state_dict"]["weight"])
    assert ckpt.metadata["metric"] == "71.5" and ckpt.metadata["epoch"] == "3"


def test_reduce_payload_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(2), "x": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(WaError, match=r"'posix\.system'.*weights_only=True") as info:
        open_checkpoint(tmp_path / "evil.pt")
    assert info.value.code == ExitCode.BAD_INPUT
    result = run_wa(["average", tmp_path / "evil.pt", "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(result, 3, "posix.system")
    # Allowing a function is refused outright: the pickle could call it with any arguments.
    result = run_wa(
        ["average", tmp_path / "evil.pt", "--allow-global", "os.system", "-o", tmp_path / "o"],
        capsys,
    )
    assert_one_line_error(result, 2, "never admits it")
    # The library names the parameter; the CLI shows the flag the user typed.
    assert "wa: error: --allow-global 'os.system' is refused: module 'os' " in result.stderr
    assert not marker.exists()


def test_allow_global_admits_a_named_class(tmp_path, capsys):
    state = cnn_state(0)
    torch.save({"state_dict": state, "config": DataOnly(0.3)}, tmp_path / "a.pt")
    name = f"{__name__}.DataOnly"
    # An unknown class is named, but the refusal does not suggest admitting it: only classes wa
    # knows to hold data are suggested (pickle_globals.KNOWN_DATA).
    with pytest.raises(
        WaError, match=rf"needs the global\(s\) '{name}'.*not classes wa knows"
    ) as e:
        open_checkpoint(tmp_path / "a.pt")
    assert "--allow-global" not in str(e.value)
    ckpt = open_checkpoint(tmp_path / "a.pt", options=ReadOptions(allow_globals=[name]))
    assert torch.equal(ckpt.tensor("4.weight"), state["4.weight"])
    out = tmp_path / "o.safetensors"
    result = run_wa(["average", tmp_path / "a.pt", "--allow-global", name, "-o", out], capsys)
    assert result.code == 0, result.stderr


def test_stride_zero_tensor_is_refused_without_allocating(tmp_path):
    path = tmp_path / "bomb.pt"
    torch.save({"ok": torch.ones(2), "bomb": torch.ones(1).expand(2**30)}, path)
    assert path.stat().st_size < 4096
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WaError, match=r"tensor 'bomb' .* strides \(0,\)"):
        open_checkpoint(path)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 256 * 1024  # far from the 4 GB a materialized copy takes


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (torch.eye(3).to_sparse(), "sparse_coo tensor"),
        (torch.eye(3).to_sparse_csr(), "sparse_csr tensor"),
        (torch.empty(3, device="meta"), "meta tensor"),
        (torch.arange(10.0).as_strided((4, 4), (1, 1)), "share memory"),
    ],
)
def test_unreadable_tensors_are_refused_naming_the_key(tmp_path, capsys, value, fragment):
    torch.save({"fine": torch.ones(2), "odd": value}, tmp_path / "a.pt")
    with pytest.raises(WaError, match=rf"tensor 'odd' .*{fragment}.*exclude|{fragment}"):
        open_checkpoint(tmp_path / "a.pt")
    result = run_wa(["average", tmp_path / "a.pt", "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(result, 3, "'odd'", fragment)
    # Left out, the rest averages.
    ckpt = open_checkpoint(tmp_path / "a.pt", options=ReadOptions(exclude=["^odd$"]))
    assert ckpt.keys() == ["fine"]


def test_metadata_key_and_non_string_keys_are_refused(tmp_path):
    torch.save({"__metadata__": torch.ones(1), "w": torch.ones(1)}, tmp_path / "m.pt")
    with pytest.raises(WaError, match="'__metadata__'.*reserves"):
        open_checkpoint(tmp_path / "m.pt")
    assert open_checkpoint(tmp_path / "m.pt", options=ReadOptions(exclude=["__meta"])).keys() == [
        "w"
    ]
    torch.save({1: torch.ones(1), "1": torch.zeros(1)}, tmp_path / "k.pt")
    with pytest.raises(WaError, match="key 1 of type int"):
        open_checkpoint(tmp_path / "k.pt")


def test_complex_key_names_the_key_and_exclude(tmp_path, capsys):
    torch.save(
        {"w": torch.ones(2), "spectrum": torch.ones(2, dtype=torch.complex64)}, tmp_path / "c.pt"
    )
    result = run_wa(["average", tmp_path / "c.pt", "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(result, 3, "'spectrum'", "complex64", "--exclude")
    out = tmp_path / "o.safetensors"
    result = run_wa(["average", tmp_path / "c.pt", "--exclude", "spectrum", "-o", out], capsys)
    assert result.code == 0, result.stderr


def test_views_read_back_exactly_and_nothing_stays_mapped(tmp_path):
    base = torch.randn(6, 8, dtype=torch.float64)
    state = {
        "t": base.t(),  # transposed: not contiguous
        "rows": base[2:5],  # a slice of a larger storage
        "cols": base[:, 1::3],
        "tied_a": base,
        "tied_b": base,  # two keys, one storage (tied weights)
        "half": torch.randn(5).half(),
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(3, dtype=torch.int64),
    }
    path = tmp_path / "views.pt"
    torch.save(state, path)
    ckpt = open_checkpoint(path)
    for key, expected in state.items():
        got = ckpt.tensor(key)
        assert got.dtype == expected.dtype and got.shape == expected.shape, key
        assert torch.equal(got, expected), key
    # Chunked reads of a strided key reassemble it.
    buf = torch.empty(state["t"].numel() * 8, dtype=torch.uint8)
    for start in range(0, buf.numel(), 40):
        part = buf[start : start + 40]
        ckpt.read_into("t", part, start)
    assert torch.equal(buf.view(torch.float64).reshape(8, 6), state["t"])
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    assert str(path) not in maps  # read with pread, not mapped
    ckpt.close()


def test_legacy_format_still_reads(tmp_path):
    state = cnn_state(1)
    torch.save({"state_dict": state}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    ckpt = open_checkpoint(tmp_path / "old.pt")
    assert all(torch.equal(ckpt.tensor(k), v) for k, v in state.items())


def test_lightning_metadata_from_callbacks(tmp_path):
    """Lightning's layout: global_step/epoch at the top, the monitored score in the callback."""
    state = {f"model.{k}": v for k, v in cnn_state(0).items()}
    ckpt_dict = {
        "epoch": 3,
        "global_step": 92,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
            "'every_n_epochs': 1, 'train_time_interval': None}": {
                "monitor": "val_loss",
                "best_model_score": torch.tensor(0.41),
                "current_score": torch.tensor(0.5529),
                "best_model_path": "/x/epoch=2.ckpt",
            }
        },
        "optimizer_states": [],
        "lr_schedulers": [],
        "hyper_parameters": {"lr": 0.01},
    }
    torch.save(ckpt_dict, tmp_path / "epoch=3-step=92-val_loss=0.5529.ckpt")
    ckpt = open_checkpoint(tmp_path / "epoch=3-step=92-val_loss=0.5529.ckpt")
    assert ckpt.metadata["global_step"] == "92" and ckpt.metadata["epoch"] == "3"
    assert float(ckpt.metadata["val_loss"]) == pytest.approx(0.5529)
    assert set(ckpt.keys()) == set(state)


def test_fairseq_checkpoint_layouts(tmp_path):
    """fairseq's checkpoint_utils.save_state: 'model' beside 'args' (a Namespace, older
    versions) or 'cfg' (a plain dict since its OmegaConf configs), optimizer history and
    extra_state."""
    state = cnn_state(3)
    common = {
        "model": state,
        "optimizer_history": [
            {"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
             "lr_scheduler_state": {"best": 2.1}, "num_updates": 1200}
        ],
        "extra_state": {"epoch": 4, "val_loss": 2.1, "train_iterator": {"epoch": 4}},
        "last_optimizer_key": "FairseqAdam",
    }  # fmt: skip
    torch.save(
        {**common, "args": argparse.Namespace(arch="transformer", lr=[0.0005])}, tmp_path / "old.pt"
    )
    torch.save({**common, "args": None, "cfg": {"common": {"seed": 1}}}, tmp_path / "new.pt")
    for name in ("old.pt", "new.pt"):
        ckpt = open_checkpoint(tmp_path / name)
        assert all(torch.equal(ckpt.tensor(k), v) for k, v in state.items()), name


def test_omegaconf_config_stays_refused_by_default(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"lr": 0.1})
    torch.save({"state_dict": cnn_state(0), "cfg": cfg}, tmp_path / "hydra.pt")
    with pytest.raises(WaError, match="omegaconf"):
        open_checkpoint(tmp_path / "hydra.pt")
