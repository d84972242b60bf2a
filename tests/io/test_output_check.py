"""The one output guard (wa_cli.io.output_check): every check on an output before any tensor is
read, and the commands that call it before their expensive part."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import cnn_state, tiny_cnn
from wa_cli.errors import ExitCode, WaError
from wa_cli.io.output_check import check_output
from wa_cli.methods.bn.checkpoint import recalibrate_checkpoint


def _safetensors(path: Path) -> Path:
    save_file({"w": torch.zeros(2)}, str(path))
    return path


@pytest.mark.parametrize(
    ("name", "layout", "match", "code"),
    [
        ("avg.pt", "file", "a pickle suffix", ExitCode.USAGE),
        ("avg.pth.tar", "file", "a pickle suffix", ExitCode.USAGE),
        ("merged.safetensors", "dcp", "names a file", ExitCode.USAGE),
        ("folder", "file", "is a folder", ExitCode.OUTPUT),
    ],
)
def test_a_name_that_does_not_fit_the_layout_is_refused(
    tmp_path: Path, name: str, layout: str, match: str, code: ExitCode
) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(WaError, match=match) as info:
        check_output(tmp_path / name, layout=layout)  # type: ignore[arg-type]
    assert info.value.code == code
    check_output(tmp_path / "folder", layout="shards", existing=False)  # shards go in a folder


def test_an_input_is_never_an_output_even_with_force(tmp_path: Path) -> None:
    a = _safetensors(tmp_path / "a.safetensors")
    with pytest.raises(WaError, match="would overwrite the input") as info:
        check_output(a, reads=[a], force=True, existing=False)
    assert info.value.code == ExitCode.OUTPUT
    (tmp_path / "link.safetensors").symlink_to(a)
    with pytest.raises(WaError, match="would overwrite the input"):  # a link to an input
        check_output(tmp_path / "link.safetensors", reads=[a], force=True)


def test_what_is_there_is_checked_unless_nothing_will_be_written(tmp_path: Path) -> None:
    out = _safetensors(tmp_path / "out.safetensors")
    with pytest.raises(WaError, match="exists") as info:
        check_output(out)
    assert info.value.code == ExitCode.OUTPUT
    check_output(out, force=True)  # a safetensors file wa may replace
    check_output(out, existing=False)  # a dry run: nothing is written
    script = tmp_path / "train.py"
    script.write_text("print('mine')\n")
    with pytest.raises(WaError, match="not a safetensors file"):
        check_output(script, force=True)
    with pytest.raises(WaError, match="does not exist"):
        check_output(tmp_path / "missing" / "out.safetensors")


def test_a_plot_replaces_only_a_plot(tmp_path: Path) -> None:
    png = tmp_path / "p.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(8))
    check_output(png, force=True, layout="plot")
    with pytest.raises(WaError, match="not a plot"):
        check_output(_safetensors(tmp_path / "p2.png"), force=True, layout="plot")


def test_bn_recalibrate_refuses_an_existing_output_before_running_the_model(
    tmp_path: Path,
) -> None:
    """Before the guard ran first, the forward passes ran and the writer refused at the end."""
    save_file(cnn_state(1), tmp_path / "in.safetensors")
    existing = _safetensors(tmp_path / "out.safetensors")
    before = existing.read_bytes()

    def data() -> list[torch.Tensor]:
        raise AssertionError("the data must not be read: the output is refused first")

    with pytest.raises(WaError, match="exists") as info:
        recalibrate_checkpoint(tmp_path / "in.safetensors", existing, tiny_cnn(0), data)
    assert info.value.code == ExitCode.OUTPUT
    assert existing.read_bytes() == before
