"""The destination guard: no command writes over a file it reads or over what wa did not write."""

from __future__ import annotations

import json
import os
import stat
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import assert_one_line_error, cnn_state, make_trajectory, run_wa, save_sharded
from tests.io.faults import snapshot, temporaries

MODEL_CODE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build():
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
            nn.Linear(4 * 5 * 5, 3),
        )

    def train_loader():
        return [torch.randn(4, 3, 5, 5) for _ in range(2)]
    """
)


def _refused(r, tmp_path, before, *fragments):
    assert_one_line_error(r, 5, *fragments)
    assert snapshot(tmp_path) == before
    assert temporaries(tmp_path) == []


def test_bn_output_over_the_model_source_is_refused_before_the_model_runs(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=1)
    code = tmp_path / "s" / "model.py"
    code.parent.mkdir()
    code.write_text(MODEL_CODE)
    before = snapshot(tmp_path)
    r = run_wa(
        ["bn-recalibrate", traj.paths[0], "--model", f"{code}:build",
         "--data", f"{code}:train_loader", "-o", code, "--force"],
        capsys,
    )  # fmt: skip
    _refused(r, tmp_path, before, "model.py")


def test_bn_output_over_the_data_file_is_refused(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=1)
    code = tmp_path / "model.py"
    code.write_text(MODEL_CODE)
    data = tmp_path / "calib.safetensors"
    save_file({"x": torch.randn(8, 3, 5, 5)}, data)
    before = snapshot(tmp_path)
    r = run_wa(
        ["bn-recalibrate", traj.paths[0], "--model", f"{code}:build", "--data", data,
         "-o", data, "--force"],
        capsys,
    )  # fmt: skip
    _refused(r, tmp_path, before, "calib.safetensors")


def test_metrics_file_as_output_is_refused(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=2)
    scores = tmp_path / "scores.csv"
    scores.write_text("file,value\nckpt_0.safetensors,0.5\nckpt_1.safetensors,0.4\n")
    before = snapshot(tmp_path)
    r = run_wa(
        [
            "average",
            *traj.paths,
            "--top-k",
            "1",
            "--mode",
            "min",
            "--metrics",
            scores,
            "-o",
            scores,
            "--force",
        ],
        capsys,
    )
    _refused(r, tmp_path, before, "scores.csv")


def test_plot_never_replaces_a_folder_of_someone_elses_shards(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    traj = make_trajectory(tmp_path / "run", n=1)
    llama = save_sharded(cnn_state(5), tmp_path / "models" / "llama", {"format": "pt"})
    before = snapshot(tmp_path)
    r = run_wa(["inspect-entropy", traj.paths[0], "--plot", llama, "--force"], capsys)
    _refused(r, tmp_path, before, "is a folder")


def test_force_never_replaces_a_shard_folder_wa_did_not_write(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=2)
    llama = save_sharded(cnn_state(5), tmp_path / "llama", {"format": "pt"})
    before = snapshot(tmp_path)
    r = run_wa(["average", *traj.paths, "-o", llama, "--force", "--max-shard-size", "2KB"], capsys)
    _refused(r, tmp_path, before, "did not write")


def test_force_replaces_a_shard_folder_wa_wrote(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=2)
    out = tmp_path / "out"
    args = ["average", *traj.paths, "-o", out, "--max-shard-size", "2KB"]
    assert run_wa(args, capsys).code == 0
    assert run_wa([*args[:-2], "--max-shard-size", "1KB", "--force"], capsys).code == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {
        p.name for p in out.iterdir() if p.suffix == ".safetensors"
    }
    assert temporaries(tmp_path) == []


def test_device_node_is_never_replaced_even_as_root(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=2)
    before = snapshot(tmp_path)
    r = run_wa(["average", *traj.paths, "-o", "/dev/null", "--force"], capsys)
    _refused(r, tmp_path, before, "character device")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_fifo_destination_is_refused(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=2)
    fifo = tmp_path / "out.safetensors"
    os.mkfifo(fifo)
    r = run_wa(["average", *traj.paths, "-o", fifo, "--force"], capsys)
    assert_one_line_error(r, 5, "FIFO")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert temporaries(tmp_path) == []


def test_output_inside_an_inputs_shard_folder_is_refused(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=2, form="sharded")
    before = snapshot(tmp_path)
    inside = traj.paths[0] / "other.safetensors.index.json"
    r = run_wa(["average", *traj.paths, "-o", inside], capsys)
    _refused(r, tmp_path, before, "shard folder")
    assert not inside.exists()


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_a_link_to_an_input_is_the_input(tmp_path, capsys, link):
    traj = make_trajectory(tmp_path / "run", n=2)
    alias = tmp_path / "alias.safetensors"
    (os.link if link == "hard" else os.symlink)(traj.paths[0], alias)
    before = snapshot(tmp_path)
    r = run_wa(["average", *traj.paths, "-o", alias, "--force"], capsys)
    _refused(r, tmp_path, before, "input")


def test_graft_output_over_an_input_shard_is_refused(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=2, form="sharded")
    shard = next(traj.paths[1].glob("*.safetensors"))
    before = snapshot(tmp_path)
    r = run_wa(["graft", *traj.paths, "-o", shard, "--force"], capsys)
    _refused(r, tmp_path, before, "input")
