"""DCP folders written by torch.distributed.checkpoint.save, in one process and in two gloo
processes (DTensor shards); the oracle is torch's own dcp_to_torch_save conversion."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import assert_one_line_error, run_wa
from wa_cli.errors import WaError
from wa_cli.io.reader import open_checkpoint
from wa_cli.select import expand_inputs

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save  # noqa: E402


def full_state(seed: int) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(6, 4, generator=g),
        "v": torch.randn(3, 8, generator=g, dtype=torch.float64),
        "r": torch.randn(5, generator=g).half(),
        "n": torch.tensor(seed, dtype=torch.int64),
        "step": 100 * (seed + 1),
        "extra": {"note": "not a tensor"},
    }


def save_one_process(folder: Path, seed: int) -> dict[str, object]:
    state = full_state(seed)
    state["t"] = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed)).t()  # a view
    dcp.save(state, checkpoint_id=str(folder))
    return state


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, folders: list[str]) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        for seed, folder in enumerate(folders):
            full = full_state(seed)
            state = {
                "w": distribute_tensor(full["w"], mesh, [Shard(0)]),  # rows per rank
                "v": distribute_tensor(full["v"], mesh, [Shard(1)]),  # columns per rank
                "r": distribute_tensor(full["r"], mesh, [Replicate()]),
                "n": full["n"],
                "step": full["step"],
            }
            dcp.save(state, checkpoint_id=folder)
    finally:
        dist.destroy_process_group()


def save_two_processes(folders: list[Path]) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(2, _free_port(), [str(f) for f in folders]), nprocs=2)


def test_one_process_folder_reads_every_tensor(tmp_path):
    state = save_one_process(tmp_path / "d", 0)
    assert (tmp_path / "d" / ".metadata").is_file()
    assert expand_inputs([tmp_path / "d"]) == [tmp_path / "d"]
    ckpt = open_checkpoint(tmp_path / "d")
    assert set(ckpt.keys()) == {"w", "v", "r", "n", "t"}
    for key in ckpt.keys():
        expected = state[key]
        assert isinstance(expected, torch.Tensor)
        got = ckpt.tensor(key)
        assert got.dtype == expected.dtype and torch.equal(got, expected), key
    assert ckpt.metadata["step"] == "100"
    assert "extra.note" in ckpt.skipped
    # chunked reads of one key
    buf = torch.empty(6 * 4 * 4, dtype=torch.uint8)
    for start in range(0, buf.numel(), 20):
        ckpt.read_into("w", buf[start : start + 20], start)
    assert torch.equal(buf.view(torch.float32).reshape(6, 4), state["w"])


def _average_equals_conversion(tmp_path: Path, folders: list[Path], capsys) -> None:
    pts = []
    for f in folders:
        pt = tmp_path / f"{f.name}.pt"
        dcp_to_torch_save(str(f), str(pt))
        pts.append(pt)
    a, b = tmp_path / "from_dcp.safetensors", tmp_path / "from_pt.safetensors"
    r = run_wa(["average", *folders, "-o", a], capsys)
    assert r.code == 0, r.stderr
    r = run_wa(["average", *pts, "-o", b], capsys)
    assert r.code == 0, r.stderr
    got, want = load_file(a), load_file(b)
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype
        assert torch.equal(
            got[key].reshape(-1).view(torch.uint8), want[key].reshape(-1).view(torch.uint8)
        ), key


def test_one_process_folders_average_like_their_torch_save_conversions(tmp_path, capsys):
    folders = [tmp_path / f"step_{i}" for i in range(2)]
    for i, f in enumerate(folders):
        save_one_process(f, i)
    _average_equals_conversion(tmp_path, folders, capsys)


def test_two_rank_sharded_folders_assemble_and_average_like_conversions(tmp_path, capsys):
    folders = [tmp_path / f"step_{i}" for i in range(2)]
    save_two_processes(folders)
    assert sorted(p.name for p in folders[0].glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    ckpt = open_checkpoint(folders[1])
    full = full_state(1)
    for key in ("w", "v", "r", "n"):
        assert torch.equal(ckpt.tensor(key), full[key]), key
    _average_equals_conversion(tmp_path, folders, capsys)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_metadata_naming_another_global_is_refused(tmp_path, capsys):
    folder = tmp_path / "d"
    save_one_process(folder, 0)
    with (folder / ".metadata").open("wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(WaError, match="not one of DCP's metadata classes"):
        open_checkpoint(folder)
    r = run_wa(["average", folder, "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(r, 3, "posix.system")
    assert not Path("pwned").exists()
