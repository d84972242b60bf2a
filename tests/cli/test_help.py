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


def _help_at_80_columns(args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "wa_cli", *args, "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "80", "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_help_fits_one_screen_at_80_columns_with_no_flag_or_metavar_split():
    from typer.main import get_command

    from wa_cli.cli.app import app

    group = get_command(app)
    for name in COMMANDS:
        text = _help_at_80_columns([name])
        lines = text.splitlines()
        # One tall screen: average and ema gained the soup and post-hoc EMA panels (issues 23, 24).
        assert len(lines) <= 60, (name, len(lines))
        assert all(len(line) <= 80 for line in lines), name
        assert "<bool>" not in text, name  # flags look like flags (no `--force <bool>`)
        assert lines[0].startswith(f"Usage: wa {name} [OPTIONS] ") and "{" not in lines[0]
        command = group.commands[name]  # type: ignore[attr-defined]  # a click Group
        for param in command.params:
            flags = [f for f in param.opts if f.startswith("-")]
            if not flags:
                continue
            # The help lists `-o, --output FILE`: the flags and the metavar on one line.
            shown = ", ".join(flags) + (f" {param.metavar}" if param.metavar else "")
            assert any(shown in line for line in lines), (name, shown)
        # A word never breaks at a hyphen across lines (--from-\nstep).
        assert not any(line.rstrip().endswith("-") for line in lines), name


def test_force_is_a_plain_flag_and_dash_v_prints_the_version():
    text = _help_at_80_columns(["average"])
    assert "  --force " in text and "--force <" not in text and "--no-force" not in text
    short, long = run_wa_process(["-V"]), run_wa_process(["--version"])
    assert short.code == long.code == 0 and short.stdout == long.stdout
    assert "--install-completion" not in _help_at_80_columns([])


def test_commands_are_listed_in_one_order_whatever_is_imported_first():
    order = ["average", "ema", "graft", "bn-recalibrate", "inspect-entropy"]
    for first in ["wa_cli.cli.inspect_entropy", "wa_cli.cli.graft", "wa_cli.cli.app"]:
        code = (
            f"import {first}\nfrom wa_cli.cli.app import app\nfrom typer.main import get_command\n"
            "print(' '.join(get_command(app).commands))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == order, first
    listed = [
        line.split()[0]
        for line in _help_at_80_columns([]).split("Commands:")[1].splitlines()
        if line.strip()
    ]
    assert listed == order
