"""``wa bn-recalibrate`` over 2 and 3 ranks equals one process's ``update_bn`` over all batches."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import update_bn

from tests.engine.dist_launch import launch, wa_errors
from tests.helpers import cnn_state, tiny_cnn

USER_CODE = """
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

SIZES = (5, 8, 3, 6, 7)


def batches():
    g = torch.Generator().manual_seed(0)
    return [(2 * torch.randn(b, 3, 5, 5, generator=g) + 1, torch.zeros(b)) for b in SIZES]


def loader():
    return batches()


def split_loader():
    x = torch.cat([b[0] for b in batches()])
    data = TensorDataset(x, torch.zeros(len(x)))
    return DataLoader(data, batch_size=4, sampler=DistributedSampler(data, shuffle=False))
"""


def user_code(tmp_path):
    code = tmp_path / "net.py"
    code.write_text(textwrap.dedent(USER_CODE))
    namespace: dict = {}
    exec(compile(code.read_text(), str(code), "exec"), namespace)
    return code, namespace


def with_update_bn(batches) -> dict[str, torch.Tensor]:
    model = tiny_cnn(seed=0)
    model.load_state_dict(cnn_state(seed=1))
    update_bn(batches, model)
    return model.state_dict()


def with_sample_weights(batches) -> dict[str, torch.Tensor]:
    """The SWA authors' bn_update: momentum b / (n + b) per batch of b after n samples."""
    model = tiny_cnn(seed=0)
    model.load_state_dict(cnn_state(seed=1))
    bn = model[1]
    bn.reset_running_stats()
    model.train()
    seen = 0
    with torch.no_grad():
        for x, _ in batches:
            bn.momentum = x.shape[0] / (seen + x.shape[0])
            model(x)
            seen += x.shape[0]
    return model.state_dict()


def run(tmp_path, world, extra, data="loader"):
    code, namespace = user_code(tmp_path)
    ckpt = tmp_path / "ckpt.safetensors"
    save_file(cnn_state(seed=1), ckpt, metadata={"format": "pt"})
    out = tmp_path / "out.safetensors"
    args = ["bn-recalibrate", ckpt, "-o", out, "--model", "tests.helpers:tiny_cnn",
            "--model-kwargs", '{"seed": 0}', "--data", f"{code}:{data}", "--device", "cpu",
            *extra]  # fmt: skip
    return launch(world, args), out, namespace


def assert_statistics(out, expected):
    got = load_file(out)
    for key in ("1.running_mean", "1.running_var"):
        assert (got[key] - expected[key]).abs().max().item() <= 1e-6, key
    assert got["1.num_batches_tracked"].item() == expected["1.num_batches_tracked"].item()
    for key in expected:  # every other tensor is the checkpoint's own
        if not key.startswith("1.running") and key != "1.num_batches_tracked":
            assert torch.equal(got[key], cnn_state(seed=1)[key]), key


def test_two_ranks_equal_update_bn(tmp_path):
    results, out, ns = run(tmp_path, 2, ["--json"])
    assert [r.code for r in results] == [0, 0], [r.stderr for r in results]
    assert_statistics(out, with_update_bn(ns["batches"]()))
    report = json.loads(results[0].stdout)
    assert (report["batches"], report["samples"]) == (5, sum(ns["SIZES"]))
    assert results[1].stdout == results[1].stderr == ""


@pytest.mark.slow
def test_three_ranks_sample_weighting_and_a_batch_limit(tmp_path):
    results, out, ns = run(tmp_path, 3, ["--weighting", "sample", "--batches", "4"])
    assert [r.code for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert_statistics(out, with_sample_weights(ns["batches"]()[:4]))


@pytest.mark.slow
def test_a_distributed_sampler_is_used_as_it_is(tmp_path):
    """Each rank's DataLoader holds its own samples; together they are every sample once."""
    results, out, ns = run(tmp_path, 2, [], data="split_loader")
    assert [r.code for r in results] == [0, 0], [r.stderr for r in results]
    x = torch.cat([b[0] for b in ns["batches"]()])
    n = len(x)  # DistributedSampler without shuffle: rank r takes r, r + 2, ... (padded)
    per_rank = [[x[i % n] for i in range(r, n + n % 2, 2)] for r in (0, 1)]
    all_batches = [
        (torch.stack(rows[i : i + 4]), None) for rows in per_rank for i in range(0, len(rows), 4)
    ]
    assert_statistics(out, with_update_bn(all_batches))


@pytest.mark.slow
def test_more_ranks_than_batches(tmp_path):
    results, out, ns = run(tmp_path, 3, ["--batches", "2"])
    assert [r.code for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert_statistics(out, with_update_bn(ns["batches"]()[:2]))


@pytest.mark.slow
def test_a_loader_that_does_not_exist_stops_both(tmp_path):
    results, out, _ = run(tmp_path, 2, [], data="missing_function")
    assert all(r.code != 0 for r in results)
    assert len(wa_errors(results[0].stderr)) == 1 and results[1].stderr == ""
    assert not out.exists()
