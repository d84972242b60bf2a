"""``--force`` replaces only what wa writes at that place; a link at ``-o`` is refused at once.

Refused in one line (exit 5), ``--force`` or not, with the file untouched and no temporary left:
a training script or model code at ``-o`` or ``--plot``, and any symbolic link (``-o /dev/stdout``
with stdout redirected replaced the link itself; a dangling link was found only after the whole
write). Replaced with ``--force``: an earlier safetensors output, an earlier plot, an empty file.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import assert_one_line_error, make_trajectory, run_wa
from tests.io.faults import snapshot, temporaries

SCRIPT = "import torch\n\nprint('training')\n"


def _no_tensor_read(monkeypatch):
    """Fail the test if any tensor byte is read (the refusal must come first)."""

    def read(*args, **kwargs):
        raise AssertionError("a tensor was read before the output was checked")

    monkeypatch.setattr("wa_cli.io.checkpoint.PositionalFile.read", read)


@pytest.mark.parametrize("name", ["train.py", "notes.txt", "o.safetensors"])
def test_force_never_replaces_a_file_wa_did_not_write(tmp_path, capsys, monkeypatch, name):
    traj = make_trajectory(tmp_path / "run", n=2)
    target = tmp_path / name
    target.write_text(SCRIPT)
    before = snapshot(tmp_path)
    _no_tensor_read(monkeypatch)
    r = run_wa(["average", *traj.paths, "-o", target, "--force"], capsys)
    assert_one_line_error(r, 5, str(target), "not a safetensors file", "even with --force")
    assert snapshot(tmp_path) == before and temporaries(tmp_path) == []


def test_without_force_a_script_is_not_told_to_use_force(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=2)
    target = tmp_path / "train.py"
    target.write_text(SCRIPT)
    r = run_wa(["average", *traj.paths, "-o", target], capsys)
    assert_one_line_error(r, 5, "not a safetensors file")
    assert "pass --force" not in r.stderr
    assert target.read_text() == SCRIPT


def test_plot_force_never_replaces_model_code(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    traj = make_trajectory(tmp_path / "run", n=1)
    code = tmp_path / "mynet.py"
    code.write_text(SCRIPT)
    r = run_wa(["inspect-entropy", traj.paths[0], "--plot", code, "--force"], capsys)
    assert_one_line_error(r, 5, "mynet.py", "not a plot", "even with --force")
    assert code.read_text() == SCRIPT and temporaries(tmp_path) == []


def test_plot_force_replaces_an_earlier_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    traj = make_trajectory(tmp_path / "run", n=1)
    png = tmp_path / "e.png"
    assert run_wa(["inspect-entropy", traj.paths[0], "--plot", png], capsys).code == 0
    os.utime(png, ns=(0, 0))
    assert run_wa(["inspect-entropy", traj.paths[0], "--plot", png, "--force"], capsys).code == 0
    assert png.stat().st_mtime_ns != 0 and png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("dangling", [False, True])
def test_a_link_at_the_output_is_refused_before_any_tensor_is_read(
    tmp_path, capsys, monkeypatch, dangling
):
    """``-o /dev/stdout --force`` with stdout sent to a file: the link, not the file, would go."""
    traj = make_trajectory(tmp_path / "run", n=2)
    target = tmp_path / "stdout.safetensors"
    save_file({"0.weight": torch.zeros(1)}, target)  # even a safetensors file behind the link
    link = tmp_path / "out.safetensors"
    link.symlink_to(tmp_path / "gone.safetensors" if dangling else target)
    before = snapshot(tmp_path)
    _no_tensor_read(monkeypatch)
    r = run_wa(["average", *traj.paths, "-o", link, "--force"], capsys)
    assert_one_line_error(r, 5, str(link), "symbolic link")
    assert "appeared while wa was writing" not in r.stderr
    assert link.is_symlink() and snapshot(tmp_path) == before and temporaries(tmp_path) == []


def test_dev_stdout_is_refused_even_with_force(tmp_path, capsys):
    if not os.path.islink("/dev/stdout"):
        pytest.skip("/dev/stdout is not a link here")
    traj = make_trajectory(tmp_path / "run", n=2)
    r = run_wa(["average", *traj.paths, "-o", "/dev/stdout", "--force"], capsys)
    assert r.code == 5 and os.path.islink("/dev/stdout")


def test_force_replaces_an_empty_file_and_an_earlier_output(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=2)
    out = tmp_path / "o.safetensors"
    out.touch()
    assert run_wa(["average", *traj.paths, "-o", out, "--force"], capsys).code == 0
    first = load_file(out)
    assert run_wa(["average", traj.paths[0], "-o", out, "--force"], capsys).code == 0
    assert torch.equal(load_file(out)["0.weight"], traj.states[0]["0.weight"])
    assert set(first) == set(traj.states[0])


def test_graft_refuses_a_dangling_link_before_reading(tmp_path, capsys, monkeypatch):
    traj = make_trajectory(tmp_path / "run", n=2)
    link = tmp_path / "g.safetensors"
    link.symlink_to(tmp_path / "gone.safetensors")
    _no_tensor_read(monkeypatch)
    r = run_wa(["graft", *traj.paths, "-o", link], capsys)
    assert_one_line_error(r, 5, str(link), "symbolic link")
    assert link.is_symlink() and temporaries(tmp_path) == []
