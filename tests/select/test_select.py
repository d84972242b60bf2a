"""Tests for wa_cli.select: expansion, natural order, trajectory order and selection."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from wa_cli.cli.flags import spell
from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.selection import Selection
from wa_cli.select import (
    Entry,
    expand_inputs,
    load_metrics_file,
    natural_key,
    order_trajectory,
    select_trajectory,
    selection_rows,
)


@dataclass(frozen=True)
class Fake:
    """Stands in for the reader's Checkpoint: a name, a path and string metadata."""

    path: Path
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def fakes(names: list[str], **metadata: list[object]) -> list[Fake]:
    """Fake checkpoints under runs/a/; each metadata keyword gives one value per name."""
    out = []
    for i, name in enumerate(names):
        meta = {k: str(v[i]) for k, v in metadata.items() if v[i] is not None}
        out.append(Fake(Path("runs/a") / name, meta))
    return out


def names_of(entries: list[Entry[Fake]]) -> list[str]:
    return [e.name for e in entries]


def touch(folder: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
        paths.append(p)
    return paths


def make_sharded(folder: Path, n_shards: int = 2) -> Path:
    folder.mkdir(parents=True)
    shards = [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    touch(folder, *shards)
    weight_map = {f"w{i}": s for i, s in enumerate(shards)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


# ---------------------------------------------------------------------------- natural order


def test_natural_key_orders_numbers_by_value() -> None:
    names = ["ckpt_10.pt", "ckpt_2.pt", "ckpt_1.pt", "ckpt_100.pt", "Ckpt_3.pt"]
    assert sorted(names, key=natural_key) == [
        "ckpt_1.pt",
        "ckpt_2.pt",
        "Ckpt_3.pt",
        "ckpt_10.pt",
        "ckpt_100.pt",
    ]


def test_natural_key_is_total_on_equal_numbers_and_mixed_shapes() -> None:
    names = ["ckpt_1", "ckpt_01", "1ckpt", "ckpt", "ckpt_1_a"]
    # Sorting must not raise (int vs str) and must be reproducible whatever the input order.
    assert sorted(names, key=natural_key) == sorted(reversed(names), key=natural_key)
    assert sorted(["ckpt_1", "ckpt_01"], key=natural_key) == ["ckpt_01", "ckpt_1"]


# ---------------------------------------------------------------------------- expansion


def test_explicit_paths_keep_the_given_order(tmp_path: Path) -> None:
    a, b, c = touch(tmp_path, "ckpt_10.safetensors", "ckpt_2.safetensors", "z.pt")
    assert expand_inputs([str(c), str(a), b]) == [c, a, b]


def test_quoted_glob_expands_in_natural_order(tmp_path: Path) -> None:
    names = [f"ckpt_{i}.safetensors" for i in (10, 2, 1, 30)]
    touch(tmp_path, *names, "ckpt_log.txt")
    got = expand_inputs([str(tmp_path / "ckpt_*")])
    assert [p.name for p in got] == [f"ckpt_{i}.safetensors" for i in (1, 2, 10, 30)]


def test_existing_path_with_glob_characters_is_taken_literally(tmp_path: Path) -> None:
    (literal,) = touch(tmp_path, "run[1].pt")
    touch(tmp_path, "run1.pt")
    assert expand_inputs([str(literal)]) == [literal]


def test_folder_expands_to_checkpoints_in_natural_order(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "ckpt_10.pt",
        "ckpt_9.pth",
        "ckpt_11.bin",
        "ckpt_8.ckpt",
        "ckpt_12.safetensors",
        "notes.txt",
        ".ckpt_13.safetensors.wa-tmp-1234",
        ".hidden.safetensors",
    )
    make_sharded(tmp_path / "ckpt_14")
    got = expand_inputs([tmp_path])
    assert [p.name for p in got] == [
        "ckpt_8.ckpt",
        "ckpt_9.pth",
        "ckpt_10.pt",
        "ckpt_11.bin",
        "ckpt_12.safetensors",
        "ckpt_14",
    ]


def test_sharded_folder_is_one_checkpoint(tmp_path: Path) -> None:
    folder = make_sharded(tmp_path / "step_100", n_shards=3)
    assert expand_inputs([folder]) == [folder]


def test_glob_over_a_sharded_folder_lists_the_index_not_the_shards(tmp_path: Path) -> None:
    folder = make_sharded(tmp_path / "step_100")
    got = expand_inputs([str(folder / "*")])
    assert got == [folder / "model.safetensors.index.json"]


def test_glob_matching_folders_expands_each(tmp_path: Path) -> None:
    touch(tmp_path, "run_b/last.pt", "run_a/last.pt", "run_10/last.pt")
    make_sharded(tmp_path / "run_c")
    got = expand_inputs([str(tmp_path / "run_*")])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == [
        "run_10/last.pt",
        "run_a/last.pt",
        "run_b/last.pt",
        "run_c",
    ]


def test_mixed_arguments_concatenate_in_argument_order(tmp_path: Path) -> None:
    touch(tmp_path, "a/ckpt_2.pt", "a/ckpt_10.pt", "b/x.pt", "b/y.pt")
    got = expand_inputs([str(tmp_path / "b" / "y.pt"), str(tmp_path / "a" / "*.pt")])
    assert [p.name for p in got] == ["y.pt", "ckpt_2.pt", "ckpt_10.pt"]


def test_no_inputs_is_a_usage_error() -> None:
    with pytest.raises(WaError, match="no input checkpoints") as e:
        expand_inputs([])
    assert e.value.code == ExitCode.USAGE


def test_missing_path_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(WaError, match=r"input '.*nope\.pt' does not exist") as e:
        expand_inputs([str(tmp_path / "nope.pt")])
    assert e.value.code == ExitCode.BAD_INPUT


def test_glob_matching_nothing_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(WaError, match="matches no file") as e:
        expand_inputs([str(tmp_path / "ckpt_*.pt")])
    assert e.value.code == ExitCode.BAD_INPUT


def test_glob_matching_only_non_checkpoints_is_bad_input(tmp_path: Path) -> None:
    touch(tmp_path, "log_1.txt", "log_2.txt")
    with pytest.raises(WaError, match=r"matches 2 path\(s\) but no checkpoint") as e:
        expand_inputs([str(tmp_path / "log_*")])
    assert e.value.code == ExitCode.BAD_INPUT


def test_folder_without_checkpoints_is_bad_input(tmp_path: Path) -> None:
    touch(tmp_path, "README.md")
    with pytest.raises(WaError, match="holds no checkpoint") as e:
        expand_inputs([tmp_path])
    assert e.value.code == ExitCode.BAD_INPUT


def test_folder_with_two_indexes_is_ambiguous(tmp_path: Path) -> None:
    folder = make_sharded(tmp_path / "m")
    (folder / "other.safetensors.index.json").write_text("{}")
    with pytest.raises(WaError, match="several sharded-checkpoint indexes") as e:
        expand_inputs([folder])
    assert e.value.code == ExitCode.BAD_INPUT


def test_corrupt_index_in_a_glob_is_bad_input(tmp_path: Path) -> None:
    touch(tmp_path, "model.safetensors.index.json")
    with pytest.raises(WaError, match="not a sharded-checkpoint index") as e:
        expand_inputs([str(tmp_path / "*")])
    assert e.value.code == ExitCode.BAD_INPUT


# ---------------------------------------------------------------------------- order

# Steps only in the names, shuffled: a plain string sort would put ckpt_10 before ckpt_2.
BY_NAME = ["ckpt_10.safetensors", "ckpt_2.safetensors", "ckpt_30.safetensors", "ckpt_1.pt"]


def test_auto_orders_by_the_number_in_the_name() -> None:
    entries = order_trajectory(fakes(BY_NAME))
    assert names_of(entries) == [
        "ckpt_1.pt",
        "ckpt_2.safetensors",
        "ckpt_10.safetensors",
        "ckpt_30.safetensors",
    ]
    assert [e.step for e in entries] == [1, 2, 10, 30]
    assert {e.source for e in entries} == {"name"}


def test_auto_prefers_step_metadata_over_names() -> None:
    # The names disagree with the metadata on purpose: metadata wins when every input has it.
    items = fakes(["b_1.pt", "a_2.pt", "c_3.pt"], step=[300, 100, 200])
    entries = order_trajectory(items)
    assert names_of(entries) == ["a_2.pt", "c_3.pt", "b_1.pt"]
    assert [e.step for e in entries] == [100, 200, 300]
    assert {e.source for e in entries} == {"metadata"}


def test_auto_with_partial_metadata_uses_names_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    items = fakes(["ckpt_20.pt", "ckpt_10.pt"], step=[5, None])
    with caplog.at_level(logging.WARNING):
        entries = order_trajectory(items)
    assert [e.step for e in entries] == [10, 20]
    assert "only 1 of 2" in caplog.text


def test_auto_partial_metadata_and_duplicate_name_steps_says_why() -> None:
    items = fakes(["seed1_step100.pt", "seed2_step100.pt"], step=[7, None])
    with pytest.raises(WaError, match="only 1 of 2 checkpoints record a step inside") as e:
        order_trajectory(items)
    assert e.value.code == ExitCode.USAGE
    assert "order name" in e.value.message and "--order" not in e.value.message
    assert "--order name" in e.value.render(spell)


def test_auto_without_numbers_falls_back_to_natural_name_order() -> None:
    items = fakes(["final.pt", "best.pt", "Average.pt"])
    entries = order_trajectory(items)
    assert names_of(entries) == ["Average.pt", "best.pt", "final.pt"]
    assert [e.step for e in entries] == [None, None, None]
    assert {e.source for e in entries} == {"order"}


def test_auto_duplicate_metadata_steps_name_the_files() -> None:
    items = fakes(["x.pt", "y.pt", "z.pt"], step=[100, 100, 200])
    with pytest.raises(WaError) as e:
        order_trajectory(items)
    msg = e.value.message
    assert "'x.pt', 'y.pt' share step 100" in msg
    assert "from 'step' recorded inside the files" in msg
    assert "pass order name" in msg and "order given" in msg
    assert "pass --order name" in e.value.render(spell)


def test_step_order_requires_metadata_everywhere() -> None:
    items = fakes(["ckpt_1.pt", "ckpt_2.pt"], step=[1, None])
    with pytest.raises(WaError, match="'ckpt_2.pt' have none") as e:
        order_trajectory(items, "step")
    assert e.value.code == ExitCode.USAGE


def test_step_order_uses_metadata() -> None:
    items = fakes(["ckpt_1.pt", "ckpt_2.pt"], step=[20, 10])
    assert names_of(order_trajectory(items, "step")) == ["ckpt_2.pt", "ckpt_1.pt"]


def test_name_order_ignores_metadata_and_tolerates_repeated_numbers() -> None:
    items = fakes(["seed2_step100.pt", "seed1_step100.pt"], step=[1, 2])
    entries = order_trajectory(items, "name")
    assert names_of(entries) == ["seed1_step100.pt", "seed2_step100.pt"]
    assert [(e.step, e.source) for e in entries] == [(100, "name"), (100, "name")]


def test_name_order_without_numbers_has_no_steps() -> None:
    entries = order_trajectory(fakes(["b.pt", "a_1.pt"]), "name")
    assert names_of(entries) == ["a_1.pt", "b.pt"]
    assert [e.step for e in entries] == [None, None]


def test_given_order_keeps_input_order_and_allows_duplicates() -> None:
    items = fakes(["ckpt_30.pt", "ckpt_2.pt", "ckpt_30b.pt"])
    entries = order_trajectory(items, "given")
    assert names_of(entries) == ["ckpt_30.pt", "ckpt_2.pt", "ckpt_30b.pt"]
    assert [e.step for e in entries] == [30, 2, 30]


def test_step_from_name_uses_the_last_number_of_the_stem() -> None:
    items = fakes(["epoch=3-step=1500.ckpt", "epoch=4-step=2000.ckpt", "run2_ckpt.safetensors"])
    # The suffix's digits never count, and the last number of the stem wins.
    assert [e.step for e in order_trajectory(items[:2])] == [1500, 2000]
    assert [e.step for e in order_trajectory(items[2:])] == [2]


def test_a_sharded_checkpoint_takes_its_folders_number() -> None:
    items = [
        Fake(Path("runs/step_200/model.safetensors.index.json")),
        Fake(Path("runs/step_100/model.safetensors.index.json")),
    ]
    assert [e.step for e in order_trajectory(items)] == [100, 200]


def test_non_integer_step_metadata_is_bad_input() -> None:
    with pytest.raises(WaError, match="metadata 'step' is '1.5', expected an integer") as e:
        order_trajectory(fakes(["a.pt"], step=["1.5"]))
    assert e.value.code == ExitCode.BAD_INPUT


def test_unknown_order_is_a_usage_error() -> None:
    with pytest.raises(WaError, match="^order must be one of") as e:
        order_trajectory(fakes(["a.pt"]), "time")  # type: ignore[arg-type]
    assert e.value.code == ExitCode.USAGE
    assert e.value.render(spell) == ("--order must be one of auto, step, name, given, got 'time'")


# ---------------------------------------------------------------------------- selection

STEPS = [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]


def with_meta_steps() -> list[Entry[Fake]]:
    """Ten checkpoints whose steps live in metadata only; names give no order."""
    names = [f"ckpt_{c}.safetensors" for c in "jihgfedcba"]
    return order_trajectory(fakes(names, step=STEPS))


def with_name_steps() -> list[Entry[Fake]]:
    """Ten checkpoints whose steps live in the names only, shuffled."""
    names = [f"ckpt_{s}.safetensors" for s in reversed(STEPS)]
    return order_trajectory(fakes(names))


Trajectory = Callable[[], list[Entry[Fake]]]
TRAJECTORIES: list[Trajectory] = [with_meta_steps, with_name_steps]


def steps_of(entries: list[Entry[Fake]]) -> list[int | None]:
    return [e.step for e in entries]


@pytest.mark.parametrize("make", TRAJECTORIES)
def test_no_filter_keeps_everything(make: Trajectory) -> None:
    assert steps_of(select_trajectory(make(), Selection())) == STEPS


@pytest.mark.parametrize("make", TRAJECTORIES)
def test_step_range_is_inclusive(make: Trajectory) -> None:
    got = select_trajectory(make(), Selection(from_step=200, to_step=500))
    assert steps_of(got) == [200, 300, 400, 500]
    assert steps_of(select_trajectory(make(), Selection(from_step=650))) == [700, 800, 900]
    assert steps_of(select_trajectory(make(), Selection(to_step=99))) == [0]


@pytest.mark.parametrize("make", TRAJECTORIES)
def test_every_counts_from_the_first_in_range(make: Trajectory) -> None:
    assert steps_of(select_trajectory(make(), Selection(every=3))) == [0, 300, 600, 900]
    assert steps_of(select_trajectory(make(), Selection(from_step=100, every=4))) == [100, 500, 900]


@pytest.mark.parametrize("make", TRAJECTORIES)
def test_last_keeps_the_newest(make: Trajectory) -> None:
    assert steps_of(select_trajectory(make(), Selection(last=3))) == [700, 800, 900]
    assert steps_of(select_trajectory(make(), Selection(last=50))) == STEPS


@pytest.mark.parametrize("make", TRAJECTORIES)
def test_filters_apply_range_then_every_then_last(make: Trajectory) -> None:
    # range → [200..800]; every 2 → 200, 400, 600, 800; last 3 → 400, 600, 800.
    got = select_trajectory(make(), Selection(from_step=200, to_step=800, every=2, last=3))
    assert steps_of(got) == [400, 600, 800]


def losses() -> dict[int, float]:
    # Not monotonic in step, with a tie (0.3 at steps 300 and 700).
    return {
        0: 2.0,
        100: 0.9,
        200: 0.5,
        300: 0.3,
        400: 0.7,
        500: 0.1,
        600: 0.6,
        700: 0.3,
        800: 0.4,
        900: 0.8,
    }


def with_metric_metadata() -> list[Entry[Fake]]:
    names = [f"ckpt_{s}.safetensors" for s in STEPS]
    return order_trajectory(fakes(names, step=STEPS, val_loss=[losses()[s] for s in STEPS]))


def test_top_k_min_keeps_lowest_in_trajectory_order() -> None:
    got = select_trajectory(
        with_metric_metadata(), Selection(top_k=3, metric="val_loss", mode="min")
    )
    # 0.1 @500, then the tie 0.3 @300 and @700: both fit in k = 3.
    assert steps_of(got) == [300, 500, 700]
    assert [e.value for e in got] == [0.3, 0.1, 0.3]


def test_top_k_min_tie_goes_to_the_earlier_checkpoint() -> None:
    got = select_trajectory(with_metric_metadata(), Selection(top_k=2, metric="val_loss"))
    assert steps_of(got) == [300, 500]


def test_top_k_max_keeps_highest() -> None:
    got = select_trajectory(
        with_metric_metadata(), Selection(top_k=2, metric="val_loss", mode="max")
    )
    assert steps_of(got) == [0, 100]


def test_top_k_applies_after_last() -> None:
    got = select_trajectory(with_metric_metadata(), Selection(last=4, top_k=2, metric="val_loss"))
    # last 4 → 600, 700, 800, 900 (0.6, 0.3, 0.4, 0.8) → best two: 700, 800.
    assert steps_of(got) == [700, 800]


def test_top_k_with_a_metrics_map_keyed_by_name_stem_path_and_absolute_path() -> None:
    entries = with_name_steps()
    table = {}
    for e in entries:
        value = losses()[e.step]
        forms = [
            e.name,
            e.name.removesuffix(".safetensors"),
            f"./runs/a/{e.name}",
            str(Path(f"runs/a/{e.name}").absolute()),
        ]
        table[forms[e.step // 100 % 4]] = value
    got = select_trajectory(entries, Selection(top_k=3, mode="min"), table)
    assert steps_of(got) == [300, 500, 700]


def test_nan_metric_ranks_last_in_both_modes() -> None:
    items = fakes(["c_1.pt", "c_2.pt", "c_3.pt"], loss=[1.0, "nan", 2.0])
    entries = order_trajectory(items)
    assert steps_of(select_trajectory(entries, Selection(top_k=2, metric="loss", mode="min"))) == [
        1,
        3,
    ]
    assert steps_of(select_trajectory(entries, Selection(top_k=2, metric="loss", mode="max"))) == [
        1,
        3,
    ]


def test_metric_without_top_k_is_attached_for_display() -> None:
    got = select_trajectory(with_metric_metadata(), Selection(last=2, metric="val_loss"))
    assert [e.value for e in got] == [0.4, 0.8]


def test_selection_rows_carry_name_step_value_weight() -> None:
    got = select_trajectory(with_metric_metadata(), Selection(last=2, metric="val_loss"))
    rows = selection_rows(got, [0.25, 0.75])
    assert rows == [
        {
            "name": "ckpt_800.safetensors",
            "path": str(Path("runs/a/ckpt_800.safetensors")),
            "step": 800,
            "source": "metadata",
            "value": 0.4,
            "weight": 0.25,
        },
        {
            "name": "ckpt_900.safetensors",
            "path": str(Path("runs/a/ckpt_900.safetensors")),
            "step": 900,
            "source": "metadata",
            "value": 0.8,
            "weight": 0.75,
        },
    ]
    assert selection_rows(got)[0]["weight"] is None
    json.dumps(rows)  # JSON-ready for --dry-run --json


# ---------------------------------------------------------------------------- selection errors


def unchecked(**given: object) -> SimpleNamespace:
    """The filters without Selection's own type checks, so that these are select_trajectory's
    (``wa_cli.select`` is public: a caller may pass any object with these fields)."""
    fields = ("last", "every", "from_step", "to_step", "top_k", "metric", "mode")
    return SimpleNamespace(**{**dict.fromkeys(fields), **given})


@pytest.mark.parametrize(
    ("kwargs", "message", "cli_message"),
    [
        ({"last": 0}, "last must be a positive integer, got 0", None),
        ({"every": -2}, "every must be a positive integer, got -2", None),
        ({"top_k": 0, "metric": "val_loss"}, "top_k must be a positive integer, got 0", None),
        ({"last": True}, "last must be a positive integer", None),
        ({"mode": "best"}, "mode must be 'min' or 'max', got 'best'", None),
        ({"from_step": 1.5}, "from_step must be an integer step, got 1.5", None),
        ({"top_k": 2}, "top_k needs a metric: pass metric NAME", "--top-k needs a metric"),
        (
            {"from_step": 500, "to_step": 100},
            "from_step=500 is after to_step=100",
            "--from-step 500 is after --to-step 100",
        ),
        (
            {"from_step": 1000},
            "from_step=1000 keeps no checkpoint: .* steps 0 to 900",
            "--from-step 1000 keeps no checkpoint: .* steps 0 to 900",
        ),
        (
            {"from_step": 310, "to_step": 390},
            "from_step=310 to_step=390 keeps no checkpoint",
            "--from-step 310 --to-step 390 keeps no checkpoint",
        ),
    ],
)
def test_selection_usage_errors(
    kwargs: dict[str, object], message: str, cli_message: str | None
) -> None:
    # The library names its parameters; the CLI shows the flags (the text it printed before).
    with pytest.raises(WaError) as e:
        select_trajectory(with_metric_metadata(), unchecked(**kwargs))
    assert e.value.code == ExitCode.USAGE
    assert re.match(message, e.value.message)
    expected = cli_message or "--" + message.replace("_", "-")
    assert re.match(expected, e.value.render(spell))


def test_empty_trajectory_is_a_usage_error() -> None:
    with pytest.raises(WaError, match="no checkpoints to select from"):
        select_trajectory([], Selection())


def test_step_range_without_steps_names_the_checkpoints() -> None:
    entries = order_trajectory(fakes(["final.pt", "best.pt"]))
    with pytest.raises(WaError, match="need step numbers, but 'best.pt', 'final.pt' have none"):
        select_trajectory(entries, Selection(from_step=10))


def test_missing_metric_in_metadata_names_the_checkpoint() -> None:
    entries = order_trajectory(fakes(["c_1.pt", "c_2.pt"], loss=[0.5, None]))
    with pytest.raises(
        WaError, match="metric 'loss' is missing from the metadata of 'c_2.pt'"
    ) as e:
        select_trajectory(entries, Selection(top_k=1, metric="loss"))
    assert e.value.code == ExitCode.BAD_INPUT


def test_non_numeric_metric_names_the_checkpoint() -> None:
    entries = order_trajectory(fakes(["c_1.pt", "c_2.pt"], loss=[0.5, "low"]))
    with pytest.raises(WaError, match="'c_2.pt': metadata 'loss': 'low' is not a number") as e:
        select_trajectory(entries, Selection(top_k=1, metric="loss"))
    assert e.value.code == ExitCode.BAD_INPUT


def test_missing_metric_in_a_metrics_map_names_the_checkpoint() -> None:
    entries = order_trajectory(fakes(["c_1.pt", "c_2.pt"]))
    with pytest.raises(WaError, match="no val_loss for 'c_1.pt'") as e:
        select_trajectory(entries, Selection(top_k=1, metric="val_loss"), {"c_2.pt": 0.1})
    assert e.value.code == ExitCode.BAD_INPUT


def test_a_bare_name_matching_two_runs_is_refused() -> None:
    items = [Fake(Path("run_a/last_1.pt")), Fake(Path("run_b/last_1.pt"))]
    entries = order_trajectory(items, "given")
    with pytest.raises(WaError, match="'last_1.pt' matches both") as e:
        select_trajectory(entries, Selection(top_k=1, mode="min"), {"last_1.pt": 0.1})
    assert e.value.code == ExitCode.BAD_INPUT
    # Keyed by path, the same two are told apart.
    got = select_trajectory(
        entries, Selection(top_k=1, mode="min"), {"run_a/last_1.pt": 2.0, "run_b/last_1.pt": 1.0}
    )
    assert [str(e.item.path) for e in got] == [str(Path("run_b/last_1.pt"))]


# ---------------------------------------------------------------------------- metrics files


def test_csv_with_value_column(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("file,value\nckpt_1.pt, 0.5\n\nckpt_2.pt,1e-3\n")
    assert load_metrics_file(p) == {"ckpt_1.pt": 0.5, "ckpt_2.pt": 0.001}
    assert load_metrics_file(p, "val_loss") == {"ckpt_1.pt": 0.5, "ckpt_2.pt": 0.001}


def test_csv_with_several_metrics_picks_one(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("file,val_loss,val_acc\na.pt,0.5,0.9\nb.pt,,0.8\n")
    assert load_metrics_file(p, "val_acc") == {"a.pt": 0.9, "b.pt": 0.8}
    # An empty cell is "no value", not an error: only a checkpoint that needs it fails later.
    assert load_metrics_file(p, "val_loss") == {"a.pt": 0.5}
    with pytest.raises(WaError, match="several value columns .*pick one with metric NAME"):
        load_metrics_file(p)
    with pytest.raises(WaError, match="no column 'loss'"):
        load_metrics_file(p, "loss")


def test_json_flat_and_nested(tmp_path: Path) -> None:
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"a.pt": 1, "b.pt": 2.5}))
    assert load_metrics_file(flat) == {"a.pt": 1.0, "b.pt": 2.5}
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"a.pt": {"loss": 0.5, "acc": 0.9}, "b.pt": {"loss": 0.4}}))
    assert load_metrics_file(nested, "acc") == {"a.pt": 0.9}
    assert load_metrics_file(nested, "loss") == {"a.pt": 0.5, "b.pt": 0.4}
    with pytest.raises(WaError, match="several metrics \\('acc', 'loss'\\)"):
        load_metrics_file(nested)
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"a.pt": {"loss": 0.5}, "b.pt": {"loss": 0.4}}))
    assert load_metrics_file(single) == {"a.pt": 0.5, "b.pt": 0.4}


