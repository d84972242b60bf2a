"""DeepSpeed ZeRO checkpoints, read as their fp32 master weights (wa_cli.io.deepspeed).

The runs in ``deepspeed_runs/`` were written by real DeepSpeed 0.19.8 (``deepspeed.initialize``,
2 CPU ranks on gloo, ``engine.save_checkpoint``; see ``make_runs.py``): ZeRO-1 fp32, ZeRO-2
fp32 and bf16, ZeRO-3 fp32, two steps each, with BatchNorm buffers, a frozen parameter and two
parameter groups. The oracle, ``<layout>.expected/global_stepN.safetensors``, is DeepSpeed's own
``get_fp32_state_dict_from_zero_checkpoint`` (what ``zero_to_fp32.py`` writes) of each step;
``test_oracle_is_deepspeeds_own`` recomputes it with the installed DeepSpeed, and the slow
``test_fresh_run_matches_zero_to_fp32`` trains and saves a new run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import REPO, assert_one_line_error, run_wa, run_wa_process
from tests.oracles import ema_recursion64
from wa_cli.io.reader import ReadOptions, open_checkpoint

RUNS = Path(__file__).parent / "deepspeed_runs"
LAYOUTS = ("zero1", "zero2", "zero2_bf16", "zero3")
STEPS = (1, 2)


def expected(layout: str, step: int) -> dict[str, torch.Tensor]:
    return load_file(RUNS / f"{layout}.expected" / f"global_step{step}.safetensors")


def run_copy(tmp_path: Path, layout: str) -> Path:
    """The run as DeepSpeed leaves it: tag folders, ``latest`` and ``zero_to_fp32.py``."""
    out = tmp_path / layout
    shutil.copytree(RUNS / layout, out)
    (out / "zero_to_fp32.py").write_text("# DeepSpeed's script (not run by the tests)\n")
    return out


def mean64(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The float64 mean of each float tensor, cast back; non-float ones from the last state."""
    out = {}
    for k, last in states[-1].items():
        if last.is_floating_point():
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(last.dtype)
        else:
            out[k] = last
    return out


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("step", STEPS)
def test_tag_folder_is_zero_to_fp32_bit_for_bit(layout: str, step: int) -> None:
    ckpt = open_checkpoint(RUNS / layout / f"global_step{step}")
    assert_same({k: ckpt.tensor(k) for k in ckpt.keys()}, expected(layout, step))
    assert ckpt.metadata["global_step"] == str(step)
    assert ckpt.chosen_file_note is not None
    assert "fp32 master weights" in ckpt.chosen_file_note
    assert "exp_avg" in ckpt.chosen_file_note  # left out by name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_average_run_folder_and_glob(
    layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_copy(tmp_path, layout)
    want = mean64([expected(layout, s) for s in STEPS])
    for i, inputs in enumerate(([out], [f"{out}/global_step*"])):
        dest = tmp_path / f"avg{i}.safetensors"
        result = run_wa(["average", *inputs, "-o", dest], capsys)
        assert result.code == 0, result.stderr
        assert_same(load_file(dest), want)
        assert "fp32 master weights" in result.stdout


def test_steps_are_n_and_dry_run_names_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_copy(tmp_path, "zero2")
    result = run_wa(["average", out, "--last", "2", "--dry-run", "--json"], capsys)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["step"] for row in report["checkpoints"]] == [1, 2]
    notes = " ".join(report["notes"])
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in notes
    assert "left out the optimizer state" in notes


