"""No pickle runs code, with or without --allow-global (issue 22 item 1; issue 21 item 3).

Each payload is a real pickle whose ``__reduce__`` calls a global from a module that can run code
or touch the system, with arguments that would leave a marker file behind if the call ran
(``subprocess.Popen(["touch", m])``, ``io.FileIO(m, "w")``, ``logging.FileHandler(m)``, ...).
The command must refuse the flag (exit 2) and the file without it (exit 3), in one line each,
and the marker must never appear.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import assert_one_line_error, cnn_state, run_wa
from wa_cli.errors import ExitCode, WaError
from wa_cli.io.pickle_globals import KNOWN_DATA, never_admitted
from wa_cli.io.reader import ReadOptions, open_checkpoint


class Call:
    """Pickles as ``target(*args)``: what a crafted checkpoint does."""

    def __init__(self, target, *args):
        self.target, self.args = target, args

    def __reduce__(self):
        return (self.target, self.args)


class Sneaky(io.FileIO):
    """A user class that derives from a system class: refused through its bases."""


def _payloads(marker: Path) -> list[tuple[str, object]]:
    """(the name a user would pass to --allow-global, the call) for each refused module."""
    import code
    import ctypes
    import multiprocessing
    import pathlib
    import pickle
    import socket
    import subprocess
    import tempfile
    import zipfile

    m = str(marker)
    return [
        ("subprocess.Popen", Call(subprocess.Popen, ["touch", m])),
        ("os.system", Call(__import__("os").system, f"touch {m}")),
        ("sys.exit", Call(sys.exit, 3)),
        ("builtins.exec", Call(exec, f"open({m!r}, 'w')")),
        ("builtins.open", Call(open, m, "w")),
        ("importlib.import_module", Call(__import__("importlib").import_module, "antigravity")),
        ("shutil.copyfile", Call(__import__("shutil").copyfile, __file__, m)),
        ("socket.socket", Call(socket.socket)),
        ("ctypes.CDLL", Call(ctypes.CDLL, None)),
        ("multiprocessing.Process", Call(multiprocessing.Process)),
        ("pty.spawn", Call(__import__("pty").spawn, ["touch", m])),
        ("runpy.run_path", Call(__import__("runpy").run_path, m)),
        ("code.InteractiveInterpreter", Call(code.InteractiveInterpreter)),
        ("pickle.loads", Call(pickle.loads, b"N.")),
        ("io.FileIO", Call(io.FileIO, m, "w")),
        ("pathlib.Path", Call(pathlib.Path, m)),
        ("tempfile.TemporaryDirectory", Call(tempfile.TemporaryDirectory)),
        ("logging.FileHandler", Call(logging.FileHandler, m)),
        ("zipfile.ZipFile", Call(zipfile.ZipFile, m, "w")),
        ("numpy.memmap", Call(np.memmap, m, np.uint8, "w+", 0, (1,))),
        ("functools.partial", Call(__import__("functools").partial, print)),
        ("types.SimpleNamespace", Call(__import__("types").SimpleNamespace)),
        (f"{__name__}.Sneaky", Call(Sneaky, m, "w")),
    ]


@pytest.mark.parametrize("index", range(len(_payloads(Path("x")))))
def test_a_payload_per_module_is_refused_with_and_without_the_flag(tmp_path, capsys, index):
    marker = tmp_path / "pwned"
    name, payload = _payloads(marker)[index]
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": payload}, evil)
    out = tmp_path / "o.safetensors"

    refused = run_wa(["average", evil, "-o", out], capsys)
    assert_one_line_error(refused, 3, "weights_only=True refuses")
    assert "--allow-global" not in refused.stderr  # never suggested for these

    flagged = run_wa(["average", evil, "--allow-global", name, "-o", out], capsys)
    assert_one_line_error(flagged, 2, f"--allow-global '{name}' is refused", "never admits it")

    assert not marker.exists() and not out.exists()


def test_library_refuses_a_refused_class_passed_as_an_object(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "a.pt")
    with pytest.raises(WaError, match=r"_io\.FileIO is refused: module '_io'") as info:
        open_checkpoint(tmp_path / "a.pt", options=ReadOptions(allow_globals=[io.FileIO]))
    assert info.value.code == ExitCode.USAGE


def test_numpy_arrays_and_rng_states_load_without_flags(tmp_path):
    """What Composer and hand-written loops save beside the weights (numpy's own pickling)."""
    state = cnn_state(0)
    torch.save(
        {
            "state": {"model": state},
            "rng": [np.random.get_state(), np.random.default_rng(0), np.random.RandomState(1)],
            "extra": {"arr": np.arange(3.0), "scalar": np.float32(2.5)},
        },
        tmp_path / "a.pt",
    )
    ckpt = open_checkpoint(tmp_path / "a.pt", options=ReadOptions(key="state.model"))
    assert torch.equal(ckpt.tensor("4.weight"), state["4.weight"])


def test_hydra_config_refusal_names_every_global_in_one_command(tmp_path, capsys):
    """A Lightning checkpoint with Hydra hyper-parameters needs several globals: one line names
    them all with the one command that admits them, and that command then works."""
    omegaconf = pytest.importorskip("omegaconf")
    state = {f"model.{k}": v for k, v in cnn_state(0).items()}
    hparams = omegaconf.OmegaConf.create({"lr": 0.1, "net": {"widths": [8, 16]}})
    torch.save(
        {"global_step": 7, "state_dict": state, "hyper_parameters": hparams}, tmp_path / "a.ckpt"
    )
    out = tmp_path / "o.safetensors"

    refused = run_wa(["average", tmp_path / "a.ckpt", "-o", out], capsys)
    assert_one_line_error(refused, 3, "only hold data: admit them with --allow-global ")
    line = refused.stderr.strip()
    command = line[line.index("--allow-global ") :].split(";")[0].split()
    needed = command[1::2]
    assert set(needed) <= set(KNOWN_DATA) and "omegaconf.dictconfig.DictConfig" in needed
    assert len(needed) >= 3

    result = run_wa(["average", tmp_path / "a.ckpt", *command, "-o", out], capsys)
    assert result.code == 0, result.stderr


def test_mixed_refusal_sorts_known_never_and_unknown(tmp_path):
    torch.save(
        {
            "w": torch.ones(1),
            "a": Call(dict),
            "b": Call(__import__("os").system, "true"),
            "c": Sneaky,
        },
        tmp_path / "a.pt",
    )
    with pytest.raises(WaError) as info:
        open_checkpoint(tmp_path / "a.pt")
    message = str(info.value)
    assert "admit them with allow_globals builtins.dict;" in message
    assert "wa never admits 'posix.system'" in message
    assert f"'{__name__}.Sneaky' are not classes wa knows" in message
    assert "\n" not in message


def test_never_admitted_rules():
    assert never_admitted("argparse.Namespace", argparse.Namespace) is None
    assert never_admitted("builtins.dict", dict) is None
    assert never_admitted("builtins.type", type) is not None
    assert never_admitted("collections.namedtuple", __import__("collections").namedtuple)
    assert never_admitted("os.path.join") is not None  # a whole module tree
