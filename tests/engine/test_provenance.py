"""What an output records about the command that made it: the real wa command, or the API."""

from __future__ import annotations

import shlex
import sys

from safetensors import safe_open

from tests.helpers import make_trajectory, run_wa
from wa_cli.engine.provenance import API_COMMAND, current_command
from wa_cli.methods.average import average_to_file


def _command_of(path) -> str:
    with safe_open(str(path), "pt") as f:
        return f.metadata()["wa_command"]


def test_library_call_records_the_python_api_not_sys_argv(tmp_path, monkeypatch):
    # What a Jupyter kernel's sys.argv looks like.
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "kernel.json"])
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "o.safetensors"
    average_to_file(traj.paths, out)
    assert _command_of(out) == API_COMMAND == "(python API)"


def test_command_parameter_still_overrides(tmp_path):
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "o.safetensors"
    average_to_file(traj.paths, out, command="wa average by hand")
    assert _command_of(out) == "wa average by hand"


def test_cli_records_its_own_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "-k", "something else"])
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "o.safetensors"
    args = ["average", *map(str, traj.paths), "-o", str(out), "-q"]
    assert run_wa(args, capsys).code == 0
    assert _command_of(out) == shlex.join(["wa", *args])
    assert current_command() == API_COMMAND  # cleared once the command is over
