"""Resource bombs: small files that would take gigabytes are refused in one line, early.

* A ``.pt`` whose storage is deflated (``torch.save`` never compresses): 80 MiB of zeros in a
  file of a few hundred KB. Before, ``torch.load`` inflated it whole (a 1 MB one took 1.2 GB).
* A safetensors header of one tensor with millions of dimensions: before, the command built
  4 GB of Python objects from a 100 MB header (the safetensors library takes 2 GB).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zipfile

import pytest
import torch

from tests.helpers import REPO, CliResult, assert_one_line_error, make_trajectory, run_wa


def _deflated_copy(src, dst):
    """The same torch.save archive, every member deflated (how a bomb is made by hand)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename), zipfile.ZIP_DEFLATED)


def test_a_deflated_pt_storage_that_expands_is_refused(tmp_path, capsys):
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(20 << 20)}, plain)  # 80 MiB of zeros
    bomb = tmp_path / "bomb.pt"
    _deflated_copy(plain, bomb)
    plain.unlink()
    assert bomb.stat().st_size < 1 << 20
    r = run_wa(["average", bomb, bomb, "-o", tmp_path / "o.safetensors"], capsys)
    assert_one_line_error(r, 3, "bomb.pt", "expand", "re-save")
    assert not (tmp_path / "o.safetensors").exists()


def test_a_deflated_pt_of_modest_size_still_loads(tmp_path, capsys):
    """Compression itself is no crime: a small deflated checkpoint is read as before."""
    traj = make_trajectory(tmp_path / "run", n=2, form="pt")
    for p in traj.paths:
        _deflated_copy(p, p.with_suffix(".tmp"))
        os.replace(p.with_suffix(".tmp"), p)
    r = run_wa(["average", *traj.paths, "-o", tmp_path / "o.safetensors"], capsys)
    assert r.code == 0, r.stderr


def test_a_header_with_millions_of_dimensions_is_refused_in_little_memory(tmp_path):
    n = 5_000_000  # a 10 MB header; the campaign's 100 MB one has ten times as many
    body = b'{"w":{"dtype":"F32","shape":[' + b",".join([b"1"] * n) + b'],"data_offsets":[0,4]}}'
    body += b" " * (-len(body) % 8)
    path = tmp_path / "dims.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 4)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # A parent of its own: RUSAGE_CHILDREN then measures this wa process alone.
    wrapper = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run([sys.executable, '-m', 'wa_cli', *sys.argv[1:]])\n"
        "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
        "sys.exit(r.returncode)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, "average", path, "-o", tmp_path / "o.safetensors"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert_one_line_error(CliResult(proc.returncode, "", proc.stderr), 3, "dimensions")
    # torch alone is ~250 MB; before the fix this run peaked near 700 MB.
    assert int(proc.stdout) < 600 * 1024, proc.stdout


def test_a_compressed_npz_of_zeros_is_refused_before_it_is_inflated(tmp_path):
    """BatchNorm data: numpy inflates a member whole (1.6 MB took 1.8 GB for two batches)."""
    import numpy as np

    from wa_cli.errors import WaError
    from wa_cli.methods.bn.tensor_data import tensor_file_batches

    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, x=np.zeros((2048, 3, 64, 64), dtype=np.float32))  # 96 MiB
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(WaError, match="expand") as e:
        tensor_file_batches(bomb, batch_size=4)
    assert e.value.code == 3
