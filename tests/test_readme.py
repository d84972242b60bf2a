"""The README's set-up commands and examples: every `wa` line of its sh blocks runs and succeeds."""

from __future__ import annotations

import glob
import re
import shlex

from tests.helpers import REPO

README = (REPO / "README.md").read_text()


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.S)


def wa_commands() -> list[str]:
    return [
        line.strip()
        for block in sh_blocks()
        for line in block.splitlines()
        if line.strip().startswith("wa ")
    ]


def test_readme_opens_with_the_two_setup_commands():
    first = sh_blocks()[0].strip().splitlines()
    assert len(first) == 2
    install_and_run, install_and_test = first
    assert "pip install torch==2.13.0" in install_and_run
    assert "wa average sample_checkpoints/" in install_and_run
    assert "pip install torch==2.13.0" in install_and_test
    test_command = install_and_test.split("&&")[-1].strip()
    assert test_command == "python -m pytest -q"
    ci = (REPO / ".ci" / "run").read_text()
    assert "torch==2.13.0" in ci and test_command in ci


def _argv(command: str) -> list[str]:
    """A README command line as the shell passes it: unquoted globs expanded and sorted."""
    args = []
    for token in shlex.split(command)[1:]:
        quoted = f"'{token}'" in command or f'"{token}"' in command
        matches = sorted(glob.glob(token)) if not quoted and glob.has_magic(token) else []
        args.extend(matches or [token])
    return args


def test_every_readme_example_runs(tmp_path, monkeypatch, capsys):
    """In-process, through the console script's entry point (a real process adds nothing here:
    test_help and test_stderr run `python -m wa_cli` where the process itself matters)."""
    from wa_cli.cli.app import main

    commands = wa_commands()
    assert len(commands) >= 10
    (tmp_path / "sample_checkpoints").symlink_to(REPO / "sample_checkpoints")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        try:
            main(_argv(command))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0
        err = capsys.readouterr().err
        assert code == 0, f"{command}\n{err}"
        assert "Traceback" not in err
    for made in ("swa.safetensors", "swa_bn.safetensors", "ema.safetensors", "grafted.safetensors"):
        assert (tmp_path / made).is_file(), made


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_python_section_runs_in_process(tmp_path, monkeypatch, capsys):
    """The README's `import wa_cli as wa` block, run as written on the sample trajectory."""
    block = next(b for b in python_blocks() if b.startswith("import wa_cli as wa"))
    (tmp_path / "sample_checkpoints").symlink_to(REPO / "sample_checkpoints")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "swa.safetensors").is_file()
    assert (tmp_path / "swa_bn.safetensors").is_file()
    assert "non_float='lst' is not one of 'last', 'first', 'error'" in capsys.readouterr().out
    section = README.split("## From Python")[1].split("\n## ")[0]
    assert all(name in section for name in ("wa-toolkit", "`wa`", "`wa_cli`"))


def test_the_architecture_section_names_every_folder():
    section = README.split("## Architecture")[1].split("\n## ")[0]
    folders = sorted(p.name for p in (REPO / "wa_cli").iterdir() if (p / "__init__.py").exists())
    for folder in folders:
        assert f"wa_cli/{folder}/" in section, folder
