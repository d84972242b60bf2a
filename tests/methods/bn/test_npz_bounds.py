"""An .npz member is bounded by the size its zip entry declares (a 1.6 MB bomb is refused)."""

from __future__ import annotations

import io
import resource
import zipfile

import numpy as np
import pytest
import torch

from tests.helpers import assert_one_line_error, make_trajectory, run_wa
from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.bn.tensor_data import tensor_file_batches


def _bomb(path):
    buf = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**8, 3, 5, 5)}
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(b"\0" * 1_600_000)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", buf.getvalue())


def test_a_member_declaring_more_than_it_holds_is_refused_without_allocating(tmp_path):
    bomb = tmp_path / "bomb.npz"
    _bomb(bomb)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WaError, match="declares 30000000000 bytes") as e:
        tensor_file_batches(bomb, batch_size=4)
    assert e.value.code == ExitCode.BAD_INPUT
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200


def test_an_honest_npz_still_reads(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(8, 3)
    np.savez_compressed(tmp_path / "ok.npz", x=data)
    batches = list(tensor_file_batches(tmp_path / "ok.npz", batch_size=4))
    assert torch.equal(torch.cat(batches), torch.from_numpy(data))


def test_the_bomb_through_the_cli_is_one_line(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "run", n=1)
    bomb = tmp_path / "bomb.npz"
    _bomb(bomb)
    r = run_wa(
        ["bn-recalibrate", traj.paths[0], "--model", "tests.helpers:tiny_cnn",
         "--model-kwargs", '{"seed": 0}', "--data", bomb, "-o", tmp_path / "o.safetensors"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(r, 3, "declares")
    assert not (tmp_path / "o.safetensors").exists()
