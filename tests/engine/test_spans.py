"""Coalesced spans: runs of small keys read and reduced as one span give byte-identical output.

The oracle is the per-key path itself run with coalescing switched off, plus a float64 mean; the
layouts mix dtypes, non-float keys, large (chunked) keys, offsets that differ between inputs,
shards and a pickle, so both paths run side by side within one output.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import save_sharded
from wa_cli.engine import reducers
from wa_cli.io.checkpoint import Checkpoint
from wa_cli.methods.average import average_to_file


def state(seed: int, extra: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for i in range(40):
        dtype = torch.bfloat16 if i % 7 else torch.float32  # dtype runs of different lengths
        out[f"layer.{i:02d}.w"] = torch.randn(3 + i % 5, 16, generator=g).to(dtype)
        if i % 9 == 0:
            out[f"layer.{i:02d}.steps"] = torch.tensor(seed * 10 + i)  # non-float in between
    out["big.w"] = torch.randn(3000, generator=g).bfloat16()  # larger than a chunk below
    out["empty.w"] = torch.empty(0, 4).bfloat16()
    if extra:  # another tensor in one input only: that input's offsets differ from the others'
        out["layer.05.v"] = torch.randn(9, generator=g).bfloat16()
    return out


def write_inputs(tmp_path) -> list:
    paths = []
    for i in range(3):
        p = tmp_path / f"in{i}.safetensors"
        save_file(state(i, extra=i == 1), p)
        paths.append(p)
    save_sharded(state(3), tmp_path / "sharded", {"format": "pt"})
    paths.append(tmp_path / "sharded")
    pt = tmp_path / "in4.pt"
    torch.save(state(4), pt)
    paths.append(pt)
    return paths


@pytest.mark.parametrize(
    "weights", [[1.0] * 5, [1.0, 2.0, 0.5, 3.0, 0.0]], ids=["with a pickle", "pickle weight 0"]
)
def test_spans_and_the_per_key_path_write_the_same_bytes(tmp_path, monkeypatch, weights):
    paths = write_inputs(tmp_path)
    monkeypatch.setattr(reducers, "DEFAULT_CHUNK_ELEMENTS", 1000)  # spans of up to 1000 elements
    reads = {"span": 0, "key": 0}
    original_span, original_into = Checkpoint.read_span, Checkpoint.read_into

    def count(kind, original):
        def wrapped(self, *args, **kwargs):
            reads[kind] += 1
            return original(self, *args, **kwargs)

        return wrapped

    from wa_cli.io.reader import SafetensorsFile

    monkeypatch.setattr(SafetensorsFile, "read_span", count("span", SafetensorsFile.read_span))
    kwargs = {"weights": weights, "keys": "intersection"}
    average_to_file(paths, tmp_path / "spans.safetensors", **kwargs)
    # A pickle's storages never lie back to back: with it in the sum, every key is read alone.
    assert (reads["span"] > 0) == (weights[-1] == 0)
    spans_read = reads["span"]
    monkeypatch.setattr(reducers, "coalesce", lambda tasks, plan, limit: tasks)
    average_to_file(paths, tmp_path / "keys.safetensors", **kwargs)
    assert reads["span"] == spans_read  # the second run read key by key
    a = (tmp_path / "spans.safetensors").read_bytes()
    b = (tmp_path / "keys.safetensors").read_bytes()
    assert a == b
    assert Checkpoint.read_span is original_span and Checkpoint.read_into is original_into

    # And both are the mean (float64 oracle, rounded once to each key's dtype).
    w = weights
    states = [state(i, extra=i == 1) for i in range(5)]
    out = load_file(tmp_path / "spans.safetensors")
    for key, value in out.items():
        if not value.is_floating_point() or value.numel() == 0:
            continue
        exact = sum(wi * s[key].double() for wi, s in zip(w, states)) / sum(w)
        torch.testing.assert_close(value.double(), exact.to(value.dtype).double(), rtol=0, atol=0)


def test_spans_cover_many_small_keys_with_few_reads(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(2):
        p = tmp_path / f"s{i}.safetensors"
        save_file({f"t.{k:04d}": torch.randn(64, generator=g).bfloat16() for k in range(500)}, p)
        paths.append(p)
    calls = []
    from wa_cli.io.reader import SafetensorsFile

    original = SafetensorsFile.read_span
    monkeypatch.setattr(
        SafetensorsFile, "read_span", lambda self, k, out: (calls.append(k), original(self, k, out))
    )
    average_to_file(paths, tmp_path / "out.safetensors")
    # 500 keys x 64 elements = 32,000 elements: one span per input.
    assert len(calls) == 2
    out = load_file(tmp_path / "out.safetensors")
    ins = [load_file(p) for p in paths]
    for key, value in out.items():
        exact = (ins[0][key].double() + ins[1][key].double()) / 2
        assert torch.equal(value, exact.bfloat16())


def test_a_span_written_across_output_shards_matches_the_per_key_path(tmp_path, monkeypatch):
    """A span is sent to the writer as one chunk; shard boundaries fall inside it."""
    g = torch.Generator().manual_seed(1)
    paths = []
    for i in range(3):
        p = tmp_path / f"s{i}.safetensors"
        save_file({f"t.{k:03d}": torch.randn(100, generator=g) for k in range(60)}, p)
        paths.append(p)
    average_to_file(paths, tmp_path / "spans", max_shard_size=7000)  # 400-byte keys, 17 a shard
    monkeypatch.setattr(reducers, "coalesce", lambda tasks, plan, limit: tasks)
    average_to_file(paths, tmp_path / "keys", max_shard_size=7000)
    shards = sorted(p.name for p in (tmp_path / "spans").iterdir())
    assert len(shards) == 5 and shards == sorted(p.name for p in (tmp_path / "keys").iterdir())
    for name in shards:
        assert (tmp_path / "spans" / name).read_bytes() == (tmp_path / "keys" / name).read_bytes()
    ins = [load_file(p) for p in paths]
    for name in shards[:-1]:  # the index aside, every shard holds the float64 mean
        for key, value in load_file(tmp_path / "spans" / name).items():
            exact = sum(s[key].double() for s in ins) / 3
            assert torch.equal(value, exact.float()), key
