"""`wa bn-recalibrate` through the CLI, with torch's `update_bn` and closed forms as the oracles."""

from __future__ import annotations

import copy
import json
import runpy
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_bytes
from torch.optim.swa_utils import update_bn

from tests.helpers import REPO, assert_one_line_error, cnn_state, run_wa, tiny_cnn

SAMPLE = REPO / "sample_checkpoints"
BN_KEYS = ("1.running_mean", "1.running_var", "1.num_batches_tracked")
# An earlier output: a safetensors file, which --force may replace (anything else it may not).
KEEP_ME = safetensors_bytes({"keep": torch.zeros(1)})

USER_CODE = """
import torch
from torch import nn


def build(width=4):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Flatten(),
        nn.Linear(width * 5 * 5, 3),
    )


def mlp():
    return nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))


def no_bn():
    return nn.Sequential(nn.Linear(3, 2))


def not_a_model():
    return {"weights": 1}


def broken_model():
    raise RuntimeError("weights folder\\n/models/x is missing")


def loader(sizes=(5, 8, 3, 6)):
    g = torch.Generator().manual_seed(0)
    return [(2 * torch.randn(b, 3, 5, 5, generator=g) + 1, torch.zeros(b)) for b in sizes]


def dict_loader():
    return [{"label": y, "image": x} for x, y in loader()]


def feed(model, batch):
    return model(batch["image"])


def empty():
    return iter(())
"""


@pytest.fixture
def user(tmp_path: Path) -> dict:
    """The user's code in a file (``paths["code"]``), a CNN checkpoint, and the oracle's view."""
    code = tmp_path / "net.py"
    code.write_text(textwrap.dedent(USER_CODE))
    ckpt = tmp_path / "ckpt.safetensors"
    save_file(cnn_state(seed=1), ckpt, metadata={"format": "pt", "step": "700"})
    return {"code": code, "ckpt": ckpt, "out": tmp_path / "out.safetensors", **runpy.run_path(code)}


def updated(state: dict[str, torch.Tensor], batches: list) -> dict[str, torch.Tensor]:
    """The oracle: torch.optim.swa_utils.update_bn on the tiny CNN."""
    model = tiny_cnn(seed=0)
    model.load_state_dict(state)
    update_bn(batches, model)
    return model.state_dict()


def assert_close_states(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-6, atol=1e-6, msg=key)


def raw_bytes(path: Path) -> dict[str, bytes]:
    """Each tensor's bytes as stored (bit-identity, not closeness)."""
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    return {k: v.reshape(-1).view(torch.uint8).numpy().tobytes() for k, v in tensors.items()}


