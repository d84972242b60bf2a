"""How the ``wa`` process ends: without the interpreter's teardown, once everything is flushed.

The teardown (mostly torch's own) cost ~30 % of a small run (benchmarks/bench_teardown.py), so a
command that runs only wa's code ends with ``os._exit`` after flushing stdout and stderr;
``bn-recalibrate``, which runs the user's model and data loader, ends normally, and so does a
command under a profiler. Each case is a real process: an ``atexit``
hook shows whether the teardown ran, and the pipes show that nothing printed was lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import REPO, make_trajectory

SAMPLE = REPO / "sample_checkpoints"
# Runs wa's console entry point with an atexit hook that prints a marker on the teardown path.
ENTRY = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('TEARDOWN', file=sys.stderr))\n"
    "sys.argv = ['wa', *sys.argv[1:]]\n"
    "from wa_cli.__main__ import main\n"
    "main()\n"
)


def wa_process(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *map(str, args)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def test_a_finished_command_skips_the_teardown_and_loses_no_output(tmp_path):
    paths = make_trajectory(tmp_path / "run", n=3).paths
    out = tmp_path / "avg.safetensors"
    r = wa_process("average", *paths, "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    assert "TEARDOWN" not in r.stderr
    report = json.loads(r.stdout)  # the whole JSON arrived: stdout was flushed before the exit
    assert report["outputs"] == [str(out)]
    assert out.is_file()


def test_a_user_error_keeps_its_exit_code_and_one_line(tmp_path):
    r = wa_process("average", tmp_path / "missing.safetensors", "-o", tmp_path / "o.safetensors")
    assert r.returncode == 3
    assert "TEARDOWN" not in r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith("wa: error: ")


def test_long_output_through_a_pipe_arrives_whole():
    r = wa_process("inspect-entropy", SAMPLE / "run_a" / "ckpt_1035.safetensors", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows  # parsed to the end


def test_bn_recalibrate_runs_user_code_and_keeps_the_teardown(tmp_path):
    out = tmp_path / "bn.safetensors"
    r = wa_process(
        "bn-recalibrate", SAMPLE / "run_a" / "ckpt_1035.safetensors",
        "--model", f"{SAMPLE / 'model.py'}:build", "--data", f"{SAMPLE / 'model.py'}:train_loader",
        "-o", out, "-q",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "TEARDOWN" in r.stderr and out.is_file()


def test_under_a_profiler_the_teardown_runs_and_the_profile_is_written(tmp_path):
    """cProfile (and coverage) write their results during the teardown: it must run."""
    paths = make_trajectory(tmp_path / "run", n=2).paths
    prof = tmp_path / "wa.prof"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    profiled = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "wa_cli"]
    r = subprocess.run(
        [*profiled, "average", *map(str, paths), "-o", str(tmp_path / "a.safetensors"), "-q"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert prof.stat().st_size > 0
