"""--include/--exclude/--filter patterns run in linear time (issue 22 item 16)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import REPO, assert_one_line_error, run_wa
from wa_cli.io import regex
from wa_cli.io.regex import PatternError

EVIL = "(a+)+$"
KEYS = ["a" * 29 + "b", "a" * 29 + "c", "ab.weight"]  # 30-character names: backtracking bait


@pytest.fixture
def evil_checkpoints(tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / f"c{i}.safetensors"
        save_file({k: torch.full((2,), float(i + j)) for j, k in enumerate(KEYS)}, path)
        paths.append(path)
    return paths


def test_a_catastrophic_pattern_finishes_and_filters_like_python(tmp_path, evil_checkpoints):
    """Python's re takes minutes on these keys; the run has a minute in all (imports included)."""
    out = tmp_path / "avg.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "wa_cli", "average", *map(str, evil_checkpoints),
         "--exclude", EVIL, "--exclude", "weight$", "-o", str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        kept = sorted(f.keys())
    # The oracle: which names Python's re keeps, on names short enough for it to finish.
    short = ["a" * 5 + "b", "a" * 5]
    search = regex.compile_search(EVIL)
    assert [k for k in short if not search(k)] == [k for k in short if not re.search(EVIL, k)]
    assert kept == ["a" * 29 + "b", "a" * 29 + "c"]  # neither ends in a run of a's


@pytest.mark.parametrize("pattern", [r"(a)\1", "(?=a)b", "(?<!x)a"])
def test_a_feature_re2_lacks_is_one_line(tmp_path, capsys, evil_checkpoints, pattern):
    r = run_wa(
        ["average", *evil_checkpoints, "--include", pattern, "-o", tmp_path / "o.safetensors"],
        capsys,
    )
    assert_one_line_error(r, 2, "--include pattern", "RE2")
    assert not (tmp_path / "o.safetensors").exists()


def test_an_invalid_pattern_is_one_line(tmp_path, capsys, evil_checkpoints):
    r = run_wa(
        ["average", *evil_checkpoints, "--exclude", "(", "-o", tmp_path / "o.safetensors"], capsys
    )
    assert_one_line_error(r, 2, "--exclude pattern '('", "not a regular expression")


def test_inspect_entropy_filter_uses_the_same_engine(capsys, evil_checkpoints):
    r = run_wa(["inspect-entropy", evil_checkpoints[0], "--filter", EVIL, "--json"], capsys)
    assert r.code == 0, r.stderr


@pytest.mark.parametrize(
    ("pattern", "refused"),
    [
        (EVIL, True),
        ("(a|ab)*c", True),
        (r"(\w+\.)*weight", True),
        (r"(a)\1", True),
        (r"^layer\d+\.(weight|bias)$", False),
        (r"bn\d*\.running_(mean|var)", False),
        ("a{2,5}b+", False),
    ],
)
def test_without_re2_the_fallback_refuses_backtracking_shapes(monkeypatch, pattern, refused):
    """Where google-re2 is not installed, Python's re runs only patterns that cannot blow up."""
    monkeypatch.setattr(regex, "_re2", None)
    regex.compile_search.cache_clear()
    try:
        if refused:
            with pytest.raises(PatternError, match="exponential time"):
                regex.compile_search(pattern)
        else:
            search = regex.compile_search(pattern)
            for text in ["layer12.weight", "bn3.running_var", "aaab", "x"]:
                assert search(text) is bool(re.search(pattern, text))
    finally:
        regex.compile_search.cache_clear()


@pytest.mark.parametrize("pattern", [r"^layer\d+\.(weight|bias)$", r"\.", "conv|fc", "^$", "é"])
def test_re2_agrees_with_python_on_ordinary_patterns(pattern):
    for text in ["layer12.weight", "conv1.bias", "fc", "", "café.w", "x.y"]:
        assert regex.compile_search(pattern)(text) is bool(re.search(pattern, text))
