"""stderr hygiene: library warnings as `wa: warning:` lines, -q silences them, no stray lines."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import torch
from safetensors.torch import save_file

from tests.helpers import (
    REPO,
    CliResult,
    assert_one_line_error,
    make_trajectory,
    run_wa,
    run_wa_process,
)

DUPLICATE = "is given more than once; used once"


def test_library_warning_is_a_prefixed_line(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "o.safetensors"
    r = run_wa(["average", traj.paths[0], traj.paths[0], "-o", out], capsys)
    assert r.code == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if DUPLICATE in line]
    assert lines == [f"wa: warning: input '{traj.paths[0]}' {DUPLICATE}"], r.stderr


def test_quiet_silences_library_warnings(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "o.safetensors"
    r = run_wa(["average", traj.paths[0], traj.paths[0], "-o", out, "--quiet"], capsys)
    assert r.code == 0 and r.stderr == "", r.stderr
    # A real process too: there no handler of pytest's would absorb an unhandled record.
    r = run_wa_process(["average", traj.paths[0], traj.paths[0], "-o", out, "--force", "-q"])
    assert r.code == 0 and r.stderr == "", r.stderr


def test_the_handler_is_removed_after_each_run(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "o.safetensors"
    before = list(logging.getLogger("wa_cli").handlers)
    for _ in range(2):
        r = run_wa(["average", traj.paths[0], traj.paths[0], "-o", out, "--force"], capsys)
        assert r.stderr.count(DUPLICATE) == 1, r.stderr  # never once per earlier run
    assert logging.getLogger("wa_cli").handlers == before


def test_debug_prints_info_records_too(tmp_path, capsys):
    for i, loss in enumerate((0.5, 0.25)):
        save_file({"w": torch.ones(2)}, tmp_path / f"c{i}.safetensors", {"val_loss": str(loss)})
    args = ["average", tmp_path, "--top-k", "5", "--metric", "val_loss", "--dry-run", "--json"]
    note = "--top-k 5: only 2 checkpoints; keeping all"
    assert note not in run_wa(args, capsys).stderr
    r = run_wa([*args, "--debug"], capsys)
    assert r.code == 0, r.stderr
    assert f"wa: info: wa_cli.select.pick: {note}" in r.stderr.splitlines(), r.stderr


# A fresh process: pytest's own warning capture would hide what a user sees on a terminal.
WARNS_THEN_FAILS = """
import sys, warnings
import wa_cli.methods.inputs as inputs
from wa_cli.errors import ExitCode, WaError

def open_inputs(*args, **kwargs):
    # What torch.load, or a torch call made by wa, emits (module names as Python records them).
    warnings.warn_explicit("TypedStorage is deprecated", UserWarning, "torch/storage.py", 1,
                           module="torch.storage")
    warnings.warn_explicit("buffer is not writable", UserWarning, "wa_cli/io/reader.py", 1,
                           module="wa_cli.io.reader")
    warnings.warn_explicit("my model warns", UserWarning, "mymodel.py", 1, module="mymodel")
    raise WaError("stop here", ExitCode.BAD_INPUT)

inputs.open_inputs = open_inputs
from wa_cli.cli.app import main
main(sys.argv[1:])
"""


def _run_warns_then_fails(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WARNS_THEN_FAILS, "average", "x.safetensors", *flags],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_torch_warnings_never_precede_the_error_line():
    proc = _run_warns_then_fails()
    lines = proc.stderr.strip().splitlines()
    assert lines == ["wa: warning: my model warns", "wa: error: stop here"], proc.stderr
    quiet = _run_warns_then_fails("-q")
    assert_one_line_error(CliResult(quiet.returncode, quiet.stdout, quiet.stderr), 3, "stop here")