@pytest.mark.parametrize("layout", ["zero2_bf16", "zero3"])
def test_ema_half_life(layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_copy(tmp_path, layout)
    dest = tmp_path / "ema.safetensors"
    result = run_wa(["ema", out, "--half-life", "1", "-o", dest], capsys)
    assert result.code == 0, result.stderr
    states = [expected(layout, s) for s in STEPS]
    got = load_file(dest)
    for k, v in states[-1].items():
        if v.is_floating_point():  # steps 1 and 2, half-life 1: beta = 0.5
            want = ema_recursion64([s[k] for s in states], [0.5]).to(v.dtype)
            assert torch.equal(got[k], want), k


def test_zero3_model_states_alone_refused(tmp_path: Path) -> None:
    out = run_copy(tmp_path, "zero3")
    dest = tmp_path / "bad.safetensors"
    named = out / "global_step1" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    result = run_wa_process(["average", named, "-o", dest])
    assert_one_line_error(result, 3, "ZeRO-3", "placeholders", "optimizer files")
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zero3"]


def test_rank_optimizer_file_named_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Never a hint towards --allow-global of DeepSpeed's classes: the folder is the model."""
    out = run_copy(tmp_path, "zero2")
    named = out / "global_step1" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    result = run_wa(["average", named, "-o", tmp_path / "a.safetensors"], capsys)
    assert_one_line_error(result, 3, "optimizer state", "global_step1")
    assert "--allow-global" not in result.stderr


def test_zero12_model_states_named_read_the_module_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    named = RUNS / "zero2_bf16" / "global_step2" / "mp_rank_00_model_states.pt"
    ckpt = open_checkpoint(named)
    module = torch.load(named, weights_only=True)["module"]
    assert_same({k: ckpt.tensor(k) for k in ckpt.keys()}, dict(module))
    assert ckpt.chosen_file_note is not None and "not the fp32" in ckpt.chosen_file_note
    assert ckpt.metadata["global_step"] == "2"


def test_module_copy_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_copy(tmp_path, "zero2_bf16")
    modules = [
        dict(torch.load(out / f"global_step{s}" / "mp_rank_00_model_states.pt")["module"])
        for s in STEPS
    ]
    dest = tmp_path / "avg.safetensors"
    result = run_wa(["average", out, "--deepspeed-weights", "module", "-o", dest], capsys)
    assert result.code == 0, result.stderr
    assert "module weights (bfloat16" in result.stdout
    got = load_file(dest)
    assert got["0.weight"].dtype == torch.bfloat16
    assert_same(got, mean64(modules))


def test_module_copy_of_zero3_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_copy(tmp_path, "zero3")
    dest = tmp_path / "avg.safetensors"
    result = run_wa(["average", out, "--deepspeed-weights", "module", "-o", dest], capsys)
    assert_one_line_error(result, 2, "ZeRO-3", "--deepspeed-weights")
    assert not dest.exists()


def trainer_run(tmp_path: Path, layout: str) -> Path:
    """HF Trainer + DeepSpeed ``out/checkpoint-N/``, laid out by hand after transformers'
    ``Trainer._save_checkpoint`` (``deepspeed.save_checkpoint(output_dir)`` puts the tag folder,
    ``latest`` and ``zero_to_fp32.py`` in ``checkpoint-N/``, beside the Trainer's files); the
    DeepSpeed files are the real ones of ``deepspeed_runs/``."""
    out = tmp_path / "trainer_out"
    for step in STEPS:
        ckpt = out / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        shutil.copytree(RUNS / layout / f"global_step{step}", ckpt / f"global_step{step}")
        (ckpt / "latest").write_text(f"global_step{step}")
        (ckpt / "zero_to_fp32.py").write_text("# DeepSpeed's script\n")
        state = {"global_step": step, "epoch": float(step), "log_history": []}
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
        for name in ("scheduler.pt", "training_args.bin", "rng_state_0.pth", "rng_state_1.pth"):
            (ckpt / name).write_bytes(b"not read")
        (ckpt / "config.json").write_text("{}")
    return out


@pytest.mark.parametrize("layout", ["zero3", "zero2"])
def test_trainer_checkpoints(
    layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = trainer_run(tmp_path, layout)
    # The gathered 16-bit copy (stage3_gather_16bit_weights_on_model_save) is left out by name.
    save_file({"x": torch.zeros(1)}, str(out / "checkpoint-2" / "model.safetensors"))
    dest = tmp_path / "avg.safetensors"
    result = run_wa(["average", out, "-o", dest], capsys)
    assert result.code == 0, result.stderr
    assert_same(load_file(dest), mean64([expected(layout, s) for s in STEPS]))
    assert "checkpoint-2/global_step2/" in result.stdout
    assert "left out model.safetensors" in result.stdout
    result = run_wa(["ema", out, "--half-life", "1", "--dry-run", "--json"], capsys)
    assert [row["step"] for row in json.loads(result.stdout)["checkpoints"]] == [1, 2]
    one = open_checkpoint(out / "checkpoint-1")
    assert_same({k: one.tensor(k) for k in one.keys()}, expected(layout, 1))


def test_reads_without_deepspeed() -> None:
    """DeepSpeed's classes are never imported: a process where importing it fails reads all."""
    code = (
        "import sys; sys.modules['deepspeed'] = None\n"
        "from wa_cli.io.reader import open_checkpoint\n"
        f"c = open_checkpoint({str(RUNS / 'zero2' / 'global_step1')!r})\n"
        "[c.tensor(k) for k in c.keys()]\n"
        "print('ok', 'deepspeed' in sys.modules and sys.modules['deepspeed'] is not None)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert proc.stdout.strip() == "ok False", proc.stderr


class Unknown:
    """A class DeepSpeed's files never hold: its global must stay refused."""


def test_other_globals_stay_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_copy(tmp_path, "zero2")
    victim = out / "global_step1" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"zero_stage": 2, "x": Unknown()}}, victim)
    result = run_wa(["average", out, "-o", tmp_path / "a.safetensors"], capsys)
    assert_one_line_error(result, 3, "test_deepspeed.Unknown", "without running code")


