"""`wa inspect-entropy` through the CLI: values against recomputations on the loaded tensors."""

from __future__ import annotations

import csv
import io
import json
import math
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import REPO, assert_one_line_error, cnn_state, make_trajectory, run_wa
from tests.oracles import np_entropy, spec_alpha

SAMPLE_A = REPO / "sample_checkpoints/run_a/ckpt_1350.safetensors"
SAMPLE_B = REPO / "sample_checkpoints/run_b/ckpt_1350.safetensors"


def invalid_filters(t: torch.Tensor, threshold: float) -> int:
    """Filters whose float64 L1 norm is below the threshold, by a plain loop."""
    return sum(float(f.double().abs().sum()) < threshold for f in t)


def inspect_json(args, capsys) -> dict:
    r = run_wa(["inspect-entropy", *args, "--json", "--device", "cpu"], capsys)
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


def test_json_entropies_invalid_filters_and_alphas(tmp_path, capsys):
    states = [cnn_state(0), cnn_state(1)]
    states[0]["0.weight"][1:3] *= 1e-4  # two dead filters in the first conv of the first model
    paths = [tmp_path / "ckpt_0.safetensors", tmp_path / "ckpt_1.safetensors"]
    for state, path in zip(states, paths, strict=True):
        save_file(state, path)
    report = inspect_json([*paths, "--l1-threshold", "0.05"], capsys)
    floating = [k for k, t in states[0].items() if t.is_floating_point()]
    assert [row["name"] for row in report["rows"]] == sorted(floating)
    assert report["checkpoints"] == ["ckpt_0", "ckpt_1"] and report["unit"] == "nats"
    for row in report["rows"]:
        k = row["key"]
        hs = [np_entropy(s[k]) for s in states]
        assert row["entropy"] == pytest.approx(hs, abs=1e-12)
        assert row["alpha"] == pytest.approx([spec_alpha(*hs)], abs=1e-12)
        assert row["shape"] == list(states[0][k].shape)
        if states[0][k].ndim >= 2:
            assert row["invalid_filters"] == [invalid_filters(s[k], 0.5) for s in states]
        else:
            assert row["invalid_filters"] == [None, None]
    conv = next(row for row in report["rows"] if row["key"] == "0.weight")
    assert conv["invalid_filters"] == [2, 0] and conv["filters"] == 4
    zero = inspect_json([*paths, "--l1-threshold", "0"], capsys)
    assert all(not n for row in zero["rows"] for n in row["invalid_filters"])


def test_by_module_measures_each_modules_weight_and_previews_graft(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=3)
    report = inspect_json([*traj.paths, "--by", "module"], capsys)
    states = [load_file(p) for p in traj.paths]
    assert [(row["name"], row["key"]) for row in report["rows"]] == [
        ("0", "0.weight"), ("1", "1.weight"), ("4", "4.weight"),
    ]  # fmt: skip
    assert report["alpha_pairs"] == [[0, 2], [1, 0], [2, 1]]
    for row in report["rows"]:
        hs = [np_entropy(s[row["key"]]) for s in states]
        assert row["alpha"] == pytest.approx(
            [spec_alpha(hs[r], hs[d]) for r, d in report["alpha_pairs"]], abs=1e-12
        )


def test_filter_sort_and_bits(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=1)
    state = load_file(traj.paths[0])
    report = inspect_json([traj.paths[0], "--filter", r"^1\.", "--sort", "entropy", "--base", "2",
                           "--bins", "4"], capsys)  # fmt: skip
    names = [row["name"] for row in report["rows"]]
    assert set(names) == {"1.weight", "1.bias", "1.running_mean", "1.running_var"}
    bits = [row["entropy"][0] for row in report["rows"]]
    assert bits == sorted(bits)
    for row in report["rows"]:
        expected = np_entropy(state[row["key"]], bins=4) / math.log(2)
        assert row["entropy"][0] == pytest.approx(expected, abs=1e-12)
    assert report["max_entropy"] == pytest.approx(2.0) and report["unit"] == "bits"


