"""Every sh and python block in docs/ runs as written, in order, from a folder that holds
`sample_checkpoints/` (the README's machinery: tests/docblocks.py)."""

from __future__ import annotations

import pytest

from tests.docblocks import blocks, in_sample_folder, other_lines, run_file
from tests.helpers import REPO

DOCS = sorted((REPO / "docs").glob("*.md"))


def test_docs_exist():
    names = {p.name for p in DOCS}
    for name in ("commands", "inputs", "selection", "python", "safety", "distributed", "evidence"):
        assert f"{name}.md" in names


# What a file's blocks must leave behind: files they write, and text they print.
EXPECT = {
    "python.md": (
        ("swa.safetensors", "swa_bn.safetensors", "ema_a.safetensors"),
        "non_float='lst' is not one of 'last', 'first', 'error'",
    ),
    "commands.md": (
        ("swa.safetensors", "swa_bn.safetensors", "grafted.safetensors", "huge.safetensors"),
        "",
    ),
    "selection.md": (("best5.safetensors",), ""),
    "large-model-formats.md": (("fsdp_avg.safetensors", "titan_ema.safetensors"), "['0', '2']"),
    "soups.md": (("soup.safetensors", "wise.safetensors", "stock.safetensors"), ""),
    "posthoc-ema.md": (
        (
            "ema_0.08.safetensors",
            "ema_cli.safetensors",
            "widths/ema_sigma_0.07.safetensors",
            "profile_sigma_0.09.png",
        ),
        "",
    ),
}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_block_runs_or_says_why_not(path, tmp_path, monkeypatch, capsys):
    for block in blocks(path.read_text()):
        if block.lang in ("sh", "python") and block.skipped:
            assert block.skip_reason, f"{path.name}:{block.line}: skip-test needs a reason"
        if block.lang == "sh" and not block.skipped:
            assert not other_lines(block), f"{path.name}:{block.line}: not a wa line"
    folder = in_sample_folder(tmp_path, monkeypatch)
    printed = run_file(path, capsys)
    made, text = EXPECT.get(path.name, ((), ""))
    for name in made:
        assert (folder / name).is_file(), name
    assert text in printed


def test_the_architecture_doc_names_every_folder():
    text = (REPO / "docs" / "architecture.md").read_text()
    folders = sorted(p.name for p in (REPO / "wa_cli").iterdir() if (p / "__init__.py").exists())
    for folder in folders:
        assert f"wa_cli/{folder}/" in text, folder
