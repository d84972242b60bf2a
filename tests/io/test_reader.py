"""Readers: every input form opens lazily and returns the saved tensors exactly."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import make_trajectory
from wa_cli.errors import ExitCode, WaError
from wa_cli.io.reader import open_checkpoint


@pytest.mark.parametrize("form", ["file", "sharded", "pt"])
def test_every_form_reads_back_exactly(tmp_path, form):
    traj = make_trajectory(tmp_path, n=1, form=form)
    ckpt = open_checkpoint(traj.paths[0])
    assert set(ckpt.keys()) == set(traj.states[0])
    for key, expected in traj.states[0].items():
        got = ckpt.tensor(key)
        assert got.dtype == expected.dtype and torch.equal(got, expected), key


def test_index_json_opens_like_its_folder(tmp_path):
    traj = make_trajectory(tmp_path, n=1, form="sharded")
    index = traj.paths[0] / "model.safetensors.index.json"
    ckpt = open_checkpoint(index)
    assert torch.equal(ckpt.tensor("4.weight"), traj.states[0]["4.weight"])


def test_chunked_reads_reassemble_the_tensor(tmp_path):
    t = torch.randn(1000, dtype=torch.float64)
    save_file({"t": t}, tmp_path / "a.safetensors")
    ckpt = open_checkpoint(tmp_path / "a.safetensors")
    parts = []
    for start in range(0, 8000, 3000):
        buf = torch.empty(min(3000, 8000 - start), dtype=torch.uint8)
        ckpt.read_into("t", buf, start)
        parts.append(buf)
    assert torch.equal(torch.cat(parts).view(torch.float64), t)


def test_metadata_and_pickle_step(tmp_path):
    traj = make_trajectory(tmp_path / "s", n=1, form="file")
    assert open_checkpoint(traj.paths[0]).metadata["step"] == "100"
    pt = make_trajectory(tmp_path / "p", n=2, form="pt")
    assert open_checkpoint(pt.paths[1]).metadata["epoch"] == "1"


def test_pickle_key_order_is_known_and_prefixes_strip(tmp_path):
    state = {"module._orig_mod.conv.weight": torch.ones(2), "module.fc.bias": torch.zeros(1)}
    torch.save({"model": state}, tmp_path / "a.pt")
    ckpt = open_checkpoint(tmp_path / "a.pt", strip_prefixes=True)
    assert ckpt.keys() == ["conv.weight", "fc.bias"]
    assert ckpt.key_order_known
    assert torch.equal(ckpt.tensor("conv.weight"), torch.ones(2))


def test_pickle_explicit_key_and_ambiguity(tmp_path):
    a, b = {"w": torch.ones(1)}, {"w": torch.zeros(1)}
    torch.save({"model": a, "state_dict_ema": b}, tmp_path / "a.pt")
    with pytest.raises(WaError, match="several state dicts"):
        open_checkpoint(tmp_path / "a.pt")
    assert torch.equal(open_checkpoint(tmp_path / "a.pt", key="state_dict_ema").tensor("w"), b["w"])
    with pytest.raises(WaError, match="no entry 'nope'"):
        open_checkpoint(tmp_path / "a.pt", key="nope")


class Unsafe:
    pass


def test_pickle_needing_unsafe_globals_names_them(tmp_path):
    torch.save({"w": torch.ones(1), "obj": Unsafe()}, tmp_path / "a.pt")
    with pytest.raises(WaError, match="Unsafe") as e:
        open_checkpoint(tmp_path / "a.pt")
    assert e.value.code == ExitCode.BAD_INPUT


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "too short"),
        (b"not a safetensors file at all", "does not fit"),
        (struct.pack("<Q", 5) + b"{bad}", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_corrupt_headers_are_one_clear_error(tmp_path, content, fragment):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(WaError, match=fragment) as e:
        open_checkpoint(p)
    assert e.value.code == ExitCode.BAD_INPUT


def test_truncated_file_is_detected_from_the_header(tmp_path):
    p = tmp_path / "t.safetensors"
    save_file({"w": torch.randn(100)}, p)
    data = p.read_bytes()
    p.write_bytes(data[:-10])
    with pytest.raises(WaError, match="truncated"):
        open_checkpoint(p)


def test_unknown_extension_and_missing_path(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(WaError, match="not a checkpoint wa can read"):
        open_checkpoint(tmp_path / "x.txt")
    with pytest.raises(WaError, match="does not exist"):
        open_checkpoint(tmp_path / "missing.safetensors")


def test_sharded_reads_keep_few_files_open(tmp_path, monkeypatch):
    import os

    import wa_cli.io.reader as reader

    state = {f"w{i}": torch.full((3,), float(i)) for i in range(12)}
    folder = tmp_path / "ck"
    folder.mkdir()
    weight_map = {}
    for i, (k, v) in enumerate(state.items()):  # one shard per tensor
        save_file({k: v}, folder / f"s{i}.safetensors")
        weight_map[k] = f"s{i}.safetensors"
    import json

    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    monkeypatch.setattr(reader, "MAX_OPEN_SHARDS", 2)
    ckpt = open_checkpoint(folder)
    before = len(os.listdir("/proc/self/fd"))
    for k, v in state.items():
        assert torch.equal(ckpt.tensor(k), v)
    assert len(os.listdir("/proc/self/fd")) - before <= 2
    ckpt.close()
    assert (
        len(os.listdir("/proc/self/fd")) <= before
    )  # files other tests left open may be closed by the LRU too


def test_strip_prefix_on_a_shard_holding_a_key_its_index_does_not_list(tmp_path):
    import json

    folder = tmp_path / "ck"
    folder.mkdir()
    save_file({"module.a": torch.ones(2), "module.extra": torch.zeros(1)}, folder / "s.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"module.a": "s.safetensors"}})
    )
    ckpt = open_checkpoint(folder, strip_prefixes=True)
    assert ckpt.keys() == ["a"]
    assert torch.equal(ckpt.tensor("a"), torch.ones(2))


def test_pickle_with_an_unsupported_dtype_fails_at_open(tmp_path):
    torch.save({"w": torch.ones(2), "z": torch.ones(2, dtype=torch.complex64)}, tmp_path / "c.pt")
    with pytest.raises(WaError, match="complex64") as e:
        open_checkpoint(tmp_path / "c.pt")
    assert e.value.code == ExitCode.BAD_INPUT


def test_pickle_entries_that_are_not_tensors_are_listed(tmp_path):
    torch.save({"w": torch.ones(2), "nested": {"x": torch.ones(1)}, "n": 3}, tmp_path / "c.pt")
    assert sorted(open_checkpoint(tmp_path / "c.pt").skipped) == ["n", "nested"]
