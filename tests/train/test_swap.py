"""SWAP phase 3: two gloo processes on the CPU end with the mean of their two models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from wa_cli.errors import WaError
from wa_cli.train.swap import average_across_processes


def worker_model(rank: int) -> nn.Module:
    torch.manual_seed(rank)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2))
    bn = model[1]
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.num_batches_tracked.fill_(10 + rank)  # int buffer: must keep each process's value
    return model


def fake_recalibrate(model: nn.Module) -> None:
    # stands in for wa.recalibrate_bn: per-process statistics (different data shards)
    bn = model[1]
    bn.running_mean.fill_(float(dist.get_rank() + 1))  # 1 and 2 -> mean 1.5


def run(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        for recalibrate in (False, True):
            model = worker_model(rank)
            average_across_processes(model, recalibrate=fake_recalibrate if recalibrate else None)
            torch.save(model.state_dict(), Path(out) / f"rank{rank}_{recalibrate}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_average_is_the_mean_of_the_two_models(tmp_path: Path) -> None:
    # one spawn for both cases: starting two processes that import torch is the slow part
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(run, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    a, b = worker_model(0).state_dict(), worker_model(1).state_dict()
    for rank in (0, 1):
        for recalibrate in (False, True):
            got = torch.load(tmp_path / f"rank{rank}_{recalibrate}.pt", weights_only=True)
            assert set(got) == set(a)
            for key, value in got.items():
                if key.endswith("num_batches_tracked"):
                    assert value.item() == 10 + rank
                elif recalibrate and key == "1.running_mean":
                    torch.testing.assert_close(value, torch.full((3,), 1.5))
                else:
                    # float64 mean, rounded once to float32: the all-reduce must match exactly
                    expected = ((a[key].double() + b[key].double()) / 2).float()
                    torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)


def test_needs_an_initialized_process_group() -> None:
    with pytest.raises(WaError, match="not initialized"):
        average_across_processes(nn.Linear(2, 2))
