"""Hand-made DCP ``.metadata`` files (issue 22 items 12 and 13): one line and exit 3, never a
traceback, a ``MemoryError`` or a read that blocks for ever.

Each case starts from a real ``dcp.save`` folder, loads its metadata with plain ``pickle`` (the
test trusts it), breaks one field the way a hostile or corrupt file could, and pickles it back:
the unpickler admits DCP's classes, and a pickle sets their attributes to anything.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import assert_one_line_error, run_wa, run_wa_process

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.metadata import (  # noqa: E402
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
)


def saved(folder: Path) -> Any:
    dcp.save({"w": torch.arange(12.0).reshape(3, 4), "step": 7}, checkpoint_id=str(folder))
    with (folder / ".metadata").open("rb") as f:
        return pickle.load(f)


def write(folder: Path, md: Any) -> None:
    with (folder / ".metadata").open("wb") as f:
        pickle.dump(md, f)


def _no_fields(md: Metadata) -> Any:
    blank = object.__new__(Metadata)
    return blank


def _size_text(md: Metadata) -> Any:
    md.state_dict_metadata["w"].size = "abc"
    return md


def _huge_size(md: Metadata) -> Any:
    item = md.state_dict_metadata["w"]
    item.size = torch.Size([10**12, 10**12])
    old = item.chunks[0]
    item.chunks = [ChunkStorageMetadata(old.offsets, torch.Size([10**12, 10**12]))]
    return md


def _chunks_int(md: Metadata) -> Any:
    md.state_dict_metadata["w"].chunks = 5
    return md


def _storage_key_text(md: Metadata) -> Any:
    md.storage_data = {"w": next(iter(md.storage_data.values()))}
    return md


def _no_properties(md: Metadata) -> Any:
    del md.state_dict_metadata["w"].properties
    return md


def _missing_storage(md: Metadata) -> Any:
    md.storage_data = {k: v for k, v in md.storage_data.items() if k.fqn != "w"}
    return md


def _path_outside(md: Metadata) -> Any:
    md.storage_data[MetadataIndex("w", (0, 0))].relative_path = "../../etc/passwd"
    return md


def _past_the_end(md: Metadata) -> Any:
    md.storage_data[MetadataIndex("w", (0, 0))].offset = 10**15
    return md


def _entry_wrong_class(md: Metadata) -> Any:
    md.state_dict_metadata["w"] = md.storage_data[MetadataIndex("w", (0, 0))]
    return md


def _key_not_text(md: Metadata) -> Any:
    md.state_dict_metadata[5] = md.state_dict_metadata.pop("w")
    return md


BREAKS = [
    (_no_fields, "state_dict_metadata"),
    (_size_text, "size"),
    (_huge_size, "does not fit"),
    (_chunks_int, "chunks"),
    (_storage_key_text, "MetadataIndex"),
    (_no_properties, "dtype"),
    (_missing_storage, "no storage entry"),
    (_path_outside, "not a file of its folder"),
    (_past_the_end, "truncated"),
    (_entry_wrong_class, "_StorageInfo"),
    (_key_not_text, "key"),
]


@pytest.mark.parametrize(("breaks", "fragment"), BREAKS, ids=[b.__name__ for b, _ in BREAKS])
def test_hand_made_metadata_is_one_line(tmp_path, capsys, breaks, fragment):
    folder = tmp_path / "d"
    write(folder, breaks(saved(folder)))
    out = tmp_path / "o.safetensors"
    r = run_wa(["average", folder, "-o", out], capsys)
    assert_one_line_error(r, 3, fragment)
    assert not out.exists()
    r = run_wa(["inspect-entropy", folder], capsys)
    assert_one_line_error(r, 3)


def test_metadata_that_is_not_a_pickle(tmp_path, capsys):
    folder = tmp_path / "d"
    saved(folder)
    (folder / ".metadata").write_bytes(b"\x80\x05garbage")
    assert_one_line_error(run_wa(["average", folder, "-o", tmp_path / "o"], capsys), 3)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_storage_path_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    """Before: the open of the FIFO waited for a writer for ever."""
    folder = tmp_path / "d"
    md = saved(folder)
    os.mkfifo(folder / "pipe.distcp")
    md.storage_data[MetadataIndex("w", (0, 0))].relative_path = "pipe.distcp"
    write(folder, md)
    r = run_wa_process(["average", folder, "-o", tmp_path / "o.safetensors"], timeout=120)
    assert_one_line_error(r, 3, "FIFO")


def test_flipped_bytes_in_metadata_give_one_line_errors(tmp_path):
    """300 seeded corruptions of a real ``.metadata`` (bytes replaced, the file cut short): each
    is read or refused with a one-line ``WaError``, never another exception."""
    import random
    import shutil

    from wa_cli.errors import WaError
    from wa_cli.io.reader import open_checkpoint

    base = tmp_path / "base"
    dcp.save(
        {"model": {"w": torch.randn(6, 4), "b": torch.randn(3).half()}, "step": 5},
        checkpoint_id=str(base),
        no_dist=True,
    )
    raw = (base / ".metadata").read_bytes()
    rng = random.Random(0)
    for _ in range(300):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        folder = tmp_path / "t"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(base, folder)
        (folder / ".metadata").write_bytes(bytes(data))
        try:
            ckpt = open_checkpoint(folder)
            for key in ckpt.keys():
                ckpt.tensor(key)
            ckpt.close()
        except WaError as e:
            assert "\n" not in str(e), str(e)
