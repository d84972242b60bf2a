"""Hostile inputs: FIFOs, devices, JSON past its limits, malformed safetensors headers.

Each case: one ``wa: error:`` line, the exit code, no hang, inputs untouched, nothing written.
Malformed headers are checked against the safetensors library itself: wa refuses what it refuses.
"""

from __future__ import annotations

import json
import os
import signal
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.helpers import assert_one_line_error, make_trajectory, run_wa
from tests.io.faults import snapshot, temporaries
from wa_cli.errors import ExitCode, WaError
from wa_cli.io.safetensors_header import read_header


@pytest.fixture(autouse=True)
def no_hang():
    """A case that blocks fails after 60 s instead of hanging the suite."""

    def fail(signum, frame):
        raise TimeoutError("wa blocked on a hostile input")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _st(path, header: dict | bytes, data: bytes = b"") -> None:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)


def _library_refuses(path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                f.get_tensor(k)
    except Exception:
        return True
    return False


F32x2 = {"dtype": "F32", "shape": [2]}
MALFORMED = {
    "overlapping offsets": (
        {"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [4, 12]}},
        16,
    ),
    "a gap": (
        {"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [12, 20]}},
        20,
    ),
    "extra bytes at the end": ({"a": {**F32x2, "data_offsets": [0, 8]}}, 12),
    "offsets not starting at 0": ({"a": {**F32x2, "data_offsets": [4, 12]}}, 12),
    "a dim of 2^64": ({"a": {"dtype": "F32", "shape": [2**64], "data_offsets": [0, 0]}}, 0),
    "0 x 2^70": ({"a": {"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}}, 0),
    "a negative dim": ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8),
    "a float dim": ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, 8),
    "size not matching shape": ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_headers_the_library_refuses_are_refused(tmp_path, capsys, case):
    header, nbytes = MALFORMED[case]
    bad = tmp_path / "bad.safetensors"
    _st(bad, header, b"\0" * nbytes)
    assert _library_refuses(bad), case
    before = snapshot(tmp_path)
    r = run_wa(["average", bad, bad, "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(r, 3, "not a valid safetensors file")
    assert snapshot(tmp_path) == before and temporaries(tmp_path) == []


def test_duplicate_keys_are_refused(tmp_path):
    """The library keeps the last of two equal keys; wa refuses the file (which one is meant?)."""
    bad = tmp_path / "dup.safetensors"
    entry = json.dumps({**F32x2, "data_offsets": [0, 8]})
    _st(bad, f'{{"a": {entry}, "a": {entry}}}'.encode(), b"\0" * 8)
    with pytest.raises(WaError, match="'a' appears twice") as e:
        read_header(bad)
    assert e.value.code == ExitCode.BAD_INPUT


@pytest.mark.parametrize(
    "body, why",
    [
        (b'{"a": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 0]}}', "not JSON"),
        (b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 0]}}', "not JSON"),
        (b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}', ""),
        (b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not JSON"),
    ],
    ids=["infinity", "nan", "5000 digits", "deep nesting"],
)
def test_json_past_its_limits_in_a_header_is_one_line(tmp_path, body, why):
    bad = tmp_path / "bad.safetensors"
    _st(bad, body)
    with pytest.raises(WaError, match=f"not a valid safetensors file.*{why}") as e:
        read_header(bad)
    assert e.value.code == ExitCode.BAD_INPUT and "\n" not in e.value.message


def test_real_files_still_read(tmp_path):
    good = tmp_path / "g.safetensors"
    tensors = {"a": torch.ones(2, 3), "e": torch.empty(0, 4), "b": torch.arange(3)}
    save_file(tensors, good)
    header = read_header(good)
    assert {k: (v.dtype, v.shape) for k, v in header.tensors.items()} == {
        k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()
    }


def test_a_header_listed_out_of_data_order_reads_like_the_library(tmp_path):
    """The format lets the JSON list tensors in any order; the offsets are then checked sorted.
    Oracle: the safetensors library's own reads of the same file."""
    f = tmp_path / "shuffled.safetensors"
    header = {
        "c": {"dtype": "F32", "shape": [1], "data_offsets": [16, 20]},
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "z": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
    }
    _st(f, header, struct.pack("<5f", 1, 2, 3, 4, 5))
    assert not _library_refuses(f)
    infos = read_header(f).tensors
    with safe_open(str(f), framework="pt") as lib:
        for key in lib.keys():
            t = lib.get_tensor(key)
            assert (infos[key].dtype, infos[key].shape) == (t.dtype, tuple(t.shape))
    assert infos["c"].offset - infos["a"].offset == 16
    # And out of order with an overlap is still refused, naming the tensors.
    header["c"]["data_offsets"] = [12, 16]
    _st(f, header, struct.pack("<4f", 1, 2, 3, 4))
    with pytest.raises(WaError, match="'c' overlaps 'b'"):
        read_header(f)


def _fifo(path):
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "name", ["x.safetensors", "x.pt", "model.safetensors.index.json", "ckpt.bin"]
)
def test_a_fifo_input_is_refused_without_reading(tmp_path, capsys, name):
    traj = make_trajectory(tmp_path / "run", n=1)
    fifo = _fifo(tmp_path / name)
    r = run_wa(["average", traj.paths[0], fifo, "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(r, 3, "FIFO")
    assert temporaries(tmp_path) == [] and not (tmp_path / "o.safetensors").exists()


def test_a_fifo_matched_by_a_glob_is_refused(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=2)
    _fifo(tmp_path / "run" / "ckpt_9.safetensors")
    r = run_wa(["average", str(tmp_path / "run" / "*.safetensors"), "-o", tmp_path / "o"], capsys)
    assert_one_line_error(r, 3, "FIFO")
    assert len(traj.paths) == 2


def test_a_fifo_metrics_file_is_refused(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=2)
    fifo = _fifo(tmp_path / "scores.csv")
    r = run_wa(
        ["average", *traj.paths, "--top-k", "1", "--mode", "min", "--metrics", fifo,
         "-o", tmp_path / "o.safetensors"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(r, 3, "FIFO")


def test_a_fifo_data_file_is_refused(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=1)
    fifo = _fifo(tmp_path / "calib.npy")
    r = run_wa(
        ["bn-recalibrate", traj.paths[0], "--model", "tests.helpers:tiny_cnn",
         "--model-kwargs", '{"seed": 0}', "--data", fifo, "-o", tmp_path / "o.safetensors"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(r, 3, "FIFO")


def test_dev_zero_as_an_index_is_refused(tmp_path, capsys):
    folder = tmp_path / "ck"
    folder.mkdir()
    index = folder / "model.safetensors.index.json"
    index.symlink_to("/dev/zero")
    r = run_wa(["average", index, index, "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(r, 3, "character device")
    r = run_wa(["average", folder, folder, "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(r, 3, "holds no checkpoint")


def test_dev_zero_as_a_metrics_file_is_refused(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=2)
    link = tmp_path / "m.json"
    link.symlink_to("/dev/zero")
    r = run_wa(
        ["average", *traj.paths, "--top-k", "1", "--mode", "min", "--metrics", link,
         "-o", tmp_path / "o.safetensors"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(r, 3, "character device")


@pytest.mark.parametrize(
    "text", ['{"a": NaN}', '{"a": 1e999}', "[" * 50_000 + "]" * 50_000, '{"a": 1, "a": 2}']
)
def test_hostile_json_in_metrics_and_indexes_is_one_line(tmp_path, capsys, text):
    traj = make_trajectory(tmp_path / "run", n=2)
    metrics = tmp_path / "m.json"
    metrics.write_text(text)
    r = run_wa(
        ["average", *traj.paths, "--top-k", "1", "--mode", "min", "--metrics", metrics,
         "-o", tmp_path / "o.safetensors"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(r, 3, "not valid JSON")
    folder = make_trajectory(tmp_path / "sh", n=1, form="sharded").paths[0]
    (folder / "model.safetensors.index.json").write_text(text)
    r = run_wa(["average", folder, folder, "-o", tmp_path / "o.safetensors"], capsys)
    assert r.code == 3 and len(r.stderr.splitlines()) == 1, r.stderr


@pytest.mark.parametrize("text", ['{"seed": NaN}', "[" * 50_000 + "]" * 50_000, '{"seed": 1e999}'])
def test_hostile_model_kwargs_are_one_line(tmp_path, capsys, text):
    traj = make_trajectory(tmp_path / "run", n=1)
    r = run_wa(
        ["bn-recalibrate", traj.paths[0], "--model", "tests.helpers:tiny_cnn",
         "--model-kwargs", text, "--data", "tests.helpers:tiny_cnn", "-o", tmp_path / "o"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(r, 2, "--model-kwargs")
