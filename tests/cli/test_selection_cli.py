"""Trajectory selection through `wa average` and `wa ema`: order, filters, top-k, --dry-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import assert_one_line_error, run_wa

# Steps in metadata; the names hold no number, and their alphabetical order is not step order.
META = {  # name: (step, val_loss, val_acc)
    "apple": (300, 0.40, 0.81),
    "banana": (100, 0.90, 0.60),
    "cherry": (500, 0.35, 0.70),
    "damson": (200, 0.60, 0.75),
    "elder": (400, 0.30, 0.90),
}
BY_STEP = sorted(META, key=lambda n: META[n][0])  # banana damson apple elder cherry
NAME_STEPS = [10, 2, 1, 30, 3]  # steps only in the names: ckpt_2 must come before ckpt_10


def value(step: int) -> float:
    return float(step)


@pytest.fixture
def meta_traj(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "meta"
    folder.mkdir()
    paths = []
    for name, (step, loss, acc) in META.items():
        path = folder / f"{name}.safetensors"
        meta = {"format": "pt", "step": str(step), "val_loss": str(loss), "val_acc": str(acc)}
        save_file({"w": torch.full((3,), value(step))}, path, metadata=meta)
        paths.append(path)
    return paths


@pytest.fixture
def name_traj(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "names"
    folder.mkdir()
    paths = []
    for step in NAME_STEPS:
        path = folder / f"ckpt_{step}.safetensors"
        save_file({"w": torch.full((3,), value(step))}, path)
        paths.append(path)
    return paths


def dry_run(capsys, command: str, paths: list[Path], *flags: str) -> dict:
    """The --dry-run --json report (ema gets a fixed decay, which selection does not read)."""
    decay = ["--decay", "0.5"] if command == "ema" else []
    r = run_wa([command, *paths, *flags, *decay, "--dry-run", "--json"], capsys)
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


def names(report: dict) -> list[str]:
    return [Path(row["path"]).stem for row in report["checkpoints"]]


def test_metadata_steps_order_the_trajectory(capsys, meta_traj):
    report = dry_run(capsys, "ema", meta_traj)
    assert names(report) == BY_STEP
    assert [r["step"] for r in report["checkpoints"]] == [100, 200, 300, 400, 500]
    assert {r["source"] for r in report["checkpoints"]} == {"metadata"}


def test_name_steps_order_numbers_by_value(capsys, name_traj):
    report = dry_run(capsys, "ema", name_traj)
    assert names(report) == ["ckpt_1", "ckpt_2", "ckpt_3", "ckpt_10", "ckpt_30"]
    assert {r["source"] for r in report["checkpoints"]} == {"name"}


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--last", "2"], ["elder", "cherry"]),
        (["--every", "2"], ["banana", "apple", "cherry"]),
        (["--from-step", "200", "--to-step", "400"], ["damson", "apple", "elder"]),
        (["--from-step", "250"], ["apple", "elder", "cherry"]),
        (["--every", "2", "--last", "2"], ["apple", "cherry"]),
        (["--top-k", "2", "--metric", "val_loss"], ["elder", "cherry"]),
        (["--top-k", "2", "--metric", "val_loss", "--mode", "max"], ["banana", "damson"]),
        (["--top-k", "2", "--metric", "val_acc", "--mode", "max"], ["apple", "elder"]),
        (["--top-k", "2", "--metric", "val_acc", "--mode", "min"], ["banana", "cherry"]),
        (["--order", "name"], ["apple", "banana", "cherry", "damson", "elder"]),
    ],
)
def test_each_flag_on_metadata_steps(capsys, meta_traj, flags, expected):
    for command in ("average", "ema"):
        report = dry_run(capsys, command, meta_traj, *flags)
        assert names(report) == expected, command


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--last", "3"], [3, 10, 30]),
        (["--every", "2"], [1, 3, 30]),
        (["--from-step", "2", "--to-step", "10"], [2, 3, 10]),
        (["--to-step", "3"], [1, 2, 3]),
    ],
)
def test_each_flag_on_name_steps(capsys, name_traj, flags, expected):
    for command in ("average", "ema"):
        report = dry_run(capsys, command, name_traj, *flags)
        assert names(report) == [f"ckpt_{s}" for s in expected], command


def test_top_k_from_a_metrics_file_both_directions(tmp_path, capsys, name_traj):
    # Loss is lowest for ckpt_3 and ckpt_30; csv keyed by file name, json by stem.
    losses = {1: 0.9, 2: 0.8, 3: 0.1, 10: 0.5, 30: 0.2}
    csv = tmp_path / "m.csv"
    csv.write_text(
        "file,loss\n" + "".join(f"ckpt_{s}.safetensors,{v}\n" for s, v in losses.items())
    )
    flags = ["--top-k", "2", "--metrics", str(csv), "--mode", "min"]
    report = dry_run(capsys, "average", name_traj, *flags)
    assert names(report) == ["ckpt_3", "ckpt_30"]
    assert [r["value"] for r in report["checkpoints"]] == [0.1, 0.2]
    js = tmp_path / "m.json"
    js.write_text(json.dumps({f"ckpt_{s}": {"loss": v} for s, v in losses.items()}))
    flags = ["--top-k", "2", "--metrics", str(js), "--metric", "loss", "--mode", "max"]
    assert names(dry_run(capsys, "average", name_traj, *flags)) == ["ckpt_1", "ckpt_2"]


def test_average_of_a_selection_writes_the_mean_of_the_selected(tmp_path, capsys, meta_traj):
    out = tmp_path / "best.safetensors"
    flags = ["--top-k", "3", "--metric", "val_loss", "-o", out, "--json"]
    r = run_wa(["average", *meta_traj, *flags], capsys)
    assert r.code == 0, r.stderr
    chosen = ["apple", "elder", "cherry"]  # losses 0.40, 0.30, 0.35
    expected = sum(value(META[n][0]) for n in chosen) / 3
    torch.testing.assert_close(load_file(out)["w"], torch.full((3,), expected))
    assert [Path(p).stem for p in json.loads(r.stdout)["inputs"]] == chosen


def test_average_weights_follow_the_dry_run_order(tmp_path, capsys, meta_traj):
    flags = ["--last", "3", "--weights", "1,0,3"]
    report = dry_run(capsys, "average", meta_traj, *flags)
    assert names(report) == ["apple", "elder", "cherry"]
    assert [r["weight"] for r in report["checkpoints"]] == [0.25, 0.0, 0.75]
    out = tmp_path / "o.safetensors"
    assert run_wa(["average", *meta_traj, *flags, "-o", out], capsys).code == 0
    expected = 0.25 * value(300) + 0.75 * value(500)
    torch.testing.assert_close(load_file(out)["w"], torch.full((3,), expected))


def test_average_without_selection_keeps_the_given_order_and_allows_equal_steps(tmp_path, capsys):
    # SWAP's final average: W workers saved at the same step.
    paths = []
    for worker in (2, 1):
        path = tmp_path / f"worker{worker}" / "last.safetensors"
        path.parent.mkdir()
        save_file({"w": torch.full((2,), float(worker))}, path, metadata={"step": "1000"})
        paths.append(path)
    r = run_wa(["average", *paths, "-o", tmp_path / "o.safetensors", "--json"], capsys)
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["inputs"] == [str(p) for p in paths]
    torch.testing.assert_close(load_file(tmp_path / "o.safetensors")["w"], torch.full((2,), 1.5))
    # Ordering them is refused, with the fix in the message.
    r = run_wa(["average", *paths, "--last", "1", "-o", tmp_path / "p.safetensors"], capsys)
    assert_one_line_error(r, 2, "share step 1000", "--order given")


def test_dry_run_text_table_and_writes_nothing(tmp_path, capsys, meta_traj):
    before = sorted(tmp_path.rglob("*"))
    out = tmp_path / "never.safetensors"
    flags = ["--top-k", "2", "--metric", "val_loss", "--dry-run"]
    r = run_wa(["average", *meta_traj, *flags, "-o", out], capsys)
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("dry run: mean of 2 of 5 checkpoint(s)")
    assert "val_loss" in lines[1] and "weight" in lines[1]
    assert "elder.safetensors" in lines[2] and "0.3" in lines[2] and "0.500000" in lines[2]
    assert not out.exists() and sorted(tmp_path.rglob("*")) == before


def test_output_is_required_without_dry_run(tmp_path, capsys, meta_traj):
    for command, extra in (("average", []), ("ema", ["--decay", "0.5"])):
        r = run_wa([command, *meta_traj, *extra], capsys)
        assert_one_line_error(r, 2, "-o/--output", "--dry-run")


SELECTION_ERRORS = [
    # (flags, exit code, fragments of the one error line)
    (["--top-k", "2"], 2, ["--top-k needs a metric", "--metric"]),
    (["--top-k", "2", "--metric", "val_f1"], 3, ["val_f1", "missing"]),
    (["--from-step", "900"], 2, ["keeps no checkpoint", "100 to 500"]),
    (["--from-step", "400", "--to-step", "200"], 2, ["swap them"]),
    (["--every", "0"], 2, ["--every must be a positive integer"]),
    (["--last", "-1"], 2, ["--last must be a positive integer"]),
    (["--order", "random"], 2, ["--order must be one of"]),
    (["--order", "step"], 2, ["--order step needs a step ('step' or 'global_step')"]),
    (["--mode", "best"], 2, ["--mode"]),
    (["--top-k", "1", "--metrics", "{tmp}/none.csv"], 3, ["none.csv", "does not exist"]),
]


@pytest.mark.parametrize("flags, code, fragments", SELECTION_ERRORS)
def test_selection_errors_are_one_line(tmp_path, capsys, meta_traj, flags, code, fragments):
    if "--order" in flags and "step" in flags:
        save_file({"w": torch.ones(3)}, tmp_path / "meta" / "nostep.safetensors")
        meta_traj = [*meta_traj, tmp_path / "meta" / "nostep.safetensors"]
    flags = [f.format(tmp=tmp_path) for f in flags]
    for command, extra in (("average", []), ("ema", ["--decay", "0.5"])):
        out = tmp_path / "o.safetensors"
        r = run_wa([command, *meta_traj, *flags, *extra, "-o", out], capsys)
        assert_one_line_error(r, code, *fragments)
        assert not out.exists()
