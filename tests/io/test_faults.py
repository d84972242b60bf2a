"""Fault injection on the atomic writer: every interrupt leaves the old or the new output, whole."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import assert_one_line_error, make_trajectory, run_wa
from tests.io.faults import snapshot, temporaries
from wa_cli.errors import ExitCode, WaError
from wa_cli.io import atomic
from wa_cli.io.writer import INDEX_NAME, write_state_dict

OLD = {"a": torch.ones(300), "b": torch.zeros(300)}
NEW = {"c": torch.full((600,), 2.0)}


def _folder_state(folder):
    index = json.loads((folder / INDEX_NAME).read_text())
    out = {}
    for shard in set(index["weight_map"].values()):
        out.update(load_file(folder / shard))
    assert set(out) == set(index["weight_map"])
    return out


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_interrupt_at_the_folder_exchange_leaves_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_state_dict(OLD, out, max_shard_size=1000)

    def interrupted(a, b):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "_exchange", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_state_dict(NEW, out, force=True, max_shard_size=1000)
    assert _same(_folder_state(out), OLD)
    assert temporaries(tmp_path) == []


def test_interrupt_while_removing_the_old_folder_leaves_the_new_one(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_state_dict(OLD, out, max_shard_size=1000)
    real_rmtree = shutil.rmtree
    calls = []

    def half_then_interrupt(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:  # delete one file of the old copy, then the interrupt lands
            os.unlink(next(p for p in path.iterdir()))
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_state_dict(NEW, out, force=True, max_shard_size=1000)
    assert _same(_folder_state(out), NEW)
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("step", [1, 2])
def test_fallback_renames_restore_the_old_folder_on_an_interrupt(tmp_path, monkeypatch, step):
    """Without RENAME_EXCHANGE: old aside, new in; an interrupt at either rename keeps the old."""
    out = tmp_path / "out"
    write_state_dict(OLD, out, max_shard_size=1000)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real_rename = os.rename
    count = []

    def rename(src, dst):
        count.append(1)
        if len(count) == step:
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        write_state_dict(NEW, out, force=True, max_shard_size=1000)
    assert _same(_folder_state(out), OLD)
    assert temporaries(tmp_path) == []


def test_fallback_replaces_the_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_state_dict(OLD, out, max_shard_size=1000)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    write_state_dict(NEW, out, force=True, max_shard_size=1000)
    assert _same(_folder_state(out), NEW)
    assert temporaries(tmp_path) == []


def test_a_destination_created_meanwhile_is_never_overwritten(tmp_path, monkeypatch):
    """Two runs without --force: the second to finish fails, the first one's output stays."""
    out = tmp_path / "o.safetensors"
    real = atomic._commit

    def other_run_wins(p):
        out.write_bytes(b"the other run")
        real(p)

    monkeypatch.setattr(atomic, "_commit", other_run_wins)
    with pytest.raises(WaError, match="appeared while wa was writing") as e:
        write_state_dict(NEW, out)
    assert e.value.code == ExitCode.OUTPUT
    assert out.read_bytes() == b"the other run"
    assert temporaries(tmp_path) == []