@pytest.mark.parametrize(
    ("name", "text", "message", "code"),
    [
        ("m.csv", "ckpt_1.pt,0.5\n", "has no header row", ExitCode.BAD_INPUT),
        ("m.csv", "file,value\na.pt,low\n", "row 2: 'low' is not a number", ExitCode.BAD_INPUT),
        ("m.csv", "file,value\na.pt\n", "row 2: 1 cells, the header has 2", ExitCode.BAD_INPUT),
        ("m.csv", "file,value\na.pt,1\na.pt,2\n", "lists 'a.pt' twice", ExitCode.BAD_INPUT),
        ("m.json", "[1, 2]", "must hold a JSON object", ExitCode.BAD_INPUT),
        ("m.json", "{", "is not valid JSON", ExitCode.BAD_INPUT),
        ("m.json", '{"a.pt": true}', "entry 'a.pt': True is not a number", ExitCode.BAD_INPUT),
        ("m.json", '{"a.pt": "x"}', "entry 'a.pt': 'x' is not a number", ExitCode.BAD_INPUT),
        ("m.txt", "a.pt 1", "must end in .csv or .json", ExitCode.USAGE),
    ],
)
def test_metrics_file_errors(
    tmp_path: Path, name: str, text: str, message: str, code: ExitCode
) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(WaError, match=message) as e:
        load_metrics_file(p)
    assert e.value.code == code


def test_missing_metrics_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(WaError, match="metrics file .*nope.csv. does not exist") as e:
        load_metrics_file(tmp_path / "nope.csv")
    assert e.value.code == ExitCode.BAD_INPUT


@pytest.mark.parametrize("name", ["bad.csv", "bad.json"])
def test_metrics_file_that_is_not_utf8_is_bad_input(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(b"file,value\n\xff\xfe\x80ckpt.pt,1\n")  # 0xff never occurs in UTF-8
    with pytest.raises(WaError, match="is not UTF-8 text") as e:
        load_metrics_file(p)
    assert e.value.code == ExitCode.BAD_INPUT
    assert "\n" not in e.value.message


def test_metrics_file_round_trip_into_top_k(tmp_path: Path) -> None:
    entries = with_name_steps()
    p = tmp_path / "metrics.csv"
    p.write_text(
        "file,val_acc\n" + "".join(f"ckpt_{s}.safetensors,{1 - losses()[s]}\n" for s in STEPS)
    )
    got = select_trajectory(
        entries, Selection(top_k=2, metric="val_acc", mode="max"), load_metrics_file(p, "val_acc")
    )
    assert steps_of(got) == [300, 500]
    assert math.isclose(got[1].value, 0.9)
