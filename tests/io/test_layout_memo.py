"""A run's headers list their tensors alike: each layout is validated once per command.

Oracle: the same header read without the memo (the full parse and checks) and the safetensors
library's own reads; a header that is corrupt in any way still fails as it did.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

import wa_cli.io.safetensors_header as sh
from wa_cli.engine.plan import build_plan
from wa_cli.errors import WaError
from wa_cli.io.reader import open_checkpoint, open_checkpoints
from wa_cli.io.safetensors_header import LayoutMemo, read_header


def trajectory(tmp_path, steps=("9", "1350", "123456789012")):
    """Checkpoints with one layout and metadata of different lengths (headers of other sizes)."""
    g = torch.Generator().manual_seed(0)
    paths = []
    for step in steps:
        state = {f"layer.{i}.w": torch.randn(3, 5, generator=g) for i in range(12)}
        state["steps"] = torch.tensor(int(step))
        p = tmp_path / f"ckpt_{step}.safetensors"
        save_file(state, p, metadata={"format": "pt", "step": step})
        paths.append(p)
    return paths


def test_repeated_layouts_are_parsed_once_and_read_the_same(tmp_path, monkeypatch):
    paths = trajectory(tmp_path)
    checked = []
    original = sh._tensors
    monkeypatch.setattr(sh, "_tensors", lambda *a: (checked.append(1), original(*a))[1])
    memo = LayoutMemo()
    headers = [read_header(p, memo) for p in paths]
    assert len(checked) == 1  # the first file's entries only
    starts = {h.tensors["layer.0.w"].offset for h in headers}
    assert len(starts) > 1  # the headers differ in length: offsets were moved
    for p, h in zip(paths, headers):
        full = read_header(p)  # no memo: parsed and checked in full
        assert h.tensors == full.tensors and h.metadata == full.metadata
        assert h.layout is headers[0].layout
    ckpts = open_checkpoints(paths)
    for p, c in zip(paths, ckpts):
        for key, value in load_file(p).items():
            assert torch.equal(c.tensor(key), value), key


def _with_header(path, header: dict, data: bytes) -> None:
    body = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)


def _entries():
    return {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    "metadata, data, why",
    [
        ({"step": 5}, b"\0" * 8, "__metadata__ must map strings to strings"),
        ({"step": "5"}, b"\0" * 4, "ends at byte"),  # the same entries, a truncated file
        ({"step": "5"}, b"\0" * 12, "extra bytes"),
    ],
    ids=["a number in the metadata", "truncated", "extra bytes"],
)
def test_a_second_file_with_known_entries_is_still_checked(tmp_path, metadata, data, why):
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    _with_header(good, {"__metadata__": {"step": "1"}, **_entries()}, b"\0" * 8)
    _with_header(bad, {"__metadata__": metadata, **_entries()}, data)
    memo = LayoutMemo()
    read_header(good, memo)
    with pytest.raises(WaError, match=why):
        read_header(bad, memo)
    with pytest.raises(WaError, match=why):
        read_header(bad)  # the same error without the memo


def test_nan_in_the_metadata_of_a_known_layout_is_refused(tmp_path):
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    _with_header(good, {"__metadata__": {"step": "1"}, **_entries()}, b"\0" * 8)
    entries = json.dumps(_entries(), separators=(",", ":"))[1:]
    body = ('{"__metadata__":{"step":NaN},' + entries).encode()
    bad.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 8)
    memo = LayoutMemo()
    read_header(good, memo)
    with pytest.raises(WaError, match="not a valid safetensors file"):
        read_header(bad, memo)


def test_the_layout_token_follows_renames_and_filters(tmp_path):
    paths = trajectory(tmp_path)
    a, b, c = open_checkpoints(paths)
    assert a.layout is not None and a.layout == b.layout == c.layout
    for ck in (a, b, c):
        ck.strip_prefixes(("layer.",))
    assert a.layout == b.layout == c.layout  # the same rename keeps them alike
    c.keep_keys({"0.w", "1.w"})
    assert c.layout != a.layout
    assert open_checkpoint(paths[0]).layout != a.layout  # opened apart: not known to be alike


def test_a_plan_over_one_layout_equals_the_plan_checked_input_by_input(tmp_path):
    paths = trajectory(tmp_path)
    together = open_checkpoints(paths)
    apart = [open_checkpoint(p) for p in paths]  # no shared memo: every input is checked
    fast, slow = build_plan(together), build_plan(apart)
    assert fast.same_layout and not slow.same_layout
    assert fast.keys == slow.keys and fast.notes == slow.notes


def test_headers_written_with_spaces_are_recalled_too(tmp_path, monkeypatch):
    """json.dumps' default separators (a Python writer) put spaces after colons and commas."""
    paths = []
    for step in ("1", "22"):
        p = tmp_path / f"s{step}.safetensors"
        body = json.dumps({"__metadata__": {"step": step}, **_entries()}).encode()
        body += b" " * (-(len(body) + 8) % 8)
        p.write_bytes(struct.pack("<Q", len(body)) + body + struct.pack("<2f", 1, 2))
        paths.append(p)
    checked = []
    original = sh._tensors
    monkeypatch.setattr(sh, "_tensors", lambda *a: (checked.append(1), original(*a))[1])
    memo = LayoutMemo()
    headers = [read_header(p, memo) for p in paths]
    assert len(checked) == 1 and headers[1].metadata == {"step": "22"}
    assert headers[1].tensors == read_header(paths[1]).tensors