def test_missing_rank_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_copy(tmp_path, "zero3")
    (out / "global_step2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    result = run_wa(["average", out, "-o", tmp_path / "a.safetensors"], capsys)
    assert_one_line_error(result, 3, "1 optimizer file(s)", "2 data-parallel ranks")


def test_shapes_that_do_not_add_up_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """param_shapes larger than the partitions (a model-states file of another model): one
    line, never a model cut at the wrong offsets."""
    out = run_copy(tmp_path, "zero2")
    states = out / "global_step1" / "mp_rank_00_model_states.pt"
    obj = torch.load(states, weights_only=True)
    obj["param_shapes"][0]["0.weight"] = torch.Size([8, 5])
    torch.save(obj, states)
    result = run_wa(["average", out, "-o", tmp_path / "a.safetensors"], capsys)
    assert_one_line_error(result, 3, "do not fit together", "group 0")


def test_read_options_reject_unknown_copy() -> None:
    from wa_cli.errors import WaError

    with pytest.raises(WaError, match="deepspeed_weights='fp16'"):
        open_checkpoint(
            RUNS / "zero1" / "global_step1", options=ReadOptions(deepspeed_weights="fp16")
        )


def test_oracle_is_deepspeeds_own(tmp_path: Path) -> None:
    """The stored oracle is what the installed DeepSpeed's zero_to_fp32 gives today."""
    pytest.importorskip("deepspeed")
    sys.path.insert(0, str(RUNS))
    try:
        from make_runs import write_oracle  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(RUNS))
    for layout in LAYOUTS:
        write_oracle(RUNS / layout, tmp_path / layout)
        for step in STEPS:
            fresh = load_file(tmp_path / layout / f"global_step{step}.safetensors")
            assert_same(fresh, expected(layout, step))


@pytest.mark.slow
def test_fresh_run_matches_zero_to_fp32(tmp_path: Path) -> None:
    """Train and save a new ZeRO-3 and ZeRO-2 bf16 run with real DeepSpeed; wa reads each step
    as DeepSpeed's zero_to_fp32 does, bit for bit (about a minute)."""
    pytest.importorskip("deepspeed")
    script = RUNS / "make_runs.py"
    subprocess.run([sys.executable, script, tmp_path, "zero3", "zero2_bf16"], check=True)
    for layout in ("zero3", "zero2_bf16"):
        for step in STEPS:
            ckpt = open_checkpoint(tmp_path / layout / f"global_step{step}")
            want = load_file(tmp_path / f"{layout}.expected" / f"global_step{step}.safetensors")
            assert_same({k: ckpt.tensor(k) for k in ckpt.keys()}, want)


@pytest.mark.slow
def test_real_trainer_zero3_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """transformers' Trainer with DeepSpeed ZeRO-3 (one CPU rank, a tiny GPT-2 whose lm_head is
    tied to its embedding: shared_params) saves out/checkpoint-{1,2}/; `wa average out/` equals
    the float64 mean of zero_to_fp32's output of each checkpoint (about 40 s)."""
    pytest.importorskip("deepspeed")
    pytest.importorskip("transformers")
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, DS_ACCELERATOR="cpu")
    out = tmp_path / "out"
    script = RUNS / "trainer_run.py"
    subprocess.run([sys.executable, script, out], env=env, check=True, capture_output=True)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    states = [
        {k: v.contiguous() for k, v in get_fp32_state_dict_from_zero_checkpoint(
            str(out / f"checkpoint-{n}")).items()}
        for n in STEPS
    ]  # fmt: skip
    assert "lm_head.weight" in states[0]  # tied: written under both names
    dest = tmp_path / "avg.safetensors"
    result = run_wa(["average", out, "-o", dest], capsys)
    assert result.code == 0, result.stderr
    assert_same(load_file(dest), mean64(states))
    result = run_wa(["average", out, "--dry-run", "--json"], capsys)
    assert [row["step"] for row in json.loads(result.stdout)["checkpoints"]] == [1, 2]
