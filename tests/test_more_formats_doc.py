"""docs/more-formats.md: every line of its sh blocks and its Python block run and succeed.

Its blocks are marked ``skip-test`` for tests/test_docs.py (which runs docs from a folder holding
only ``sample_checkpoints/``); they run here, on the layouts they name.

The layouts the page names are built here with the same writers as the format tests (by hand from
each library's saving code; ema-pytorch by its own ``EMA`` module).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.docblocks import blocks
from tests.helpers import REPO
from tests.io.test_ema_copies import net, torch_ema_state, train_step
from tests.io.test_library_layouts import composer_save, fairseq_save, nemo_save, opennmt_save

DOC = (REPO / "docs" / "more-formats.md").read_text()


def build_layouts(root: Path) -> None:
    """The folders and files the page's commands name."""
    ema_pytorch = pytest.importorskip("ema_pytorch")
    (root / "checkpoints").mkdir()
    for name, epoch, updates in (("checkpoint1", 1, 2000), ("checkpoint_2_3000", 2, 3000),
                                 ("checkpoint2", 2, 4000)):  # fmt: skip
        fairseq_save(root / "checkpoints" / f"{name}.pt", epoch, updates)
    shutil.copyfile(root / "checkpoints/checkpoint2.pt", root / "checkpoints/checkpoint_last.pt")
    (root / "onmt").mkdir()
    for step in (1000, 2000, 3000):
        opennmt_save(root / "onmt" / f"model_step_{step}.pt", step)
    (root / "composer_run").mkdir()
    for epoch, batch in ((1, 50), (2, 100), (3, 150)):
        composer_save(root / "composer_run" / f"ep{epoch}-ba{batch}-rank0.pt", epoch, batch)
    (root / "nemo_run").mkdir()
    for i in (1, 2):
        nemo_save(root / "nemo_run" / f"asr_{i}.nemo", i)
    nemo_save(root / "old.nemo", 3, "w:gz")
    timm = root / "output/train/run"
    timm.mkdir(parents=True)
    for epoch in range(3):
        saved = {"epoch": epoch, "state_dict": net(epoch).state_dict(),
                 "state_dict_ema": net(epoch + 9).state_dict(), "metric": 60.0 + epoch}  # fmt: skip
        torch.save(saved, timm / f"checkpoint-{epoch}.pth.tar")
    (root / "ema_pytorch_run").mkdir()
    model = net(0)
    ema = ema_pytorch.EMA(model, beta=0.5, update_after_step=0, update_every=1)
    for step in (1, 2, 3):
        train_step(model, step)
        ema.update()
        torch.save(ema.state_dict(), root / "ema_pytorch_run" / f"ema_{step}.pt")
    (root / "torch_ema_run").mkdir()
    for step in (100, 200):
        m = net(step)
        shadow = [p.detach().clone() + 1 for p in m.parameters()]
        saved = {"model": m.state_dict(), "ema": torch_ema_state(shadow, step), "step": step}
        torch.save(saved, root / "torch_ema_run" / f"ckpt_{step}.pt")


def test_every_command_of_the_page_runs(tmp_path, monkeypatch, capsys):
    from wa_cli.cli.app import main

    build_layouts(tmp_path)
    monkeypatch.chdir(tmp_path)
    lines = [
        line.strip()
        for block in blocks(DOC)
        if block.lang == "sh"
        for line in block.body.splitlines()
        if line.strip()
    ]
    assert sum(line.startswith("wa ") for line in lines) >= 10
    for line in lines:
        if not line.startswith("wa "):
            subprocess.run(line, shell=True, check=True, cwd=tmp_path)
            continue
        args = []
        for token in shlex.split(line)[1:]:
            args.extend(sorted(map(str, Path().glob(token))) if "*" in token else [token])
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        assert code == 0, (line, capsys.readouterr().err)
    python = [block.body for block in blocks(DOC) if block.lang == "python"]
    assert len(python) == 1
    exec(compile(python[0], "more-formats.md", "exec"), {})
    assert "read the EMA weights" in capsys.readouterr().out
