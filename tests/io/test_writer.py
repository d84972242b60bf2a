"""The streaming writer: exact round trips, shards, atomicity, overwrite safety."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.writer import (
    OutputTensor,
    WriteSettings,
    parse_size,
    write_safetensors,
    write_state_dict,
)

ROUND_TRIP = {
    "f32": torch.randn(7, 3),
    "f16": torch.randn(5).half(),
    "bf16": torch.randn(4, 4).bfloat16(),
    "f64": torch.randn(3, dtype=torch.float64),
    "i64": torch.arange(6).reshape(2, 3),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(3.5),
    "empty": torch.empty(0, 4),
}


def test_round_trip_is_bit_exact_for_every_dtype(tmp_path):
    out = tmp_path / "o.safetensors"
    write_state_dict(ROUND_TRIP, out, {"format": "pt", "note": "x"})
    loaded = load_file(out)
    assert set(loaded) == set(ROUND_TRIP)
    for k, v in ROUND_TRIP.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        assert torch.equal(loaded[k], v), k
    with safe_open(out, "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "x"}


def test_chunks_stream_into_one_tensor(tmp_path):
    t = torch.randn(10, 10)
    chunks = [("t", t.reshape(-1)[i : i + 7]) for i in range(0, 100, 7)]
    write_safetensors(
        tmp_path / "o.safetensors", [OutputTensor("t", t.dtype, (10, 10))], chunks, {}
    )
    assert torch.equal(load_file(tmp_path / "o.safetensors")["t"], t)


def test_shards_and_index(tmp_path):
    state = {f"w{i}": torch.full((250,), float(i)) for i in range(5)}  # 1000 bytes each
    files = write_state_dict(state, tmp_path / "out", {"format": "pt"}, max_shard_size=2500)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert index["metadata"]["total_size"] == 5000
    assert len(files) == 4
    for k, v in state.items():
        assert torch.equal(load_file(tmp_path / "out" / index["weight_map"][k])[k], v)


def test_existing_output_needs_force_and_force_replaces(tmp_path):
    out = tmp_path / "o.safetensors"
    save_file({"a": torch.zeros(1)}, out)
    old = out.read_bytes()
    with pytest.raises(WaError, match="already exists"):
        write_state_dict({"a": torch.ones(1)}, out)
    assert out.read_bytes() == old
    write_state_dict({"a": torch.ones(1)}, out, force=True)
    assert torch.equal(load_file(out)["a"], torch.ones(1))


def test_error_mid_write_leaves_no_output_and_no_temporary(tmp_path):
    out = tmp_path / "o.safetensors"
    save_file({"a": torch.zeros(1)}, out)
    previous = out.read_bytes()

    def failing():
        yield "a", torch.ones(100)
        raise RuntimeError("disk on fire")

    specs = [OutputTensor("a", torch.float32, (100,)), OutputTensor("b", torch.float32, (100,))]
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_safetensors(out, specs, failing(), {}, WriteSettings(force=True))
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors"]


def test_interrupt_mid_shards_leaves_nothing(tmp_path):
    def interrupted():
        yield "a", torch.ones(300)
        raise KeyboardInterrupt

    specs = [OutputTensor(k, torch.float32, (300,)) for k in "ab"]
    with pytest.raises(KeyboardInterrupt):
        write_safetensors(
            tmp_path / "out", specs, interrupted(), {}, WriteSettings(max_shard_size=1000)
        )
    assert list(tmp_path.iterdir()) == []


def test_producer_stopping_early_is_a_bug_not_a_partial_file(tmp_path):
    specs = [OutputTensor("a", torch.float32, (4,))]
    with pytest.raises(RuntimeError, match="expected data"):
        write_safetensors(tmp_path / "o.safetensors", specs, iter([]), {})
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder_is_a_clear_error(tmp_path):
    with pytest.raises(WaError, match="does not exist"):
        write_state_dict({"a": torch.ones(1)}, tmp_path / "nope" / "o.safetensors")


@pytest.mark.parametrize("text, expected", [("5GB", 5 * 10**9), ("2GiB", 2 * 2**30), ("100", 100)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_rejects_nonsense():
    with pytest.raises(WaError, match="cannot read size"):
        parse_size("lots")


@pytest.mark.parametrize("text", ["inf", "nan", "-inf", "1e400", "1e300TB", "0.5", "0", "-3MB"])
def test_parse_size_rejects_non_finite_and_sub_byte_sizes(text):
    with pytest.raises(WaError, match="at least 1 byte") as e:
        parse_size(text)
    assert e.value.code == ExitCode.USAGE


@pytest.mark.parametrize("text, expected", [("1.5", 1), ("0.5KB", 500), ("1e3", 1000)])
def test_parse_size_accepts_fractions_that_come_to_whole_bytes(text, expected):
    assert parse_size(text) == expected


def test_force_never_replaces_a_folder_holding_other_files(tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    (out / "other.txt").write_text("x")
    (out / "old.safetensors").write_bytes(b"shard")
    with pytest.raises(WaError, match="other.txt") as e:
        write_state_dict({"a": torch.ones(300)}, out, force=True, max_shard_size=1000)
    assert e.value.code == ExitCode.OUTPUT
    assert "\n" not in e.value.message
    assert (out / "other.txt").read_text() == "x"
    assert (out / "old.safetensors").read_bytes() == b"shard"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_force_refuses_a_folder_with_a_subfolder(tmp_path):
    out = tmp_path / "models"
    (out / "sub").mkdir(parents=True)
    with pytest.raises(WaError, match="'sub'"):
        write_state_dict({"a": torch.ones(3)}, out, force=True, max_shard_size=1000)
    assert (out / "sub").is_dir()


def test_force_replaces_a_folder_of_shards_and_index(tmp_path):
    out = tmp_path / "models"
    write_state_dict({"a": torch.ones(300), "b": torch.zeros(300)}, out, max_shard_size=1000)
    assert len(list(out.glob("*.safetensors"))) == 2
    write_state_dict({"c": torch.full((3,), 2.0)}, out, force=True, max_shard_size=1000)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["model-00001-of-00001.safetensors", "model.safetensors.index.json"]
    assert torch.equal(load_file(out / names[0])["c"], torch.full((3,), 2.0))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".PT"])
def test_single_file_output_with_a_pickle_suffix_is_refused(tmp_path, suffix):
    out = tmp_path / f"avg{suffix}"
    with pytest.raises(WaError, match="wa writes safetensors") as e:
        write_state_dict({"a": torch.ones(1)}, out)
    assert e.value.code == ExitCode.USAGE
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["avg", "avg.st", "avg.safetensors"])
def test_single_file_output_with_another_suffix_is_written(tmp_path, name):
    write_state_dict({"a": torch.ones(2)}, tmp_path / name)
    assert torch.equal(load_file(tmp_path / name)["a"], torch.ones(2))


def _specs(state):
    return [OutputTensor(k, v.dtype, tuple(v.shape)) for k, v in state.items()]


@pytest.mark.parametrize("max_shard_size", [None, 2500], ids=["one file", "shards"])
def test_a_chunk_may_run_on_into_the_next_tensors(tmp_path, max_shard_size):
    """The engine sends a span of small keys as one chunk named by its first key; the bytes are
    laid out as the per-key chunks would be, across shard boundaries too (oracle: save_file's
    layout read back by the library)."""
    state = {f"w{i}": torch.arange(250, dtype=torch.float32) + i for i in range(5)}
    state["e"] = torch.empty(0, 3)
    state["w5"] = torch.randn(10)
    flat = torch.cat([v.reshape(-1) for v in state.values()])
    # One span over w0..w2 (3000 bytes: past the first shard's end), then w3..w5 key by key.
    chunks = [("w0", flat[:750]), ("w3", state["w3"]), ("w4", state["w4"]), ("w5", state["w5"])]
    out = tmp_path / "o"
    write_safetensors(out, _specs(state), chunks, {}, WriteSettings(max_shard_size=max_shard_size))
    files = [out] if max_shard_size is None else sorted(out.glob("*.safetensors"))
    loaded = {k: v for f in files for k, v in load_file(f).items()}
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k


def test_a_span_past_the_last_tensor_or_named_wrongly_is_a_bug(tmp_path):
    state = {"a": torch.ones(4), "b": torch.ones(4)}
    too_long = [("a", torch.ones(9))]
    with pytest.raises(RuntimeError, match="after the last tensor"):
        write_safetensors(tmp_path / "o.safetensors", _specs(state), too_long, {})
    misnamed = [("b", torch.ones(8))]
    with pytest.raises(RuntimeError, match="expected data for 'a', got 'b'"):
        write_safetensors(tmp_path / "o.safetensors", _specs(state), misnamed, {})
    assert list(tmp_path.iterdir()) == []


def test_the_header_is_json_dumps_byte_for_byte():
    """Oracle: the header as json.dumps writes the same entries (names escaped the same way)."""
    import math
    import struct

    from wa_cli.io.dtypes import safetensors_name
    from wa_cli.io.safetensors_header import build_header

    specs = [
        ('caf\u00e9."quoted"\\name', torch.float32, (2, 3)),
        ("scalar", torch.bfloat16, ()),
        ("empty", torch.int64, (0, 4)),
        ("again", torch.float32, (2, 3)),  # a (dtype, shape) seen before
        ("\u4e2d\u6587", torch.float16, (5,)),
    ]
    metadata = {"format": "pt", "note": "\u00fcber"}
    header, sizes = build_header(specs, metadata)
    entries: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for key, dtype, shape in specs:
        nbytes = math.prod(shape) * dtype.itemsize
        entries[key] = {
            "dtype": safetensors_name(dtype), "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }  # fmt: skip
        offset += nbytes
    (n,) = struct.unpack("<Q", header[:8])
    assert header[8 : 8 + n].rstrip(b" ") == json.dumps(entries, separators=(",", ":")).encode()
    assert (8 + n) % 8 == 0 and sizes == [24, 2, 0, 24, 10]
    with pytest.raises(ValueError, match="appears twice"):
        build_header([("a", torch.float32, (1,)), ("a", torch.float32, (1,))], {})
