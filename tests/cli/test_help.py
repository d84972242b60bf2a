"""Help and version: instant (no torch import), and every command documents its key options."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import REPO, run_wa_process

# Each command, and words its help must show (the options users come for).
COMMANDS = {
    "average": ["--weights", "--top-k", "--max-shard-size"],
    "ema": ["--half-life", "not Lookahead"],
    "graft": ["--rule", "--dry-run"],
    "inspect-entropy": ["--l1-threshold", "--plot"],
    "bn-recalibrate": ["--forward", "--weighting"],
}


def test_help_of_every_command_does_not_import_torch():
    code = (
        "import sys\nfrom wa_cli.cli.app import main\n"
        f"for args in [['--help'], *[[c, '--help'] for c in {list(COMMANDS)!r}]]:\n"
        "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'help imported torch'\n"
    )
    wide = {**os.environ, "COLUMNS": "200"}  # so help text is not wrapped mid-word
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=wide
    )
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for command, words in COMMANDS.items():
        assert command in text
        for word in words:
            assert word in text, (command, word)


def test_version():
    r = run_wa_process(["--version"])
    assert r.code == 0 and r.stdout.startswith("wa ")


def test_bare_wa_prints_the_help_and_no_error_line():
    r = run_wa_process([])
    assert r.code == 0, r.stderr
    assert "Usage" in r.stdout and "average" in r.stdout
    assert "error" not in r.stderr and r.stderr.strip() == "", r.stderr
