"""A real HF Trainer + DeepSpeed ZeRO-3 run: 2 steps of a tiny GPT-2 (tied embeddings), saved
at each step as ``out/checkpoint-N/`` (one rank, CPU). Used by the slow test in
``tests/io/test_deepspeed.py``; run with RANK=0 WORLD_SIZE=1 MASTER_ADDR/PORT set:

    python tests/io/deepspeed_runs/trainer_run.py OUT
"""

from __future__ import annotations

import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments


def main(out: str) -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    )
    data = [
        {"input_ids": torch.randint(0, 64, (8,)), "labels": torch.randint(0, 64, (8,))}
        for _ in range(8)
    ]
    ds = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "zero_optimization": {"stage": 3},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "torch_adam": True}},
    }
    args = TrainingArguments(
        out, per_device_train_batch_size=2, max_steps=2, save_steps=1, save_strategy="steps",
        deepspeed=ds, report_to=[], use_cpu=True, learning_rate=1e-2,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=data).train()


if __name__ == "__main__":
    main(sys.argv[1])
