"""`wa average` through the CLI: results on stdout, one-line errors, nothing written on failure."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import assert_one_line_error, make_trajectory, run_wa, run_wa_process


class Unsafe:
    pass


def test_average_writes_output_and_a_summary(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=3)
    out = tmp_path / "swa.safetensors"
    r = run_wa(["average", *traj.paths, "-o", out], capsys)
    assert r.code == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}")
    assert "bn-recalibrate" in r.stderr  # the hint goes to stderr
    expected = (
        traj.states[0]["0.weight"] + traj.states[1]["0.weight"] + traj.states[2]["0.weight"]
    ) / 3
    torch.testing.assert_close(load_file(out)["0.weight"], expected, rtol=1e-6, atol=1e-7)


def test_json_report_is_the_only_stdout(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2, one_run=True)
    r = run_wa(["average", *traj.paths, "-o", tmp_path / "o.safetensors", "--json", "-q"], capsys)
    report = json.loads(r.stdout)
    assert report["method"] == "mean" and report["weights"] == [0.5, 0.5]
    assert report["copied"] == 1 and report["outputs"] == [str(tmp_path / "o.safetensors")]
    assert r.stderr == ""  # -q silences the hint


def test_quoted_glob_and_folder_expand_in_natural_order(tmp_path, capsys):
    for step in (2, 10, 1):
        save_file({"w": torch.full((2,), float(step))}, tmp_path / f"ckpt_{step}.safetensors")
    out = tmp_path.parent / f"{tmp_path.name}_out.safetensors"
    r = run_wa(["average", str(tmp_path / "ckpt_*.safetensors"), "-o", out, "--json"], capsys)
    assert json.loads(r.stdout)["inputs"] == [
        str(tmp_path / f"ckpt_{s}.safetensors") for s in (1, 2, 10)
    ]
    r = run_wa(["average", tmp_path, "-o", out, "--json", "--force", "--weights", "1,0,0"], capsys)
    assert torch.equal(load_file(out)["w"], torch.full((2,), 1.0))


def test_sharded_output(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "sharded"
    r = run_wa(["average", *traj.paths, "-o", out, "--max-shard-size", "200B"], capsys)
    assert r.code == 0, r.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    r = run_wa(["average", out, out, "-o", tmp_path / "again.safetensors"], capsys)
    assert r.code == 0, r.stderr


def _bad_inputs(tmp_path):
    good = make_trajectory(tmp_path / "good", n=2).paths
    (tmp_path / "text.safetensors").write_text("hello, not a checkpoint")
    trunc = tmp_path / "trunc.safetensors"
    save_file({"w": torch.randn(100)}, trunc)
    trunc.write_bytes(trunc.read_bytes()[:-40])
    (tmp_path / "corrupt.safetensors").write_bytes(struct.pack("<Q", 6) + b"{oops}")
    (tmp_path / "empty_dir").mkdir()
    save_file({"other": torch.ones(1)}, tmp_path / "keys.safetensors")
    state = dict(load_file(good[0]))
    state["0.weight"] = torch.ones(1, 2, 3, 4)
    save_file(state, tmp_path / "shape.safetensors")
    torch.save({"w": torch.ones(1), "x": Unsafe()}, tmp_path / "unsafe.pt")
    # Latin-1, not UTF-8: 0xe9 followed by '.' is no valid UTF-8 sequence.
    (tmp_path / "latin1.csv").write_bytes("file,value\nckpt_\xe9.pt,1\n".encode("latin-1"))
    return good


CASES = [
    # (arguments after 'average', exit code, fragments of the one error line)
    (["{tmp}/missing.safetensors"], 3, ["missing.safetensors", "does not exist"]),
    (["{tmp}/text.safetensors"], 3, ["not a valid safetensors file"]),
    (["{tmp}/trunc.safetensors"], 3, ["truncated"]),
    (["{tmp}/corrupt.safetensors"], 3, ["not JSON"]),
    (["{tmp}/empty_dir"], 3, ["empty_dir", "no checkpoint"]),
    (["{tmp}/nomatch_*.safetensors"], 3, ["nomatch_*"]),
    (["{g0}", "{tmp}/keys.safetensors"], 4, ["key sets differ", "--keys"]),
    (["{g0}", "{tmp}/shape.safetensors"], 4, ["shape mismatch", "'0.weight'", "(1, 2, 3, 4)"]),
    (["{g0}", "{g1}", "--weights", "1,-2"], 2, ["non-negative"]),
    (["{g0}", "{g1}", "--weights", "0,0"], 2, ["all zero"]),
    (["{g0}", "{g1}", "--weights", "1,2,3"], 2, ["--weights has 3 values for 2 inputs"]),
    (["{g0}", "{g1}", "--weights", "a,b"], 2, ["--weights"]),
    (["{tmp}/unsafe.pt"], 3, ["Unsafe", "weights_only"]),
    (["{g0}", "--dtype", "int8"], 2, ["--dtype 'int8' is not one of"]),
    (["{g0}", "--keys", "some"], 2, ["--keys"]),
    (["{g0}", "--max-shard-size", "big"], 2, ["is not a size"]),
    (["{g0}", "--max-shard-size", "inf"], 2, ["'inf'", "at least 1 byte"]),
    (["{g0}", "--max-shard-size", "nan"], 2, ["'nan'", "at least 1 byte"]),
    (["{g0}", "--max-shard-size", "1e400"], 2, ["'1e400'", "at least 1 byte"]),
    (["{g0}", "--max-shard-size", "0.5"], 2, ["'0.5'", "at least 1 byte"]),
    (["{g0}", "{g1}", "--weights", "1,nan"], 2, ["finite"]),
    (["{g0}", "{g1}", "--top-k", "1", "--metrics", "{tmp}/latin1.csv"], 3, ["not UTF-8"]),
    (["{g0}", "--device", "tpu"], 2, ["device"]),
]


@pytest.mark.parametrize("args, code, fragments", CASES)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, code, fragments):
    good = _bad_inputs(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    fmt = {"tmp": tmp_path, "g0": good[0], "g1": good[1]}
    out = tmp_path / "out.safetensors"
    r = run_wa(["average", *[a.format(**fmt) for a in args], "-o", out], capsys)
    assert_one_line_error(r, code, *fragments)
    assert not out.exists()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_zero_inputs_is_a_usage_error(tmp_path, capsys):
    r = run_wa(["average", "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(r, 2, "Missing argument")


def test_existing_output_needs_force(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "o.safetensors"
    save_file({"0.weight": torch.zeros(1)}, out)  # an earlier output: --force may replace it
    keep = out.read_bytes()
    r = run_wa(["average", *traj.paths, "-o", out], capsys)
    assert_one_line_error(r, 5, "already exists", "--force")
    assert out.read_bytes() == keep
    assert run_wa(["average", *traj.paths, "-o", out, "--force"], capsys).code == 0
    assert "0.weight" in load_file(out)


def test_output_equal_to_an_input_is_refused_even_with_force(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    before = traj.paths[0].read_bytes()
    r = run_wa(["average", *traj.paths, "-o", traj.paths[0], "--force"], capsys)
    assert_one_line_error(r, 5, "would overwrite the input")
    assert traj.paths[0].read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "in", n=2)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    r = run_wa(["average", *traj.paths, "-o", locked / "o.safetensors"], capsys)
    assert_one_line_error(r, 5, "not writable")


def test_missing_output_folder(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    r = run_wa(["average", *traj.paths, "-o", tmp_path / "no" / "o.safetensors"], capsys)
    assert_one_line_error(r, 5, "does not exist")


def test_debug_shows_the_traceback(tmp_path):
    r = run_wa_process(
        ["average", tmp_path / "missing.safetensors", "-o", tmp_path / "o", "--debug"]
    )
    assert r.code != 0 and "Traceback" in r.stderr and "WaError" in r.stderr


def test_force_never_deletes_other_files_in_a_shard_folder(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "in", n=2)
    models = tmp_path / "models"
    models.mkdir()
    (models / "other.txt").write_text("x")
    args = ["average", *traj.paths, "-o", models, "--max-shard-size", "5GB", "--force"]
    r = run_wa(args, capsys)
    assert_one_line_error(r, 5, "models'", "other.txt", "--force")
    assert sorted(p.name for p in models.iterdir()) == ["other.txt"]
    assert (models / "other.txt").read_text() == "x"
    # A folder wa wrote (shards and index only) is replaced with --force.
    (models / "other.txt").unlink()
    assert run_wa(args, capsys).code == 0
    assert run_wa(args, capsys).code == 0
    assert (models / "model.safetensors.index.json").is_file()


def test_single_file_output_named_like_a_pickle_is_refused(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    r = run_wa(["average", *traj.paths, "-o", tmp_path / "out.pt"], capsys)
    assert_one_line_error(r, 2, "out.pt", "safetensors")
    assert not (tmp_path / "out.pt").exists()
