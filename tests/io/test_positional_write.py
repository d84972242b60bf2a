"""One safetensors file filled by offset from several writers (torchrun's single-file output).

The bytes are checked two ways: safetensors' own ``load_file`` reads back every tensor and the
metadata exactly (the independent oracle), and the file equals, byte for byte, what the
one-process writer makes of the same tensors (the layout the torchrun path promises).
"""

from __future__ import annotations

import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import wa_cli.io.positional_write as pw
from wa_cli.io.safetensors_header import build_header
from wa_cli.io.writer import write_state_dict

TENSORS = {
    "a": torch.randn(7, 3),
    "b": torch.randn(5).half(),
    "c": torch.arange(12, dtype=torch.int64),
    "d": torch.randn(4, 4).bfloat16(),
}
META = {"format": "pt", "note": "positional"}


def _layout() -> tuple[bytes, list[int], dict[str, int]]:
    header, sizes = build_header([(k, v.dtype, tuple(v.shape)) for k, v in TENSORS.items()], META)
    return header, sizes, pw.tensor_offsets(header, list(TENSORS), sizes)


def _chunks(keys: list[str]):
    """Each tensor in two chunks, as the engine yields a tensor split into chunk_elements."""
    for k in keys:
        flat = TENSORS[k].reshape(-1)
        half = flat.numel() // 2
        yield k, flat[:half]
        yield k, flat[half:]


def _check(path) -> None:
    loaded = load_file(path)
    assert set(loaded) == set(TENSORS)
    for k, v in TENSORS.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    with safe_open(path, "pt") as f:
        assert f.metadata() == META


def test_two_writers_in_any_order_fill_the_file_exactly(tmp_path):
    header, sizes, offsets = _layout()
    out = tmp_path / "o.safetensors"
    pw.preallocate(out, header, sum(sizes))
    assert out.stat().st_size == len(header) + sum(sizes)
    # "rank 1" writes first, the tensors of each writer not contiguous in the file.
    pw.write_at(out, offsets, _chunks(["b", "d"]))
    pw.write_at(out, offsets, _chunks(["a", "c"]))
    _check(out)
    one = tmp_path / "one.safetensors"
    write_state_dict(TENSORS, one, META)
    assert out.read_bytes() == one.read_bytes()


def test_short_pwrites_are_continued_and_the_file_is_fsynced(tmp_path, monkeypatch):
    header, sizes, offsets = _layout()
    out = tmp_path / "o.safetensors"
    pw.preallocate(out, header, sum(sizes))
    real_pwrite, synced = os.pwrite, []

    def short_pwrite(fd, data, pos):  # a filesystem that takes at most 5 bytes per call
        return real_pwrite(fd, bytes(data[:5]), pos)

    monkeypatch.setattr(pw.os, "pwrite", short_pwrite)
    monkeypatch.setattr(pw.os, "fsync", lambda fd: synced.append(fd))
    pw.write_at(out, offsets, _chunks(list(TENSORS)))
    assert len(synced) == 1
    _check(out)
