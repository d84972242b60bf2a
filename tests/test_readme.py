"""The README's set-up commands and examples: every `wa` line of its sh blocks runs and succeeds."""

from __future__ import annotations

import os
import re
import subprocess
import sys

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


def test_every_readme_example_runs(tmp_path):
    commands = wa_commands()
    assert len(commands) >= 10
    (tmp_path / "sample_checkpoints").symlink_to(REPO / "sample_checkpoints")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    wa = f"{sys.executable} -m wa_cli"
    for command in commands:
        proc = subprocess.run(
            wa + command[2:], shell=True, cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{command}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr
    for made in ("swa.safetensors", "swa_bn.safetensors", "ema.safetensors", "grafted.safetensors"):
        assert (tmp_path / made).is_file(), made