def test_csv_parses_and_agrees_with_json(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    r = run_wa(["inspect-entropy", *traj.paths, "--csv"], capsys)
    assert r.code == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    report = inspect_json(traj.paths, capsys)
    assert [row["name"] for row in rows] == [row["name"] for row in report["rows"]]
    for line, row in zip(rows, report["rows"], strict=True):
        assert float(line["entropy[ckpt_1]"]) == pytest.approx(row["entropy"][1], abs=1e-12)
        assert float(line["alpha[ckpt_0<-ckpt_1]"]) == pytest.approx(row["alpha"][0], abs=1e-12)
        assert line["shape"] == "x".join(map(str, row["shape"]))


def test_union_of_key_sets_leaves_gaps(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=1)
    save_file({"extra.weight": torch.arange(10.0)}, tmp_path / "other.safetensors")
    report = inspect_json([traj.paths[0], tmp_path / "other.safetensors", "--keys", "union"],
                          capsys)  # fmt: skip
    extra = next(row for row in report["rows"] if row["name"] == "extra.weight")
    assert extra["entropy"] == [None, pytest.approx(math.log(10))] and extra["alpha"] == [None]


def test_table_on_the_sample_runs(capsys):
    r = run_wa(["inspect-entropy", SAMPLE_A, SAMPLE_B, "--by", "module"], capsys)
    assert r.code == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert "H run_a/ckpt_1350" in lines[1] and "α run_a/ckpt_1350<-run_b/ckpt_1350" in lines[1]
    assert [ln.split()[0] for ln in lines[2:]] == ["bn1", "bn2", "conv1", "conv2", "fc"]
    h = np_entropy(load_file(SAMPLE_A)["conv1.weight"])
    assert f"{h:.3f}" in lines[4]


def test_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    traj = make_trajectory(tmp_path, n=2)
    png = tmp_path / "entropy.png"
    r = run_wa(["inspect-entropy", *traj.paths, "--plot", png, "-q"], capsys)
    assert r.code == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run_wa(["inspect-entropy", *traj.paths, "--plot", png], capsys)
    assert_one_line_error(r, 5, "already exists", "--force")
    assert run_wa(["inspect-entropy", *traj.paths, "--plot", png, "--force"], capsys).code == 0


def test_plot_never_overwrites_an_input(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    traj = make_trajectory(tmp_path, n=1)
    before = traj.paths[0].read_bytes()
    r = run_wa(["inspect-entropy", traj.paths[0], "--plot", traj.paths[0], "--force"], capsys)
    # Refused as a safetensors file where a plot goes, before the input is even opened.
    assert_one_line_error(r, 5, str(traj.paths[0]), "even with --force")
    assert traj.paths[0].read_bytes() == before


def test_plot_without_matplotlib_is_one_clear_line(tmp_path, capsys, monkeypatch):
    traj = make_trajectory(tmp_path, n=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    r = run_wa(["inspect-entropy", traj.paths[0], "--plot", tmp_path / "e.png"], capsys)
    assert_one_line_error(r, 2, "matplotlib", "pip install -e '.[plot]'")
    assert r.stdout == "" and not (tmp_path / "e.png").exists()


@pytest.fixture
def inputs(tmp_path):
    good = make_trajectory(tmp_path / "good", n=2).paths
    state = dict(load_file(good[0]))
    state["0.weight"] = torch.ones(1, 2, 3, 4)
    save_file(state, tmp_path / "shape.safetensors")
    return good


CASES = [
    (["{g0}", "--filter", "conv("], 2, ["--filter", "'conv('"]),
    (["{g0}", "--bins", "1"], 2, ["bins must be an integer from 2"]),
    (["{g0}", "--base", "10"], 2, ["--base"]),
    (["{g0}", "--l1-threshold", "-1"], 2, ["--l1-threshold"]),
    (["{g0}", "--by", "layer"], 2, ["--by"]),
    (["{g0}", "--json", "--csv"], 2, ["--json", "--csv"]),
    (["{g0}", "{g1}", "--a", "1"], 2, ["--a must be in [0, 1)"]),
    (["{g0}", "{tmp}/shape.safetensors"], 4, ["shape mismatch"]),
    (["{tmp}/missing.safetensors"], 3, ["does not exist"]),
    (["{g0}", "--plot", "{tmp}/no/e.png"], 5, ["does not exist"]),
]


@pytest.mark.parametrize("args, code, fragments", CASES)
def test_errors_are_one_line(tmp_path, capsys, inputs, args, code, fragments):
    fmt = {"tmp": tmp_path, "g0": inputs[0], "g1": inputs[1]}
    r = run_wa(["inspect-entropy", *[a.format(**fmt) for a in args]], capsys)
    assert_one_line_error(r, code, *fragments)
    assert r.stdout == ""
