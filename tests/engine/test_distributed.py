"""The pieces of a distributed run that need no processes: detection, partitions, plan summaries."""

from __future__ import annotations

import itertools

import pytest

from wa_cli.engine import distributed, launch_env, plan_digest
from wa_cli.errors import WaError


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"WORLD_SIZE": "1"}, False),
        ({"WORLD_SIZE": "4"}, True),
    ],
)
def test_launched_only_with_several_ranks(env, expected):
    assert distributed.launched(env) is expected


def brute_force_best(costs: list[int], world: int) -> int:
    """The smallest possible largest load (exhaustive: the oracle for small cases)."""
    best = sum(costs)
    for owners in itertools.product(range(world), repeat=len(costs)):
        loads = [0] * world
        for c, o in zip(costs, owners):
            loads[o] += c
        best = min(best, max(loads))
    return best


@pytest.mark.parametrize("costs", [[5, 1, 4, 2], [10, 1, 1, 1, 1, 1], [3, 3, 2, 2, 2], [7], []])
@pytest.mark.parametrize("world", [2, 3])
def test_balanced_assignment_is_within_4_3_of_the_best(costs, world):
    owners = distributed.assign_balanced(costs, world)
    assert len(owners) == len(costs) and all(0 <= o < world for o in owners)
    loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(world)]
    # Largest-first greedy (LPT) is within 4/3 of the optimum (Graham 1969).
    assert max(loads, default=0) <= 4 / 3 * brute_force_best(costs, world) + 1e-9
    assert owners == distributed.assign_balanced(list(costs), world)  # deterministic


def summary(inputs, sizes=None, **extra):
    s = {"inputs": inputs, "sizes": sizes or [[p, 10] for p in inputs]}
    s.update({"tensors": 3, "headers": "h", "weights": "w", "output": "o"}, **extra)
    return s


def test_equal_summaries_pass():
    plan_digest.compare([summary(["a", "b"]), summary(["a", "b"]), summary(["a", "b"])])


def test_a_missing_input_is_named_with_the_rank():
    with pytest.raises(WaError) as e:
        plan_digest.compare(
            [summary(["a", "b", "c"]), summary(["a", "b", "c"]), summary(["a", "b"])]
        )
    assert e.value.message.startswith(
        "rank 2 planned a different run than rank 0: rank 2 lacks 'c' (2 input(s) on rank 2, 3 "
        "on rank 0)"
    )
    assert e.value.code == 3


def test_a_file_of_another_size_is_named():
    ref = summary(["a"], [["a/model.safetensors", 100]])
    other = summary(["a"], [["a/model.safetensors", 96]])
    with pytest.raises(WaError, match="'a/model.safetensors' is 96 bytes on rank 1 but 100 bytes"):
        plan_digest.compare([ref, other])


def test_other_headers_are_reported():
    with pytest.raises(WaError, match="rank 1 .*the output headers"):
        plan_digest.compare([summary(["a"]), summary(["a"], headers="x")])


def test_the_digest_is_stable_and_sensitive():
    assert plan_digest.digest([1, "a"]) == plan_digest.digest([1, "a"])
    assert plan_digest.digest([1, "a"]) != plan_digest.digest([1, "b"])


def test_timeout_must_be_positive(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "0")
    with pytest.raises(WaError, match="WA_DIST_TIMEOUT must be a number of seconds"):
        launch_env.timeout_seconds()
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "2.5")
    assert launch_env.timeout_seconds() == 2.5
