"""The launch variables are checked before torch sees them: one line naming the bad one."""

from __future__ import annotations

import pytest

from wa_cli.engine import distributed
from wa_cli.engine.launch_env import launch_environment, timeout_seconds
from wa_cli.errors import WaError

GOOD = {
    "WORLD_SIZE": "2",
    "RANK": "0",
    "LOCAL_RANK": "0",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-1", "0", "abc", "-inf", "1e9"])
def test_a_timeout_that_is_not_a_finite_positive_number_is_refused(value):
    with pytest.raises(WaError, match=f"WA_DIST_TIMEOUT must be .* got '{value}'"):
        timeout_seconds({"WA_DIST_TIMEOUT": value})


def test_timeouts_that_are_accepted():
    assert timeout_seconds({}) == 1800.0
    assert timeout_seconds({"WA_DIST_TIMEOUT": " 2.5 "}) == 2.5


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"RANK": "2"}, "RANK='2'"),
        ({"RANK": "-1"}, "RANK='-1'"),
        ({"RANK": ""}, "RANK is not set"),
        ({"LOCAL_RANK": "zero"}, "LOCAL_RANK='zero'"),
        ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "1"}, "LOCAL_RANK='1'"),
        ({"LOCAL_WORLD_SIZE": "two"}, "LOCAL_WORLD_SIZE='two'"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT='70000'"),
        ({"MASTER_PORT": ""}, "MASTER_PORT is not set"),
        ({"MASTER_ADDR": ""}, "MASTER_ADDR is not set"),
        ({"WORLD_SIZE": "2.0"}, "WORLD_SIZE='2.0'"),
    ],
)
def test_a_bad_variable_is_named(change, named):
    with pytest.raises(WaError) as e:
        launch_environment({**GOOD, **change})
    assert e.value.message.startswith(named), e.value.message
    assert "\n" not in e.value.message


def test_whom_a_rank_waits_for():
    assert launch_environment(GOOD).waiting_for() == "rank 1"
    assert launch_environment({**GOOD, "WORLD_SIZE": "4"}).waiting_for() == "ranks 1 to 3"
    assert launch_environment({**GOOD, "RANK": "1", "LOCAL_RANK": "1"}).waiting_for() == "rank 0"
    ipv6 = launch_environment({**GOOD, "MASTER_ADDR": "::1"})
    assert ipv6.address == "[::1]:29500"


@pytest.mark.parametrize("value", ["x", "0", "-3", "two"])
def test_a_world_size_that_is_not_a_count_is_refused_not_ignored(value):
    """It used to mean "one process": every rank then wrote the same output on its own."""
    with pytest.raises(WaError, match=f"WORLD_SIZE='{value}'"):
        distributed.launched({"WORLD_SIZE": value})
