"""Run a Markdown file's code blocks as a reader would: in order, in one folder.

A block's fence is ```` ```LANG INFO ````. `sh` blocks run each `wa ...` line in-process through the
console script's entry point (a real process adds nothing here: test_help and test_stderr run
`python -m wa_cli` where the process itself matters); `python` blocks run with `exec`, all of one
file's blocks in one namespace, so a later block may use what an earlier one imported. A block
whose info string says `skip-test: REASON` is not run (paths of the reader's own run, several
nodes): the reason is required.
"""

from __future__ import annotations

import glob
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO

SKIP = "skip-test:"


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, the rest of its info string, and its text."""

    lang: str
    info: str
    body: str
    line: int  # where the fence opens, 1-based

    @property
    def skipped(self) -> bool:
        return SKIP in self.info

    @property
    def skip_reason(self) -> str:
        return self.info.split(SKIP, 1)[1].strip() if self.skipped else ""


def blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, in order."""
    found = []
    for m in re.finditer(r"^```(\w*)([^\n]*)\n(.*?)^```", text, flags=re.S | re.M):
        line = text.count("\n", 0, m.start()) + 1
        found.append(Block(m.group(1), m.group(2).strip(), m.group(3), line))
    return found


def wa_lines(block: Block) -> list[str]:
    """The `wa ...` command lines of an sh block."""
    return [ln.strip() for ln in block.body.splitlines() if ln.strip().startswith("wa ")]


def other_lines(block: Block) -> list[str]:
    """The lines of an sh block that are neither `wa ...` commands, comments nor blank."""
    return [
        ln
        for ln in block.body.splitlines()
        if ln.strip() and not ln.strip().startswith(("wa ", "#"))
    ]


def argv(command: str) -> list[str]:
    """A command line as the shell passes it: unquoted globs expanded and sorted."""
    args = []
    for token in shlex.split(command)[1:]:
        quoted = f"'{token}'" in command or f'"{token}"' in command
        matches = sorted(glob.glob(token)) if not quoted and glob.has_magic(token) else []
        args.extend(matches or [token])
    return args


def run_wa(command: str, capsys) -> None:
    """Run one `wa` line in-process; fail with its stderr unless it exits 0 without a traceback."""
    from wa_cli.cli.app import main

    try:
        main(argv(command))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    err = capsys.readouterr().err
    assert code == 0, f"{command}\n{err}"
    assert "Traceback" not in err, f"{command}\n{err}"


def in_sample_folder(tmp_path: Path, monkeypatch) -> Path:
    """A scratch folder holding `sample_checkpoints/`, made the working directory."""
    (tmp_path / "sample_checkpoints").symlink_to(REPO / "sample_checkpoints")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_file(path: Path, capsys, langs: tuple[str, ...] = ("sh", "python")) -> str:
    """Run every unskipped sh and python block of ``path`` in order; returns what they printed.

    On one torch thread: the test machine's cores are shared, and a second thread made the small
    training loop of docs/python.md several times slower there (the results do not depend on it).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_blocks(path, capsys, langs)
    finally:
        torch.set_num_threads(threads)


def _run_blocks(path: Path, capsys, langs: tuple[str, ...]) -> str:
    namespace: dict[str, object] = {"__name__": f"doc:{path.name}"}
    printed = []
    for block in blocks(path.read_text()):
        if block.lang not in langs or block.skipped:
            continue
        where = f"{path.name}:{block.line}"
        if block.lang == "sh":
            for command in wa_lines(block):
                run_wa(command, capsys)
        else:
            exec(compile(block.body, where, "exec"), namespace)
            printed.append(capsys.readouterr().out)
    return "".join(printed)
