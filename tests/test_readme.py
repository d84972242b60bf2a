"""The README's set-up commands and examples: every `wa` line of its sh blocks runs and succeeds."""

from __future__ import annotations

from tests.docblocks import blocks, in_sample_folder, run_file, wa_lines
from tests.helpers import REPO

README = (REPO / "README.md").read_text()


def test_readme_opens_with_the_two_setup_commands():
    first = blocks(README)[0].body.strip().splitlines()
    assert len(first) == 2
    install_and_run, install_and_test = first
    assert "pip install torch==2.13.0" in install_and_run
    assert "wa average sample_checkpoints/" in install_and_run
    assert "pip install torch==2.13.0" in install_and_test
    test_command = install_and_test.split("&&")[-1].strip()
    assert test_command == "python -m pytest -q"
    ci = (REPO / ".ci" / "run").read_text()
    assert "torch==2.13.0" in ci and test_command in ci


def test_readme_is_short_with_a_contents_list():
    assert len(README.splitlines()) <= 250
    contents = README.split("## Contents")[1].split("\n## ")[0]
    for heading in ("What it promises", "A tour on the sample trajectory", "On your own run"):
        assert f"[{heading}]" in contents and f"\n## {heading}\n" in README


def test_every_readme_example_runs(tmp_path, monkeypatch, capsys):
    """The tour's four commands and the ten lines of Python, as written, on the sample run."""
    commands = [c for b in blocks(README) if b.lang == "sh" and not b.skipped for c in wa_lines(b)]
    assert len(commands) >= 4
    folder = in_sample_folder(tmp_path, monkeypatch)
    printed = run_file(REPO / "README.md", capsys)
    for made in ("swa.safetensors", "swa_bn.safetensors", "ema.safetensors", "grafted.safetensors"):
        assert (folder / made).is_file(), made
    assert "non_float='lst' is not one of 'last', 'first', 'error'" in printed
    section = README.split("## From Python")[1].split("\n## ")[0]
    assert all(name in section for name in ("wa-toolkit", "`wa`", "`wa_cli`"))


def test_install_hints_work_from_a_checkout():
    """`wa-toolkit` is not published: no hint may tell a user to install it by name."""
    for path in [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("wa_cli/**/*.py")]:
        assert "install 'wa-toolkit" not in path.read_text(), path
        assert 'install "wa-toolkit' not in path.read_text(), path
