"""Steps from names, folders and recorded metadata; --mode from metric names."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.selection import Selection
from wa_cli.select import mode_from_name, order_trajectory, resolve_mode, select_trajectory
from wa_cli.select.steps import number_in_name


@dataclass(frozen=True)
class Fake:
    path: Path
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("epoch=3-step=92-val_loss=0.5529", (92, "step")),  # Lightning: never the loss digits
        ("epoch=3-step=92", (92, "step")),
        ("epoch=12-val_loss=0.5529", (12, "epoch")),  # epoch only when there is no step
        ("epoch=3", (3, "epoch")),
        ("model-global_step=400-val_acc=0.98", (400, "step")),
        ("step_500_epoch_3", (500, "step")),
        ("seed1_step100", (100, "step")),
        ("ckpt_1350", (1350, "number")),
        ("checkpoint-7", (7, "number")),
        ("epoch_10", (10, "epoch")),
        ("ckpt_120-loss_0.25", (120, "number")),  # a decimal is never a step
        ("run2_ckpt", (2, "number")),
        ("last", None),
        ("model_best", None),
        ("val_loss=0.5529", None),
    ],
)
def test_number_in_name(stem: str, expected: tuple[int, str] | None) -> None:
    assert number_in_name(stem) == expected


def test_lightning_names_order_by_step_not_by_the_metric_digits() -> None:
    # Losses chosen so that their digits would invert the order if read as steps.
    losses = ("0.9012", "0.7001", "0.5529", "0.6100")
    names = [f"epoch={i}-step={23 * (i + 1)}-val_loss={v}.ckpt" for i, v in enumerate(losses)]
    items = [Fake(Path("lightning_logs") / n) for n in reversed(names)]
    entries = order_trajectory(items)
    assert [e.step for e in entries] == [23, 46, 69, 92]
    assert [e.name for e in select_trajectory(entries, Selection(last=2))] == names[2:]
    assert entries[0].order == "steps named in the file names"


def test_recorded_global_step_beats_epoch_names() -> None:
    # filename='{epoch}': the names hold epochs, every .ckpt records global_step.
    items = [Fake(Path(f"epoch={e}.ckpt"), {"epoch": str(e), "global_step": str(s)})
             for e, s in ((2, 300), (0, 100), (1, 200))]  # fmt: skip
    entries = order_trajectory(items)
    assert [(e.step, e.source) for e in entries] == [(100, "metadata"), (200, "metadata"),
                                                      (300, "metadata")]  # fmt: skip
    assert "'global_step' recorded inside" in entries[0].order


def test_recorded_epoch_is_the_last_resort_and_is_said() -> None:
    items = [Fake(Path(n), {"epoch": e}) for n, e in (("b.pt", "2"), ("a.pt", "1"))]
    entries = order_trajectory(items)
    assert [(e.name, e.step, e.source) for e in entries] == [("a.pt", 1, "epoch"),
                                                              ("b.pt", 2, "epoch")]  # fmt: skip
    assert entries[0].order.startswith("epochs used as steps")


def test_epoch_names_say_that_epochs_are_used() -> None:
    entries = order_trajectory([Fake(Path("epoch_10.pt")), Fake(Path("epoch_9.pt"))])
    assert [e.step for e in entries] == [9, 10]
    assert entries[0].order == "epochs in the file names used as steps (no step recorded)"


def test_parent_folder_number_counts_when_the_file_name_has_none() -> None:
    items = [Fake(Path("out/checkpoint-12/model.safetensors")),
             Fake(Path("out/checkpoint-6/model.safetensors")),
             Fake(Path("acc/checkpoint_3/pytorch_model.bin"))]  # fmt: skip
    entries = order_trajectory(items)
    assert [(e.step, e.source) for e in entries] == [(3, "folder"), (6, "folder"), (12, "folder")]
    assert entries[0].order == "steps from the numbers of the parent folders"


def test_a_folder_not_named_like_a_checkpoint_gives_no_step() -> None:
    # runs/exp3/last.pt: 3 names the experiment, not a step.
    entries = order_trajectory([Fake(Path("runs/exp3/last.pt")), Fake(Path("runs/exp3/a.pt"))])
    assert [e.step for e in entries] == [None, None]


def test_steps_beyond_64_bits_are_refused() -> None:
    with pytest.raises(WaError, match="beyond the 64-bit range") as e:
        order_trajectory([Fake(Path("a.pt"), {"step": str(2**63)})])
    assert e.value.code == ExitCode.BAD_INPUT
    with pytest.raises(WaError, match="beyond the 64-bit range"):
        order_trajectory([Fake(Path(f"ckpt_{2**64}.pt"))])
    assert order_trajectory([Fake(Path("a.pt"), {"step": str(2**63 - 1)})])[0].step == 2**63 - 1


@pytest.mark.parametrize(
    ("name", "mode"),
    [("val_loss", "min"), ("train/loss", "min"), ("val_acc", "max"), ("eval/top1", "max"),
     ("top-5", "max"), ("valAccuracy", "max"), ("wer", "min"), ("test_ppl", "min"),
     ("bleu", "max"), ("mAP", "max"), ("f1", "max"), ("auc", "max"), ("error_rate", "min"),
     ("metric", None), ("score", None), ("loss_over_acc", None)],
)  # fmt: skip
def test_mode_from_name(name: str, mode: str | None) -> None:
    assert mode_from_name(name) == mode


def test_top_k_of_an_accuracy_keeps_the_highest_without_mode() -> None:
    acc = [0.5, 0.9, 0.7, 0.95, 0.6]
    items = [Fake(Path(f"ckpt_{i}.pt"), {"val_acc": str(a)}) for i, a in enumerate(acc)]
    kept = select_trajectory(order_trajectory(items), Selection(top_k=3, metric="val_acc"))
    assert [e.value for e in kept] == [0.9, 0.7, 0.95]


def test_an_ambiguous_metric_name_needs_mode() -> None:
    items = [Fake(Path(f"ckpt_{i}.pt"), {"metric": str(i)}) for i in range(3)]
    with pytest.raises(WaError, match="top_k needs mode min or mode max") as e:
        select_trajectory(order_trajectory(items), Selection(top_k=2, metric="metric"))
    assert e.value.code == ExitCode.USAGE
    kept = select_trajectory(
        order_trajectory(items), Selection(top_k=2, metric="metric", mode="max")
    )
    assert [e.value for e in kept] == [1.0, 2.0]


def test_a_mode_against_the_name_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert resolve_mode("val_acc", "min") == "min"
    assert "although its name says higher is better" in caplog.text