def test_a_folder_created_meanwhile_is_never_overwritten(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = atomic._commit

    def other_run_wins(p):
        monkeypatch.setattr(atomic, "_commit", real)
        write_state_dict(OLD, out, max_shard_size=1000)
        real(p)

    monkeypatch.setattr(atomic, "_commit", other_run_wins)
    with pytest.raises(WaError, match="appeared"):
        write_state_dict(NEW, out, max_shard_size=1000)
    assert _same(_folder_state(out), OLD)
    assert temporaries(tmp_path) == []


def test_a_245_character_output_name_works(tmp_path):
    out = tmp_path / ("x" * 229 + ".safetensors")
    assert len(out.name) == 241
    out = tmp_path / ("y" * 233 + ".safetensors")
    assert len(out.name) == 245
    write_state_dict(NEW, out)
    assert _same(load_file(out), NEW)
    assert temporaries(tmp_path) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_a_killed_run_are_removed_with_one_line(tmp_path, caplog):
    out = tmp_path / "o.safetensors"
    pid = _dead_pid()
    stale_file = tmp_path / f".o.safetensors.wa-tmp-{pid}-0123abcd"
    stale_file.write_bytes(b"x" * 1000)
    stale_dir = tmp_path / f".o.safetensors.wa-tmp-{pid}-deadbeef"
    stale_dir.mkdir()
    (stale_dir / "model-00001-of-00001.safetensors").write_bytes(b"y")
    alive = tmp_path / f".o.safetensors.wa-tmp-{os.getppid()}-00000000"
    alive.write_bytes(b"a running wa's")
    other = tmp_path / f".other.safetensors.wa-tmp-{pid}-00000000"
    other.write_bytes(b"another destination's")
    with caplog.at_level("WARNING", logger="wa_cli"):
        write_state_dict(NEW, out)
    assert not stale_file.exists() and not stale_dir.exists()
    assert alive.exists() and other.exists()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "removed 2 temporary file(s)" in lines[0], lines


def test_stale_temporaries_of_a_long_name_are_found(tmp_path):
    out = tmp_path / ("z" * 245)
    pid = _dead_pid()
    stale = atomic.temporary_sibling(out).name.replace(f"-{os.getpid()}-", f"-{pid}-")
    (tmp_path / stale).write_bytes(b"x")
    write_state_dict(NEW, out)
    assert temporaries(tmp_path) == []


def _graft_inputs(tmp_path):
    traj = make_trajectory(tmp_path / "run", n=3)
    return traj, tmp_path / "grafted"


def test_graft_of_three_on_a_full_disk_leaves_none_of_its_outputs(tmp_path, capsys, monkeypatch):
    from wa_cli.io import writer

    traj, out = _graft_inputs(tmp_path)
    before = snapshot(tmp_path)
    real_init = writer._FileSink.__init__
    opened = []

    def third_fails(self, path, *args):
        opened.append(path)
        if len(opened) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_init(self, path, *args)

    monkeypatch.setattr(writer._FileSink, "__init__", third_fails)
    r = run_wa(["graft", *traj.paths, "-o", out], capsys)
    assert_one_line_error(r, 5, "No space left")
    assert snapshot(tmp_path / "run") == before
    assert list(out.iterdir()) == []
    assert temporaries(tmp_path) == []


def test_graft_of_three_commits_all_outputs(tmp_path, capsys):
    traj, out = _graft_inputs(tmp_path)
    assert run_wa(["graft", *traj.paths, "-o", out], capsys).code == 0
    assert len(list(out.glob("*.grafted.safetensors"))) == 3
    assert temporaries(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root and mount rights; skips elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
            check=True, capture_output=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_real_full_disk_leaves_the_previous_output(small_tmpfs, capsys):
    out = small_tmpfs / "o.safetensors"
    write_state_dict(NEW, out)
    before = out.read_bytes()
    big = {"w": torch.ones(400_000)}  # 1.6 MB: does not fit
    with pytest.raises(WaError, match="No space left") as e:
        write_state_dict(big, out, force=True)
    assert e.value.code == ExitCode.OUTPUT
    assert out.read_bytes() == before
    assert temporaries(small_tmpfs) == []


def test_graft_of_three_on_a_real_full_disk_leaves_none(tmp_path, small_tmpfs, capsys):
    from tests.helpers import save_file

    paths = []
    for i in range(3):  # 3 x 400 kB inputs on the big disk; two outputs fit in 1 MiB, not three
        p = tmp_path / f"r{i}.safetensors"
        torch.manual_seed(i)
        save_file({"w": torch.randn(100_000)}, p)
        paths.append(p)
    out = small_tmpfs / "g"
    r = run_wa(["graft", *paths, "-o", out], capsys)
    assert_one_line_error(r, 5, "No space left")
    assert list(out.iterdir()) == []
    assert temporaries(small_tmpfs) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_a_failed_commit_in_a_transaction_rolls_back_the_earlier_ones(
    tmp_path, monkeypatch, exchange
):
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_state_dict(OLD, first)
    old_bytes = first.read_bytes()
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real = atomic._commit

    def second_fails(p):
        if p.destination == second:
            raise OSError(errno.EIO, "I/O error")
        real(p)

    monkeypatch.setattr(atomic, "_commit", second_fails)
    with pytest.raises(WaError, match="I/O error"), atomic.transaction():
        write_state_dict(NEW, first, force=True)
        write_state_dict(NEW, second)
    assert first.read_bytes() == old_bytes
    assert not second.exists()
    assert temporaries(tmp_path) == []


def test_plot_on_a_full_disk_is_one_line(tmp_path, small_tmpfs, capsys):
    pytest.importorskip("matplotlib")
    traj = make_trajectory(tmp_path / "run", n=1)
    filler = small_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk: no room for a PNG
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    png = small_tmpfs / "entropy.png"
    r = run_wa(["inspect-entropy", traj.paths[0], "--plot", png], capsys)
    assert_one_line_error(r, 5, "No space left")
    assert not png.exists() and temporaries(small_tmpfs) == []
