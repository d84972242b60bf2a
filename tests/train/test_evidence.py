"""The evidence script's training and reporting parts (the `wa` commands are tested elsewhere)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

import digits  # noqa: E402
import evidence  # noqa: E402

SHORT = digits.RunConfig(epochs=2, swa_start=1, swa_lr=0.01)


def test_training_is_deterministic_and_saves_the_due_epochs(tmp_path: Path) -> None:
    a = digits.train(SHORT, save_dir=tmp_path / "a")
    b = digits.train(SHORT)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    files = evidence.checkpoints_by_step(tmp_path / "a")
    steps_per_epoch = -(-1437 // SHORT.batch_size)
    assert [f.name for f in files] == [
        f"ckpt_{steps_per_epoch}.safetensors",
        f"ckpt_{2 * steps_per_epoch}.safetensors",
    ]
    loss, acc = evidence.evaluate_file(files[-1])
    assert (loss, acc) == digits.evaluate(a)


def test_lookahead_and_gc_change_the_run() -> None:
    plain = digits.train(dataclasses.replace(SHORT, epochs=1)).state_dict()
    for change in ({"lookahead": True}, {"gc": True}):
        other = digits.train(dataclasses.replace(SHORT, epochs=1, **change)).state_dict()
        assert not torch.equal(plain["conv1.weight"], other["conv1.weight"]), change


def test_a_failing_wa_command_raises_with_its_last_stderr_line() -> None:
    with pytest.raises(evidence.WaFailed, match="wa no-such-command exited"):
        evidence.wa("no-such-command")


def test_table_reports_mean_std_and_failures() -> None:
    results = {"SWA": [(0.5, 0.9), (0.3, 1.0)], "graft": [(0.1, 1.0), "wa graft exited 2: nope"]}
    text = evidence.table(results, seeds=2)
    lines = text.splitlines()
    # mean 95 %, sample std of (90, 100) = 7.07; loss mean 0.4, std 0.1414
    assert lines[2] == "| SWA | 95.00 ± 7.07 | 0.4000 ± 0.1414 |"
    assert lines[3] == "| graft | n/a | wa graft exited 2: nope |"


def test_lookahead_runs_are_evaluated_on_their_slow_weights() -> None:
    # Batches of 64: 23 steps per epoch, not a multiple of k = 5, so the fast weights at the
    # epoch end are 3 steps past the last sync. The slow weights are the fast weights right after
    # step 20 (a sync sets both to the same point): a run stopped there is the oracle.
    cfg = dataclasses.replace(SHORT, epochs=1, batch_size=64, lookahead=True)
    oracle = digits.Run(cfg)
    oracle.model.train()
    for step, (xb, yb) in enumerate(oracle.loader):
        if step == 20:
            break
        oracle.optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(oracle.model(xb), yb).backward()
        oracle.optimizer.step()
        oracle.scheduler.step()
    run = digits.Run(cfg)
    run.train_epoch()
    assert len(run.loader) == 23
    result = digits.train(cfg)
    for (name, p), q, fast in zip(
        result.named_parameters(),
        oracle.model.parameters(),
        run.model.parameters(),
        strict=True,
    ):
        assert torch.equal(p, q), name
        assert not torch.equal(p, fast), name  # the epoch-end fast weights are elsewhere
