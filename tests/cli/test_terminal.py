"""Names from untrusted files reach the terminal escaped; JSON keeps them exact; user code that
exits is one line naming it; --bins has a maximum."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import assert_one_line_error, make_trajectory, run_wa

EVIL = "layer\x1b]0;pwned\x07\x1b[2J.weight"
MARKUP = "[bold red]x[/]"


def _evil_pair(tmp_path):
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        p = tmp_path / f"e{i}.safetensors"
        save_file({EVIL: torch.randn(8, 4), MARKUP: torch.randn(4)}, p)
        paths.append(p)
    return paths


@pytest.mark.parametrize(
    "command", [["inspect-entropy"], ["graft", "--dry-run"], ["inspect-entropy", "--by", "tensor"]]
)
def test_control_characters_in_names_are_escaped_in_tables(tmp_path, capsys, command):
    paths = _evil_pair(tmp_path)
    r = run_wa([command[0], *paths, *command[1:]], capsys)
    assert r.code == 0, r.stderr
    assert "\x1b" not in r.stdout + r.stderr and "\x07" not in r.stdout
    assert "\\x1b" in r.stdout
    if command[-1] == "tensor":
        assert MARKUP in r.stdout  # shown as written, not read as rich markup


def test_json_output_keeps_names_exact(tmp_path, capsys):
    paths = _evil_pair(tmp_path)
    r = run_wa(["inspect-entropy", *paths, "--by", "tensor", "--json"], capsys)
    assert r.code == 0, r.stderr
    names = json.dumps(json.loads(r.stdout))
    assert json.dumps(EVIL)[1:-1] in names


def test_control_characters_in_an_error_are_escaped(tmp_path, capsys):
    a = tmp_path / "a.safetensors"
    b = tmp_path / "b.safetensors"
    save_file({EVIL: torch.ones(2)}, a)
    save_file({EVIL: torch.ones(3)}, b)
    r = run_wa(["average", a, b, "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(r, 4)
    assert "\x1b" not in r.stderr


def test_a_model_factory_calling_sys_exit_is_one_line(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=1)
    code = tmp_path / "net.py"
    code.write_text("import sys\ndef build():\n    sys.exit(7)\ndef loader():\n    return []\n")
    r = run_wa(
        ["bn-recalibrate", traj.paths[0], "--model", f"{code}:build", "--data",
         f"{code}:loader", "-o", tmp_path / "o.safetensors"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(r, 3, "model factory 'build' called sys.exit(7)")
    assert not (tmp_path / "o.safetensors").exists()


def test_a_model_file_calling_sys_exit_on_import_is_one_line(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=1)
    code = tmp_path / "net.py"
    code.write_text("import sys\nsys.exit(3)\n")
    r = run_wa(
        ["bn-recalibrate", traj.paths[0], "--model", f"{code}:build", "--data",
         f"{code}:loader", "-o", tmp_path / "o.safetensors"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(r, 3, "called sys.exit(3)")


@pytest.mark.parametrize("bins", [str(10**8), str(2**62), str(2**64)])
def test_bins_past_the_maximum_is_one_line(tmp_path, capsys, bins):
    traj = make_trajectory(tmp_path / "run", n=1)
    r = run_wa(["inspect-entropy", traj.paths[0], "--bins", bins], capsys)
    assert_one_line_error(r, 2, "bins must be an integer from 2 to 1000000")


def test_a_closed_stdout_after_the_output_is_written_is_exit_0_and_silent(tmp_path):
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from tests.helpers import REPO

    traj = make_trajectory(tmp_path / "run", n=2, one_run=True)
    out = tmp_path / "o.safetensors"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wa_cli", "average", *map(str, traj.paths), "-o", str(out),
         "--json", "-q"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()  # the reader went away (`| head -0`)
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, stderr
    assert stderr == ""
    assert set(load_file(out)) == set(traj.states[0])
