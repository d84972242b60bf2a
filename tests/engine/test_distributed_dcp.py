"""``-o DIR --format dcp`` under torchrun (issue 20 item 3): the ranks save one DCP checkpoint.

Each rank stages its share of the keys, then the ranks save them together with DCP's own
collective ``dcp.save``. The oracles are torch's own reader (``dcp.load``) and the
single-process outputs of the same command: the ``--format dcp`` folder and the safetensors
file, which must give the same tensors bit for bit. A rank that dies leaves nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.engine.dist_launch import launch, torchrun, wa_errors
from tests.engine.test_distributed_runs import nothing_left, reference, timeless
from tests.helpers import make_trajectory

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
import torch.distributed.checkpoint as dcp  # noqa: E402


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def dcp_tensors(folder: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``dcp.load`` (torch's reader) of ``folder`` into zeros shaped like ``like``; every key the
    folder holds must be in ``like`` and the other way round."""
    keys = set(dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    assert keys == set(like)
    state = {k: torch.zeros_like(v) for k, v in like.items()}
    dcp.load(state, checkpoint_id=str(folder), no_dist=True)
    return state


def assert_same_bits(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        assert torch.equal(_bits(got[key]), _bits(want[key])), key


def test_two_ranks_save_one_dcp_checkpoint_equal_to_one_process(tmp_path, capsys, monkeypatch):
    traj = make_trajectory(tmp_path / "in", n=3, dtype=torch.bfloat16)
    base = ["average", *map(str, traj.paths), "--weights", "1,2,3", "--json"]
    st = reference(tmp_path, [*base, "-o", "avg.safetensors"], capsys, monkeypatch)
    args = [*base, "-o", "out", "--format", "dcp"]
    (tmp_path / "one").mkdir()
    one = reference(tmp_path / "one", args, capsys, monkeypatch)
    (tmp_path / "dist").mkdir()
    results = launch(2, args, cwd=tmp_path / "dist")
    assert [r.code for r in results] == [0, 0], [r.stderr for r in results]
    assert results[1].stdout == "" and results[1].stderr == ""
    want = load_file(st / "avg.safetensors")
    out = tmp_path / "dist" / "out"
    # Each rank wrote its own share, and rank 0 (DCP's coordinator) the metadata; no staging
    # file and no temporary sibling is left.
    assert sorted(p.name for p in out.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["out"]
    assert_same_bits(dcp_tensors(out, want), want)
    assert_same_bits(dcp_tensors(one / "out", want), want)
    report = json.loads(results[0].stdout)
    assert report["outputs"] == ["out/.metadata", "out/__0_0.distcp", "out/__1_0.distcp"]
    assert all(r["bytes_read"] > 0 for r in report["ranks"])  # both ranks took a share
    one_report = json.loads((one / "stdout.txt").read_text())
    for r in (report, one_report):
        del r["outputs"]
    assert timeless(report) == timeless(one_report)


def test_a_rank_killed_mid_write_leaves_no_dcp_folder(tmp_path):
    traj = make_trajectory(tmp_path / "in", n=3)
    (tmp_path / "out").mkdir()
    args = ["average", *traj.paths, "-o", tmp_path / "out" / "merged", "--format", "dcp"]
    results = launch(2, args, env={"WA_TEST_HOOKS": "1", "WA_TEST_KILL_RANK": "1"}, timeout=90)
    assert results[1].code == -9
    assert results[0].code == 5, results[0].stderr
    (line,) = wa_errors(results[0].stderr)
    assert line.startswith("wa: error: rank 0: lost contact with the other ranks while ")
    assert "nothing was written" in line
    nothing_left(tmp_path / "out")


def test_a_dcp_output_that_names_a_file_is_refused_by_every_rank(tmp_path):
    traj = make_trajectory(tmp_path / "in", n=2)
    (tmp_path / "out").mkdir()
    args = ["average", *traj.paths, "-o", tmp_path / "out" / "m.safetensors", "--format", "dcp"]
    results = launch(2, args)
    assert [r.code for r in results] == [2, 2], [r.stderr for r in results]
    (line,) = wa_errors(results[0].stderr)
    assert "--format dcp writes a folder" in line
    assert results[1].stderr == ""
    nothing_left(tmp_path / "out")


@pytest.mark.slow
def test_torchrun_three_ranks_one_with_no_tensor(tmp_path, capsys, monkeypatch):
    """Two tensors, three ranks (the real launcher): rank 2 has no key of its own and still
    takes part in DCP's collective save; ``wa ema`` goes the same way."""
    for i in range(3):
        g = torch.Generator().manual_seed(i)
        state = {"w": torch.randn(64, 16, generator=g), "b": torch.randn(8, generator=g)}
        save_file(state, tmp_path / f"ckpt_{i}.safetensors", metadata={"step": str(i + 1)})
    inputs = [str(tmp_path / f"ckpt_{i}.safetensors") for i in range(3)]
    for command in (["average"], ["ema", "--decay", "0.5"]):
        base = [*command, *inputs, "-q"]
        name = command[0]
        (tmp_path / name).mkdir()
        st = reference(tmp_path / name, [*base, "-o", f"{name}.safetensors"], capsys, monkeypatch)
        want = load_file(st / f"{name}.safetensors")
        run_dir = tmp_path / f"dist-{name}"
        run_dir.mkdir()
        proc = torchrun(3, [*base, "-o", "out", "--format", "dcp"], cwd=run_dir)
        assert proc.returncode == 0, proc.stderr
        out = run_dir / "out"
        assert (out / ".metadata").is_file() and not list(out.glob("*.safetensors"))
        assert_same_bits(dcp_tensors(out, want), want)
        if name == "average":  # and the reference is the mean (a float64 recomputation)
            stack = [load_file(p) for p in inputs]
            for key in want:
                mean = (sum(s[key].double() for s in stack) / 3).float()
                torch.testing.assert_close(want[key], mean, rtol=1e-6, atol=1e-7)
