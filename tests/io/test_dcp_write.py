"""``-o DIR --format dcp`` (issue 20 item 3): the result as a DCP folder written by torch's own
``FileSystemWriter``; ``dcp.load`` into the model's state dict gives the safetensors output's
values bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import assert_one_line_error, run_wa
from tests.io.test_dcp_app_states import save_app_states, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
import torch.distributed.checkpoint as dcp  # noqa: E402


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("command", [["average"], ["ema", "--half-life", "1"]])
def test_dcp_output_loads_with_dcp_load_equal_to_safetensors(tmp_path, capsys, command):
    save_app_states(tmp_path / "run")
    st, folder = tmp_path / "avg.safetensors", tmp_path / "avg_dcp"
    r = run_wa([*command, tmp_path / "run", "-o", st], capsys)
    assert r.code == 0, r.stderr
    r = run_wa([*command, tmp_path / "run", "-o", folder, "--format", "dcp"], capsys)
    assert r.code == 0, r.stderr
    assert (folder / ".metadata").is_file() and not list(tmp_path.glob(".*wa-tmp*"))
    assert not list(folder.glob("*.safetensors"))  # the staging file is gone
    model = tiny_model()
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    dcp.load(state, checkpoint_id=str(folder), no_dist=True)
    want = load_file(st)
    assert set(state) == set(want)
    for key in want:
        assert state[key].dtype == want[key].dtype and torch.equal(
            _bits(state[key]), _bits(want[key])
        )
    model.load_state_dict(state, strict=True)
    # and wa reads its own DCP output back
    again = tmp_path / "again.safetensors"
    r = run_wa(["average", folder, "-o", again], capsys)
    assert r.code == 0, r.stderr
    assert all(torch.equal(_bits(load_file(again)[k]), _bits(want[k])) for k in want)


def test_dcp_output_is_atomic_and_needs_force(tmp_path, capsys):
    save_app_states(tmp_path / "run", 2)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    r = run_wa(["average", tmp_path / "run", "-o", folder, "--format", "dcp"], capsys)
    assert_one_line_error(r, 5)
    assert (folder / "keep.txt").read_text() == "mine"
    r = run_wa(["average", tmp_path / "run", "-o", tmp_path / "x.safetensors", "--format", "dcp"],
               capsys)  # fmt: skip
    assert_one_line_error(r, 2, "--format dcp writes a folder")
    r = run_wa(
        ["average", tmp_path / "run", "-o", tmp_path / "y", "--format", "dcp",
         "--max-shard-size", "1GB"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(r, 2, "--format")
    assert not (tmp_path / "y").exists() and not list(tmp_path.glob(".*wa-tmp*"))
