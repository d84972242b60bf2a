"""Regenerate the sample trajectory (and, with ``--data``, ``digits.safetensors``).

    python sample_checkpoints/generate.py          # run_a/ and run_b/, about 10 s on 2 cores
    python sample_checkpoints/generate.py --data   # also rebuild the data (needs scikit-learn)

Uses the same training code as ``examples/evidence.py`` (``examples/digits.py``) and the
``wa_cli.train`` helpers (SWA schedule, trajectory writer). Deterministic: seeded weights and data
order, one thread, deterministic algorithms.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

import digits  # noqa: E402

#: SGD with SWA's schedule (lr 0.05 held, decayed to 0.01 by epoch 18); epochs 20-30 are saved.
RUN_A = digits.RunConfig(seed=0, lr=0.05, epochs=30, swa_start=20, swa_lr=0.01)
#: A second run with a smaller lr and another seed, for grafting; its last 3 epochs are saved.
RUN_B = digits.RunConfig(seed=1, lr=0.01, epochs=30, swa_start=20, swa_lr=0.002, save_from=28)


def write_data(path: Path) -> None:
    """digits 8x8 images (uint8, 0..16) and labels; 360 test images, stratified, random_state=0."""
    import torch
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.uint8).unsqueeze(1)
    labels = torch.tensor(d.target, dtype=torch.int64)
    train, test = train_test_split(
        range(len(labels)), test_size=360, random_state=0, stratify=d.target
    )
    train, test = torch.tensor(sorted(train)), torch.tensor(sorted(test))
    tensors = {
        "train_images": images[train].contiguous(),
        "train_labels": labels[train].contiguous(),
        "test_images": images[test].contiguous(),
        "test_labels": labels[test].contiguous(),
    }
    meta = {
        "source": "sklearn.datasets.load_digits (UCI optdigits)",
        "split": "train_test_split(test_size=360, random_state=0, stratify=labels), indices sorted",
    }
    save_file(tensors, str(path), metadata=meta)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="store_true", help="rebuild digits.safetensors")
    parser.add_argument("--out", type=Path, default=HERE, help="where run_a/ and run_b/ go")
    args = parser.parse_args(argv)
    if args.data:
        write_data(HERE / "digits.safetensors")
    for name, cfg in (("run_a", RUN_A), ("run_b", RUN_B)):
        out = args.out / name
        shutil.rmtree(out, ignore_errors=True)
        model = digits.train(cfg, save_dir=out)
        loss, acc = digits.evaluate(model)
        files = sorted(out.glob("*.safetensors"))
        print(f"{name}: {len(files)} checkpoints, final test loss {loss:.4f}, acc {acc:.4f}")


if __name__ == "__main__":
    main()
