"""Smaller traps of issue 22, item 20, through the real commands.

* ``--plot e.pdf`` writes a PDF (the format the suffix names), and an unknown suffix is refused;
* ``--top-k`` ties at the cut are broken toward the earliest checkpoints, and wa says so;
* ``wa graft run1/ run2/`` on folders of checkpoints is one clear line, not a ring of 30 models;
* a metrics CSV keyed by ``step`` is refused for what it is, not for "no header row".
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import save_file

from tests.helpers import assert_one_line_error, drifted_state, make_trajectory, run_wa

MAGIC = {
    "png": b"\x89PNG\r\n\x1a\n",
    "pdf": b"%PDF-",
    "svg": b"<?xml",
    "eps": b"%!PS-Adobe",
    "ps": b"%!PS-Adobe",
}


@pytest.mark.parametrize("fmt", sorted(MAGIC))
def test_plot_writes_the_format_its_suffix_names(tmp_path, capsys, fmt):
    pytest.importorskip("matplotlib")
    traj = make_trajectory(tmp_path / "run", n=1)
    plot = tmp_path / f"entropy.{fmt.upper() if fmt == 'pdf' else fmt}"
    r = run_wa(["inspect-entropy", traj.paths[0], "--plot", plot, "-q"], capsys)
    assert r.code == 0, r.stderr
    assert plot.read_bytes().startswith(MAGIC[fmt])


@pytest.mark.parametrize("name", ["entropy.jpg", "entropy", "entropy.pdf.txt"])
def test_plot_with_a_suffix_wa_does_not_write_is_refused(tmp_path, capsys, name):
    pytest.importorskip("matplotlib")
    traj = make_trajectory(tmp_path / "run", n=1)
    r = run_wa(["inspect-entropy", traj.paths[0], "--plot", tmp_path / name], capsys)
    assert_one_line_error(r, 2, "--plot", ".png", ".pdf")
    assert r.stdout == "" and not (tmp_path / name).exists()


def _metric_run(folder, values):
    folder.mkdir()
    paths = []
    for i, value in enumerate(values):
        path = folder / f"ckpt_{i}.safetensors"
        save_file(drifted_state(i), path, metadata={"step": str(100 * i), "val_loss": str(value)})
        paths.append(path)
    return paths


def test_top_k_ties_at_the_cut_are_named(tmp_path, capsys):
    _metric_run(tmp_path / "run", [0.5, 0.3, 0.3, 0.3, 0.1])
    out = tmp_path / "o.safetensors"
    r = run_wa(["average", tmp_path / "run", "--top-k", "2", "--metric", "val_loss",
                "-o", out, "--json"], capsys)  # fmt: skip
    assert r.code == 0, r.stderr
    kept = [row["name"] for row in json.loads(r.stdout)["selection"]]
    assert kept == ["ckpt_1.safetensors", "ckpt_4.safetensors"]
    ties = [line for line in r.stderr.splitlines() if "tie" in line]
    assert len(ties) == 1, r.stderr
    assert "ckpt_2.safetensors" in ties[0] and "earliest" in ties[0], ties
    # No tie at the cut: nothing said.
    r = run_wa(["average", tmp_path / "run", "--top-k", "4", "--metric", "val_loss",
                "--dry-run"], capsys)  # fmt: skip
    assert r.code == 0 and "tie" not in r.stderr, r.stderr


def test_graft_of_two_folders_of_checkpoints_is_one_clear_line(tmp_path, capsys):
    make_trajectory(tmp_path / "run1", n=3, one_run=True)
    make_trajectory(tmp_path / "run2", n=3, one_run=True)
    r = run_wa(["graft", tmp_path / "run1", tmp_path / "run2", "-o", tmp_path / "g"], capsys)
    assert_one_line_error(r, 2, "run1", "3 checkpoints", "one checkpoint per run")
    assert r.stdout == "" and not (tmp_path / "g").exists()
    # One file per run still grafts.
    run1, run2 = tmp_path / "run1" / "ckpt_2.safetensors", tmp_path / "run2" / "ckpt_2.safetensors"
    r = run_wa(["graft", run1, run2, "--dry-run", "--json"], capsys)
    assert r.code == 0, r.stderr


def test_a_metrics_csv_keyed_by_step_is_refused_for_that(tmp_path, capsys):
    _metric_run(tmp_path / "run", [0.5, 0.3, 0.1])
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,val_acc\n0,0.5\n100,0.7\n200,0.9\n")
    r = run_wa(["average", tmp_path / "run", "--top-k", "2", "--metrics", metrics,
                "--metric", "val_acc", "--dry-run"], capsys)  # fmt: skip
    assert_one_line_error(r, 3, "'step'", "file name or path")
    assert "no header row" not in r.stderr
    # A file with no header row at all still says so.
    metrics.write_text("ckpt_0.safetensors,0.5\nckpt_1.safetensors,0.7\n")
    r = run_wa(["average", tmp_path / "run", "--top-k", "1", "--metrics", metrics,
                "--mode", "max", "--dry-run"], capsys)  # fmt: skip
    assert_one_line_error(r, 3, "no header row")
