"""The collector is paused only while wa builds per-key records, and always switched back on."""

from __future__ import annotations

import gc

import pytest

import wa_cli as wa
from tests.helpers import make_trajectory, run_wa
from wa_cli.gc_pause import paused_gc


@pytest.fixture(autouse=True)
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_paused_inside_and_back_on_after_an_error():
    with pytest.raises(ZeroDivisionError), paused_gc():
        assert not gc.isenabled()
        with paused_gc():  # nested: the inner one leaves it paused for the outer
            pass
        assert not gc.isenabled()
        1 / 0  # noqa: B018
    assert gc.isenabled()


def test_a_caller_that_disabled_the_collector_keeps_it_disabled():
    gc.disable()
    with paused_gc():
        pass
    assert not gc.isenabled()


def test_the_library_and_the_cli_switch_it_back_on(tmp_path, capsys):
    paths = make_trajectory(tmp_path / "run", n=2).paths
    wa.average_to_file(paths, tmp_path / "a.safetensors")
    assert gc.isenabled()
    with pytest.raises(wa.WaError):
        wa.average_to_file([tmp_path / "missing.safetensors"], tmp_path / "b.safetensors")
    assert gc.isenabled()
    assert run_wa(["average", *paths, "-o", tmp_path / "c.safetensors", "-q"], capsys).code == 0
    assert gc.isenabled()
    assert run_wa(["average", tmp_path / "nope.safetensors", "-o", tmp_path / "d"], capsys).code
    assert gc.isenabled()
