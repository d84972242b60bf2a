"""Tests for wa_cli.select: expansion, natural order, trajectory order and selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wa_cli.errors import ExitCode, WaError
from wa_cli.select import expand_inputs, natural_key


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
    with pytest.raises(WaError, match="cannot read sharded-checkpoint index") as e:
        expand_inputs([str(tmp_path / "*")])
    assert e.value.code == ExitCode.BAD_INPUT
