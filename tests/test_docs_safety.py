"""docs/safety.md: the refusal it quotes is what wa prints (its sh blocks run in test_docs)."""

from __future__ import annotations

import glob
import re
import shlex

from tests.helpers import REPO, run_wa

DOC = (REPO / "docs" / "safety.md").read_text()


def _argv(command: str) -> list[str]:
    args = []
    for token in shlex.split(command)[1:]:
        matches = sorted(glob.glob(token)) if glob.has_magic(token) else []
        args.extend(matches or [token])
    return args


def _setup(tmp_path, monkeypatch):
    (tmp_path / "sample_checkpoints").symlink_to(REPO / "sample_checkpoints")
    monkeypatch.chdir(tmp_path)


def test_the_quoted_force_refusal_is_what_wa_prints(tmp_path, monkeypatch, capsys):
    _setup(tmp_path, monkeypatch)
    (tmp_path / "train.py").write_text("print('training')\n")
    quoted = re.search(r"\$ (wa average .* -o train.py --force)\n(wa: error: .*)\n", DOC)
    assert quoted is not None
    r = run_wa(_argv(quoted.group(1)), capsys)
    assert r.code == 5 and r.stderr.strip() == quoted.group(2)
