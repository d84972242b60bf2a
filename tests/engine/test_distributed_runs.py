"""Many ranks (gloo on this machine) write the same bytes as one process, or nothing at all.

The oracle is the single-process ``wa`` run with the same command line in another folder (the
command line is part of the provenance, so the ranks and the reference are given the same one).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.engine.dist_launch import launch, torchrun, wa_errors
from tests.helpers import make_trajectory, run_wa


def same_tree(a: Path, b: Path) -> None:
    """Byte-identical files (a file, or every file of a folder, names included)."""
    if a.is_file():
        assert a.read_bytes() == b.read_bytes()
        return
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def reference(tmp_path: Path, args: list[str], capsys, monkeypatch) -> Path:
    ref = tmp_path / "single"
    ref.mkdir()
    monkeypatch.chdir(ref)
    r = run_wa(args, capsys)
    assert r.code == 0, r.stderr
    (ref / "stdout.txt").write_text(r.stdout)  # outside the output: the report to compare
    monkeypatch.chdir(tmp_path)
    return ref


def timeless(report: object) -> object:
    """A JSON report without what differs between runs (times) or exists only with ranks."""
    if isinstance(report, dict):
        drop = ("seconds", "gb_per_s", "ranks")
        return {k: timeless(v) for k, v in report.items() if k not in drop}
    if isinstance(report, list):
        return [timeless(v) for v in report]
    return report


def nothing_left(folder: Path) -> None:
    """No output and no temporary sibling of it."""
    assert sorted(p.name for p in folder.iterdir()) == []


@pytest.mark.parametrize("shards", [pytest.param(None, marks=pytest.mark.slow), "2KB"])
def test_two_ranks_average_is_byte_identical(tmp_path, capsys, monkeypatch, shards):
    traj = make_trajectory(tmp_path / "in", n=3)
    out = "out" if shards else "out.safetensors"
    args = ["average", *map(str, traj.paths), "-o", out, "--weights", "1,2,3"]
    args += ["--max-shard-size", shards] if shards else []
    args.append("--json")
    ref = reference(tmp_path, args, capsys, monkeypatch)
    (tmp_path / "dist").mkdir()
    results = launch(2, args, cwd=tmp_path / "dist")
    assert [r.code for r in results] == [0, 0], [r.stderr for r in results]
    same_tree(ref / out, tmp_path / "dist" / out)
    # One report, from rank 0, with every rank's share; rank 1 prints nothing at all.
    assert results[1].stdout == "" and results[1].stderr == ""
    report = json.loads(results[0].stdout)
    assert [r["rank"] for r in report["ranks"]] == [0, 1]
    assert sum(r["bytes_read"] for r in report["ranks"]) == report["bytes_read"] > 0
    if shards:
        files = [f for r in report["ranks"] for f in r["files"]]
        assert len(files) == len(set(files)) == len(list((tmp_path / "dist" / out).iterdir())) - 1


def test_a_rank_that_cannot_see_an_input_stops_every_rank(tmp_path):
    """Rank 1's folder lacks one checkpoint (a node that cannot see a file): nothing written."""
    traj = make_trajectory(tmp_path / "in", n=3)
    views = [tmp_path / "node0", tmp_path / "node1"]
    for rank, view in enumerate(views):
        view.mkdir()
        for p in traj.paths[: 3 - rank]:
            (view / p.name).symlink_to(p)
    (tmp_path / "out").mkdir()
    args = ["average", *(p.name for p in traj.paths), "-o", tmp_path / "out" / "avg.safetensors"]
    results = launch(2, args, cwd=views)
    assert [r.code for r in results] == [3, 3], [r.stderr for r in results]
    assert wa_errors(results[0].stderr) == [
        f"wa: error: rank 1: input '{traj.paths[2].name}' does not exist (check the path)"
    ]
    assert results[1].stderr == ""  # rank 0 speaks for the group
    assert "Traceback" not in results[0].stderr
    nothing_left(tmp_path / "out")


@pytest.mark.slow
def test_ranks_that_expand_a_glob_differently_name_the_difference(tmp_path):
    traj = make_trajectory(tmp_path / "in", n=3)
    views = [tmp_path / "node0", tmp_path / "node1"]
    for rank, view in enumerate(views):
        view.mkdir()
        for p in traj.paths[: 3 - rank]:
            (view / p.name).symlink_to(p)
    (tmp_path / "out").mkdir()
    results = launch(2, ["average", "ckpt_*.safetensors", "-o", tmp_path / "out" / "a"], cwd=views)
    assert [r.code for r in results] == [3, 3]
    (line,) = wa_errors(results[0].stderr)
    assert line.startswith("wa: error: rank 1 planned a different run than rank 0: ")
    assert f"rank 1 lacks '{traj.paths[2].name}'" in line
    assert results[1].stderr == ""
    nothing_left(tmp_path / "out")


