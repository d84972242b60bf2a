"""wa_cli.session: the process around the verbs, as the wa command and a user's script use it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import wa_cli as wa
from wa_cli import session
from wa_cli.engine.provenance import current_command
from wa_cli.errors import WaError
from wa_cli.io import guard


def test_a_command_is_recorded_and_guarded_only_inside_its_block(tmp_path: Path) -> None:
    a = tmp_path / "a.safetensors"
    save_file({"w": torch.ones(2)}, str(a))
    with session.command(["average", str(a), "-o", "x.safetensors"]):
        assert current_command() == f"wa average {a} -o x.safetensors"
        wa.average_to_file([a, a], tmp_path / "out.safetensors")
        assert {r.path for r in guard.noted_reads()} == {a.resolve()}
        with pytest.raises(WaError, match="would overwrite the input"):
            guard.refuse_inputs(a)  # the guard remembers the reads of the whole command
    assert current_command() == "(python API)"
    assert guard.noted_reads() == []


def test_written_note_names_only_the_outputs_committed_since(tmp_path: Path) -> None:
    a = tmp_path / "a.safetensors"
    save_file({"w": torch.ones(2)}, str(a))
    before = session.outputs_written()
    assert session.written_note(before) == "nothing was written"
    wa.average_to_file([a, a], tmp_path / "out.safetensors")
    assert session.outputs_written() == before + 1
    assert session.written_note(before) == f"after writing '{tmp_path / 'out.safetensors'}'"


def test_alone_a_failure_is_printed_by_this_process() -> None:
    error = WaError("decay must be in [0, 1]")
    session.join_ranks(["average"])  # not under torchrun: nothing to join
    assert session.failure(error) == ("decay must be in [0, 1]", error.code)
    session.ranks_done()
