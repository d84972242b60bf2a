"""A real (tiny) HF Trainer run, for tests that read what the Trainer itself writes.

Skips the calling test when transformers or accelerate is absent (the ``real`` extra).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def trainer_run(root: Path, max_steps: int, *, evaluate: bool = False, lora: bool = False) -> Path:
    """Train a 1-layer GPT-2 for ``max_steps`` steps, saving every 2; returns ``root/out``.

    ``lora``: train a PEFT LoRA adapter on ``c_attn`` instead (checkpoints hold the adapter).
    """
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")

    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            ids = torch.randint(0, 20, (8,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "labels": ids}

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20, n_positions=8,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    schedule = {"eval_strategy": "steps", "eval_steps": 2} if evaluate else {"logging_steps": 2}
    args = transformers.TrainingArguments(
        str(root / "out"), max_steps=max_steps, save_steps=2, per_device_train_batch_size=4,
        report_to=[], use_cpu=True, disable_tqdm=True, **schedule,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    if lora:
        peft = pytest.importorskip("peft")
        model = peft.get_peft_model(
            model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"])
        )
    trainer = transformers.Trainer(model=model, args=args,
                                   train_dataset=Tokens(),
                                   eval_dataset=Tokens() if evaluate else None)  # fmt: skip
    trainer.train()
    return root / "out"
