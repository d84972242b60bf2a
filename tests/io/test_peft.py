"""PEFT adapters (issue 20 item 4), written by real PEFT: ``save_pretrained`` folders and a real
HF Trainer run of a LoRA model. The average is the float64 mean of each factor, and it loads
with ``PeftModel.from_pretrained``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.helpers import assert_one_line_error, run_wa
from tests.real_trainer import trainer_run

peft = pytest.importorskip("peft")


class Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(4, 8)
        self.lin2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.relu(self.lin1(x)))


def base() -> Base:
    torch.manual_seed(0)
    return Base()


def adapter_run(out: Path, steps: int = 3, **config: object) -> list[Path]:
    """A LoRA adapter trained with Adam, saved with ``save_pretrained`` after every step."""
    settings: dict[str, object] = {"r": 2, "lora_alpha": 4, "target_modules": ["lin1", "lin2"]}
    model = peft.get_peft_model(base(), peft.LoraConfig(**{**settings, **config}))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    g = torch.Generator().manual_seed(3)
    folders = []
    for i in range(steps):
        loss = model(torch.randn(16, 4, generator=g)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        folder = out / f"checkpoint-{10 * (i + 1)}"
        model.save_pretrained(str(folder))
        folders.append(folder)
    return folders


def mean64(files: list[Path]) -> dict[str, torch.Tensor]:
    states = [load_file(f) for f in files]
    return {
        k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype)
        for k, v in states[0].items()
    }


def test_adapter_run_averages_factor_by_factor_and_loads_in_peft(tmp_path, capsys):
    folders = adapter_run(tmp_path / "out")
    merged = tmp_path / "merged"
    args = ["average", tmp_path / "out", "-o", merged, "--max-shard-size", "5GB", "--copy-config"]
    r = run_wa(args, capsys)
    assert r.code == 0, r.stderr
    assert "adapter_model.safetensors of checkpoint-10/" in r.stdout
    want = mean64([f / "adapter_model.safetensors" for f in folders])
    got = load_file(merged / "adapter_model.safetensors")
    assert set(got) == set(want) and all("lora_" in k for k in got)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)
    loaded = peft.PeftModel.from_pretrained(base(), str(merged))
    state = peft.get_peft_model_state_dict(loaded)
    assert set(state) == set(want)
    for key in want:
        assert torch.equal(state[key], got[key]), key
    # The factor mean is not the mean of the weight deltas B·A (what the docs say).
    a, b = "base_model.model.lin1.lora_A.weight", "base_model.model.lin1.lora_B.weight"
    files = [load_file(f / "adapter_model.safetensors") for f in folders]
    deltas = torch.stack([s[b].double() @ s[a].double() for s in files]).mean(0)
    assert not torch.allclose(want[b].double() @ want[a].double(), deltas, atol=1e-6)


@pytest.mark.parametrize(
    ("field", "value"), [("r", 4), ("lora_alpha", 8), ("use_rslora", True), ("use_dora", True)]
)
def test_adapter_configs_must_agree(tmp_path, capsys, field, value):
    adapter_run(tmp_path / "a", steps=1)
    other = adapter_run(tmp_path / "b", steps=1, **{field: value})[0]
    first = tmp_path / "a" / "checkpoint-10"
    out = tmp_path / "o.safetensors"
    r = run_wa(["average", first, other, "-o", out], capsys)
    assert_one_line_error(r, 4, f"disagree on {field!r}")
    assert not out.exists()


def test_target_modules_order_does_not_matter(tmp_path, capsys):
    folders = adapter_run(tmp_path / "out", steps=2)
    config = folders[1] / "adapter_config.json"
    data = json.loads(config.read_text())
    data["target_modules"] = list(reversed(data["target_modules"]))
    config.write_text(json.dumps(data))
    r = run_wa(["average", *folders, "-o", tmp_path / "o.safetensors"], capsys)
    assert r.code == 0, r.stderr


@pytest.mark.slow
def test_trainer_lora_checkpoints_are_a_trajectory(tmp_path, capsys):
    out = trainer_run(tmp_path, 4, lora=True)
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    capsys.readouterr()  # the Trainer's own prints
    merged = tmp_path / "merged.safetensors"
    r = run_wa(["average", out, "-o", merged, "--json"], capsys)
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    notes = " ".join(report["notes"])
    assert "steps from 'global_step'" in notes and "left out optimizer.pt" in notes
    want = mean64([out / f"checkpoint-{s}" / "adapter_model.safetensors" for s in (2, 4)])
    got = load_file(merged)
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)