def test_a_rank_killed_mid_write_leaves_nothing(tmp_path):
    """Rank 1 dies by SIGKILL after its first chunk; rank 0 says so and removes the temporary."""
    traj = make_trajectory(tmp_path / "in", n=3)
    (tmp_path / "out").mkdir()
    args = ["average", *traj.paths, "-o", tmp_path / "out" / "a.safetensors"]
    results = launch(2, args, env={"WA_TEST_HOOKS": "1", "WA_TEST_KILL_RANK": "1"}, timeout=90)
    assert results[1].code == -9
    assert results[0].code == 5, results[0].stderr
    (line,) = wa_errors(results[0].stderr)
    assert line.startswith("wa: error: rank 0: lost contact with the other ranks while ")
    assert "nothing was written" in line
    nothing_left(tmp_path / "out")


def test_without_torchrun_no_process_group_is_made(tmp_path, capsys):
    import torch.distributed as dist

    from wa_cli.engine import distributed

    traj = make_trajectory(tmp_path, n=2)
    assert "WORLD_SIZE" not in os.environ
    r = run_wa(["average", *traj.paths, "-o", tmp_path / "a.safetensors"], capsys)
    assert r.code == 0
    assert distributed.active() is None and not dist.is_initialized()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("world", "command", "out", "extra"),
    [
        (2, "ema", "e.safetensors", ["--half-life", "150"]),
        (3, "ema", "e", ["--decay", "0.7", "--max-shard-size", "1KB"]),
        (2, "graft", "g.safetensors", []),
        (3, "graft", "g", ["--rule", "tensor"]),
    ],
)
def test_ema_and_graft_are_byte_identical(
    tmp_path, capsys, monkeypatch, world, command, out, extra
):
    """Graft with three inputs writes three files (a ring); with two, one. JSON reports agree."""
    traj = make_trajectory(tmp_path / "in", n=2 if out == "g.safetensors" else 3)
    args = [command, *map(str, traj.paths), "-o", out, "--json", *extra]
    ref = reference(tmp_path, args, capsys, monkeypatch)
    (tmp_path / "dist").mkdir()
    results = launch(world, args, cwd=tmp_path / "dist")
    assert all(r.code == 0 for r in results), [r.stderr for r in results]
    same_tree(ref / out, tmp_path / "dist" / out)
    single = json.loads((ref / "stdout.txt").read_text())
    assert timeless(json.loads(results[0].stdout)) == timeless(single)


@pytest.mark.slow
def test_torchrun_three_ranks_sharded_and_single(tmp_path, capsys, monkeypatch):
    """Through the real launcher, three ranks, both output kinds."""
    traj = make_trajectory(tmp_path / "in", n=3)
    for out, extra in (("o.safetensors", []), ("o", ["--max-shard-size", "1KB"])):
        args = ["average", *map(str, traj.paths), "-o", out, "-q", *extra]
        ref = reference(tmp_path, args, capsys, monkeypatch)
        dist_dir = tmp_path / f"dist-{out}"
        dist_dir.mkdir()
        proc = torchrun(3, args, cwd=dist_dir)
        assert proc.returncode == 0, proc.stderr
        same_tree(ref / out, dist_dir / out)
        shutil.rmtree(ref)


@pytest.mark.slow
def test_torchrun_kill_stops_the_group(tmp_path):
    """torchrun stops the surviving ranks with SIGTERM: they unwind and leave nothing."""
    traj = make_trajectory(tmp_path / "in", n=3)
    (tmp_path / "out").mkdir()
    env_args = ["average", *traj.paths, "-o", tmp_path / "out" / "a.safetensors"]
    os.environ["WA_TEST_KILL_RANK"] = "1"
    os.environ["WA_TEST_HOOKS"] = "1"
    try:
        proc = torchrun(2, env_args, cwd=tmp_path)
    finally:
        del os.environ["WA_TEST_KILL_RANK"]
        del os.environ["WA_TEST_HOOKS"]
    assert proc.returncode != 0
    # Rank 0 is stopped by torchrun, or sees the broken connection first: either says so.
    (line,) = wa_errors(proc.stderr)
    assert "interrupted by SIGTERM; nothing was written" in line or "lost contact" in line, line
    nothing_left(tmp_path / "out")


@pytest.mark.slow
def test_dcp_trajectory_each_rank_reads_only_its_shards(tmp_path, capsys, monkeypatch):
    """DCP folders (read lazily, key by key): the ranks' reads add up to one process's, once."""
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    import torch

    folders = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        state = {f"layer{i}.weight": torch.randn(16, 8, generator=g) for i in range(6)}
        folder = tmp_path / "in" / f"step_{100 * (seed + 1)}"
        dcp.save(state, checkpoint_id=str(folder))
        folders.append(str(folder))
    args = ["average", *folders, "-o", "out", "--max-shard-size", "1KB", "--json"]
    ref = reference(tmp_path, args, capsys, monkeypatch)
    single = json.loads((ref / "stdout.txt").read_text())
    (tmp_path / "dist").mkdir()
    results = launch(2, args, cwd=tmp_path / "dist")
    assert [r.code for r in results] == [0, 0], [r.stderr for r in results]
    same_tree(ref / "out", tmp_path / "dist" / "out")
    ranks = json.loads(results[0].stdout)["ranks"]
    assert all(r["bytes_read"] > 0 for r in ranks)
    assert sum(r["bytes_read"] for r in ranks) == single["bytes_read"]