def test_matches_update_bn_and_leaves_other_tensors_bit_identical(user, capsys):
    r = run_wa(
        ["bn-recalibrate", user["ckpt"], "-o", user["out"],
         "--model", f"{user['code']}:build", "--data", f"{user['code']}:loader"],
        capsys,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    assert r.stdout.startswith(f"wrote {user['out']}: re-estimated 1 BatchNorm layer(s)")
    assert "4 batches, 22 samples" in r.stdout
    out = load_file(user["out"])
    assert_close_states(out, updated(load_file(user["ckpt"]), user["loader"]()))
    before, after = raw_bytes(user["ckpt"]), raw_bytes(user["out"])
    changed = {k for k in before if before[k] != after[k]}
    assert changed == set(BN_KEYS)
    metadata = safe_open(str(user["out"]), "pt").metadata()
    assert metadata["step"] == "700" and metadata["format"] == "pt"
    assert metadata["wa_method"] == "bn_recalibrate"
    assert json.loads(metadata["wa_params"])["batches"] == 4


def test_model_file_with_a_non_utf8_name(user, tmp_path, capsys):
    """A --model file named with a byte that is not UTF-8 (``net\\xff.py``) is imported like any
    other; its name hashed as the file system's bytes (it was a UnicodeEncodeError traceback)."""
    import os

    code = tmp_path / os.fsdecode(b"net\xff.py")
    code.write_bytes(user["code"].read_bytes())
    r = run_wa(
        ["bn-recalibrate", user["ckpt"], "-o", user["out"],
         "--model", f"{code}:build", "--data", f"{code}:loader"],
        capsys,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    assert_close_states(load_file(user["out"]), updated(load_file(user["ckpt"]), user["loader"]()))
    r = run_wa(
        ["bn-recalibrate", user["ckpt"], "-o", tmp_path / "other.safetensors",
         "--model", f"{code}:missing", "--data", f"{code}:loader"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(r, 2, "has no attribute 'missing'")


def test_sample_pipeline_from_the_readme(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = sorted((SAMPLE / "run_a").glob("*.safetensors"))
    assert run_wa(["average", *runs, "-o", "swa.safetensors", "-q"], capsys).code == 0
    r = run_wa(
        ["bn-recalibrate", "swa.safetensors", "-o", "swa_bn.safetensors",
         "--model", f"{SAMPLE}/model.py:build", "--data", f"{SAMPLE}/model.py:train_loader"],
        capsys,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    sample = runpy.run_path(str(SAMPLE / "model.py"))
    model = sample["build"]()
    model.load_state_dict(load_file("swa.safetensors"))
    update_bn(sample["train_loader"](), model)
    assert_close_states(load_file("swa_bn.safetensors"), model.state_dict())
    assert "1437 samples" in r.stdout and "bn2" in r.stdout


def test_sample_weighting_closed_form_from_a_tensor_file(user, tmp_path, capsys):
    linear = torch.nn.Linear(3, 3)
    state = {"0.weight": linear.weight.detach(), "0.bias": linear.bias.detach(),
             "1.weight": torch.ones(3), "1.bias": torch.zeros(3),
             "1.running_mean": torch.full((3,), 5.0), "1.running_var": torch.full((3,), 9.0),
             "1.num_batches_tracked": torch.tensor(7)}  # fmt: skip
    ckpt = tmp_path / "mlp.safetensors"
    save_file(state, ckpt)
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(3)) * 3 + 2
    save_file({"x": x, "y": torch.arange(10)}, tmp_path / "calib.safetensors")
    r = run_wa(
        ["bn-recalibrate", ckpt, "-o", user["out"], "--model", f"{user['code']}:mlp",
         "--data", tmp_path / "calib.safetensors", "--input-key", "x", "--batch-size", "4",
         "--weighting", "sample", "--json"],
        capsys,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    # Batches of 4, 4, 2 weighted by size: the mean over all rows, and Σ b s²_b / Σ b with the
    # unbiased variance of each batch, in float64.
    h = x.double() @ state["0.weight"].double().T + state["0.bias"].double()
    parts = h.split(4)
    var = sum(len(p) * p.var(dim=0, unbiased=True) for p in parts) / len(h)
    out = load_file(user["out"])
    torch.testing.assert_close(out["1.running_mean"].double(), h.mean(dim=0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["1.running_var"].double(), var, rtol=1e-5, atol=1e-6)
    report = json.loads(r.stdout)
    assert (report["batches"], report["samples"], report["weighting"]) == (3, 10, "sample")


def test_dict_batches_through_forward_and_early_stop(user, capsys):
    r = run_wa(
        ["bn-recalibrate", user["ckpt"], "-o", user["out"], "--model", f"{user['code']}:build",
         "--data", f"{user['code']}:dict_loader", "--forward", f"{user['code']}:feed",
         "--batches", "3", "--json"],
        capsys,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    first3 = [x for x, _ in user["loader"]()[:3]]
    assert_close_states(load_file(user["out"]), updated(load_file(user["ckpt"]), first3))
    assert json.loads(r.stdout)["batches"] == 3


def test_model_and_data_kwargs_and_npy_data(user, tmp_path, capsys):
    torch.manual_seed(0)
    wide_model = user["build"](width=6)
    save_file(wide_model.state_dict(), user["ckpt"].with_name("wide.safetensors"))
    r = run_wa(
        ["bn-recalibrate", user["ckpt"].with_name("wide.safetensors"), "-o", user["out"],
         "--model", f"{user['code']}:build", "--model-kwargs", '{"width": 6}',
         "--data", f"{user['code']}:loader", "--data-kwargs", '{"sizes": [4, 7]}', "-q"],
        capsys,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    update_bn(user["loader"](sizes=(4, 7)), wide_model)
    assert_close_states(load_file(user["out"]), wide_model.state_dict())

    x = np.random.default_rng(0).normal(size=(9, 3, 5, 5)).astype(np.float32)
    np.save(tmp_path / "inputs.npy", x)
    r = run_wa(
        ["bn-recalibrate", user["ckpt"], "-o", user["out"], "--force", "--model",
         f"{user['code']}:build", "--data", tmp_path / "inputs.npy", "--batch-size", "5"],
        capsys,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    batches = list(torch.from_numpy(x).split(5))
    assert_close_states(load_file(user["out"]), updated(load_file(user["ckpt"]), batches))


def test_json_report_is_the_only_stdout(user, capsys):
    r = run_wa(
        ["bn-recalibrate", user["ckpt"], "-o", user["out"], "--model", f"{user['code']}:build",
         "--data", f"{user['code']}:loader", "--json"],
        capsys,
    )  # fmt: skip
    report = json.loads(r.stdout)
    assert r.stderr == ""
    assert report["output"] == str(user["out"]) and report["written"] is True
    assert report["replaced_keys"] == list(BN_KEYS)
    [layer] = report["layers"]
    old, new = load_file(user["ckpt"]), load_file(user["out"])
    old_var, new_var = old["1.running_var"].double(), new["1.running_var"].double()
    expected = float(
        torch.linalg.vector_norm(new_var - old_var) / torch.linalg.vector_norm(old_var)
    )
    assert layer["name"] == "1" and layer["var_change"] == pytest.approx(expected, rel=1e-9)


def test_model_without_batchnorm_writes_nothing_unless_forced(user, tmp_path, capsys):
    ckpt = tmp_path / "plain.safetensors"
    save_file({"0.weight": torch.randn(2, 3), "0.bias": torch.randn(2)}, ckpt)
    args = ["bn-recalibrate", ckpt, "-o", user["out"], "--model", f"{user['code']}:no_bn",
            "--data", f"{user['code']}:empty"]  # fmt: skip
    r = run_wa(args, capsys)
    assert r.code == 0 and "no BatchNorm layer" in r.stdout and "nothing written" in r.stdout
    assert not user["out"].exists()
    r = run_wa([*args, "--force"], capsys)
    assert r.code == 0 and "copied unchanged" in r.stdout
    assert raw_bytes(user["out"]) == raw_bytes(ckpt)


def _error_cases(code: Path, ckpt: Path, tmp_path: Path) -> list[tuple[list, int, list[str]]]:
    save_file({"x": torch.randn(4, 3, 5, 5)}, tmp_path / "calib.safetensors")
    state = cnn_state(seed=1)
    save_file({**state, "1.weight": torch.ones(5)}, tmp_path / "shape.safetensors")
    save_file({**state, "extra.bias": torch.ones(1)}, tmp_path / "extra.safetensors")
    model, data = f"{code}:build", f"{code}:loader"
    return [
        (
            ["--model", "no_such_pkg.net:build", "--data", data],
            2,
            ["cannot import module 'no_such_pkg.net'", "model factory"],
        ),
        (
            ["--model", f"{tmp_path}/missing.py:build", "--data", data],
            2,
            ["model factory file", "does not exist"],
        ),
        (["--model", f"{code}:biuld", "--data", data], 2, ["has no attribute 'biuld'", "'build'"]),
        (
            ["--model", f"{code}:broken_model", "--data", data],
            3,
            [
                "model factory 'broken_model' raised RuntimeError: weights folder /models/x is "
                "missing"
            ],
        ),
        (["--model", f"{code}:not_a_model", "--data", data], 2, ["returned a dict, not a torch"]),
        (
            ["--model", model, "--model-kwargs", "{width: 6}", "--data", data],
            2,
            ["cannot read --model-kwargs"],
        ),
        (["--model", model, "--data", f"{code}:nothing"], 2, ["data loader", "'nothing'"]),
        (["--model", model, "--data", f"{code}:empty"], 3, ["yielded no batches"]),
        (
            ["--model", model, "--data", f"{code}:dict_loader"],
            3,
            ["cannot take batch 0 (dict with keys 'label', 'image')", "--forward"],
        ),
        (
            ["--model", model, "--data", tmp_path / "calib.safetensors", "--input-key", "images"],
            2,
            ["has no tensor 'images'", "'x'"],
        ),
        (["--model", model, "--data", data, "--batch-size", "8"], 2, ["--data-kwargs"]),
        (
            ["--model", model, "--data", data, "--forward", f"{code}:fed"],
            2,
            ["forward function", "did you mean 'feed'?"],
        ),
        (["--model", model, "--data", data, "--weighting", "median"], 2, ["--weighting"]),
        (
            ["--model", model, "--data", data, "--input", tmp_path / "shape.safetensors"],
            4,
            ["shape mismatch '1.weight' (5,) in checkpoint vs (4,) in model"],
        ),
        (
            ["--model", model, "--data", data, "--input", tmp_path / "extra.safetensors"],
            4,
            ["unexpected keys 'extra.bias'"],
        ),
        (
            ["--model", f"{code}:mlp", "--data", data],
            4,
            ["unexpected keys '4.bias', '4.weight'", "shape mismatch '0.weight' (4, 3, 3, 3)"],
        ),
        (
            ["--model", model, "--data", data, "--input", tmp_path / "nope.safetensors"],
            3,
            ["input", "nope.safetensors' does not exist"],
        ),
        (
            ["--model", model, "--data", data, "-o", ckpt, "--force"],
            5,
            ["would overwrite the input"],
        ),
    ]


def test_user_errors_are_one_line_and_write_nothing(user, tmp_path, capsys):
    for extra, code, fragments in _error_cases(user["code"], user["ckpt"], tmp_path):
        ckpt = user["ckpt"]
        if "--input" in extra:  # a different checkpoint for this case
            i = extra.index("--input")
            ckpt, extra = extra[i + 1], extra[:i] + extra[i + 2 :]
        before = sorted(p.name for p in tmp_path.iterdir())
        checksum = user["ckpt"].read_bytes()
        args = ["bn-recalibrate", ckpt, *extra]
        if "-o" not in extra:
            args += ["-o", user["out"]]
        r = run_wa(args, capsys)
        assert_one_line_error(r, code, *fragments)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, extra
        assert user["ckpt"].read_bytes() == checksum


def test_existing_output_is_refused_before_the_model_runs(user, capsys):
    user["out"].write_bytes(KEEP_ME)
    r = run_wa(
        ["bn-recalibrate", user["ckpt"], "-o", user["out"], "--model", f"{user['code']}:build",
         "--data", f"{user['code']}:dict_loader"],  # would fail in the forward pass
        capsys,
    )  # fmt: skip
    assert_one_line_error(r, 5, "already exists", "--force")
    assert user["out"].read_bytes() == KEEP_ME


def reject_constant(token: str) -> None:
    raise ValueError(f"invalid JSON token {token}")


def test_non_finite_statistics_are_written_and_reported(user, tmp_path, capsys):
    # Written, not refused: like `wa average`, the output is made and the non-finite values are
    # counted, on stderr and in the JSON report, which must stay valid JSON.
    state = cnn_state(seed=1)
    state["0.weight"][2, 0, 1, 1] = float("nan")  # channel 2 of the BatchNorm sees NaN
    ckpt = tmp_path / "nan.safetensors"
    save_file(state, ckpt)
    r = run_wa(
        ["bn-recalibrate", ckpt, "-o", user["out"], "--model", f"{user['code']}:build",
         "--data", f"{user['code']}:loader", "--json"],
        capsys,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout, parse_constant=reject_constant)
    expected = updated(state, [x for x, _ in user["loader"]()])
    counts = {k: int((~torch.isfinite(expected[k])).sum()) for k in BN_KEYS[:2]}
    assert counts == {"1.running_mean": 1, "1.running_var": 1}  # the oracle saw channel 2 only
    assert report["non_finite"] == counts
    assert report["layers"][0]["mean_change"] is None and report["layers"][0]["var_change"] is None
    assert report["warnings"] == [
        "the re-estimated BatchNorm statistics hold 2 non-finite value(s) in 2 tensor(s) (most in "
        "'1.running_mean', '1.running_var'): check the checkpoint's weights and the data for NaN "
        "or infinite values"
    ]
    assert r.stderr == f"wa: warning: {report['warnings'][0]}\n"
    out = load_file(user["out"])
    for key in BN_KEYS[:2]:
        torch.testing.assert_close(out[key], expected[key], rtol=1e-6, atol=1e-6, equal_nan=True)


def test_float64_npy_with_a_one_row_tail_and_drop_last(user, tmp_path, capsys):
    # np.save writes float64; 65 rows in batches of 64 leave one row, which BatchNorm1d rejects.
    x = np.random.default_rng(1).normal(loc=2.0, scale=3.0, size=(65, 3))
    np.save(tmp_path / "x.npy", x)
    torch.manual_seed(0)
    mlp = user["mlp"]()
    save_file(mlp.state_dict(), tmp_path / "mlp.safetensors")
    args = ["bn-recalibrate", tmp_path / "mlp.safetensors", "-o", user["out"], "--force",
            "--model", f"{user['code']}:mlp", "--data", tmp_path / "x.npy"]  # fmt: skip
    r = run_wa(args, capsys)
    assert r.code == 0, r.stderr
    assert "1 batches, 64 samples" in r.stdout
    assert f"note: left out the last row of data file '{tmp_path / 'x.npy'}'" in r.stdout
    rows = torch.from_numpy(x).float()
    reference = copy.deepcopy(mlp)
    update_bn([rows[:64]], reference)
    assert_close_states(load_file(user["out"]), reference.state_dict())
    params = json.loads(safe_open(str(user["out"]), "pt").metadata()["wa_params"])
    assert (params["batch_size"], params["input_key"], params["drop_last"]) == (
        64,
        "(array)",
        False,
    )
    assert params["dropped_rows"] == 1

    r = run_wa([*args, "--batch-size", "30", "--drop-last", "--json"], capsys)
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["batches"], report["samples"]) == (2, 60)
    assert report["notes"] == [
        f"left out the last 5 of 65 rows of data file '{tmp_path / 'x.npy'}': drop last, they do "
        "not fill a batch of 30"
    ]
    reference = copy.deepcopy(mlp)
    update_bn([rows[:30], rows[30:60]], reference)
    assert_close_states(load_file(user["out"]), reference.state_dict())
    params = json.loads(safe_open(str(user["out"]), "pt").metadata()["wa_params"])
    assert (params["batch_size"], params["drop_last"], params["dropped_rows"]) == (30, True, 5)


def test_provenance_records_the_loader_arguments(user, capsys):
    r = run_wa(
        ["bn-recalibrate", user["ckpt"], "-o", user["out"], "--model", f"{user['code']}:build",
         "--data", f"{user['code']}:loader", "--data-kwargs", '{"sizes": [4, 7]}', "-q"],
        capsys,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    params = json.loads(safe_open(str(user["out"]), "pt").metadata()["wa_params"])
    assert json.loads(params["data_kwargs"]) == {"sizes": [4, 7]}
    assert params["data"] == f"{user['code']}:loader" and params["batches"] == 2
    assert "batch_size" not in params  # the loader chose its own batches


def test_a_pickle_named_output_fails_before_any_forward_pass(tmp_path, capsys):
    from tests.helpers import REPO

    sample = REPO / "sample_checkpoints"
    out = tmp_path / "x.pt"
    calls = tmp_path / "calls"
    (tmp_path / "data.py").write_text(
        f"def loader():\n    open({str(calls)!r}, 'w').write('called')\n    return []\n"
    )
    r = run_wa(
        [
            "bn-recalibrate", sample / "run_a/ckpt_1350.safetensors", "-o", out,
            "--model", f"{sample}/model.py:build", "--data", f"{tmp_path}/data.py:loader",
        ],
        capsys,
    )  # fmt: skip
    assert_one_line_error(r, 2, "pickle suffix")
    assert not out.exists() and not calls.exists()  # the data loader was never called
