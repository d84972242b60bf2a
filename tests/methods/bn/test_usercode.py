"""resolve_callable, call_factory, load_state_dict_strict: user code, weights, one-line errors."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from wa_cli.cli.flags import spell
from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.bn.usercode import call_factory, load_state_dict_strict, resolve_callable


@pytest.fixture
def unique() -> str:
    """A module name no other test (or installed package) uses."""
    return f"wa_test_{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def clean_imports():
    """Forget modules and sys.path entries a test added, so tests stay independent."""
    modules, path = set(sys.modules), list(sys.path)
    yield
    for name in set(sys.modules) - modules:
        del sys.modules[name]
    sys.path[:] = path


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


def test_module_form_with_dotted_attribute(tmp_path, monkeypatch, unique) -> None:
    write(
        tmp_path / f"{unique}.py",
        """
        class Builder:
            @staticmethod
            def create(width=3):
                return ["net", width]
        """,
    )
    monkeypatch.chdir(tmp_path)  # the working directory is searched, as `python -m` would
    fn = resolve_callable(f"{unique}:Builder.create", what="model factory")
    assert fn(width=5) == ["net", 5]
    assert str(tmp_path) not in sys.path


def test_file_form_imports_siblings_without_polluting_sys_modules(tmp_path, unique) -> None:
    write(tmp_path / f"{unique}_helpers.py", "WIDTH = 7\n")
    net = write(
        tmp_path / "net.py",
        f"""
        import {unique}_helpers

        def build():
            return {unique}_helpers.WIDTH
        """,
    )
    before = sys.modules.get("net")
    fn = resolve_callable(f"{net}:build", what="model factory")
    assert fn() == 7
    assert sys.modules.get("net") is before  # imported under a unique name, not as 'net'
    assert str(tmp_path) not in sys.path
    again = resolve_callable(f"{net}:build", what="data loader")
    assert again is fn  # one file named twice is imported once


def test_same_stem_in_two_folders_gives_two_modules(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write(tmp_path / "a" / "net.py", "def f():\n    return 1\n")
    b = write(tmp_path / "b" / "net.py", "def f():\n    return 2\n")
    assert resolve_callable(f"{a}:f", what="fn")() == 1
    assert resolve_callable(f"{b}:f", what="fn")() == 2


@pytest.mark.parametrize("spec", ["mynet", "mynet:", ":build", "mynet.py"])
def test_spec_without_both_parts(spec) -> None:
    with pytest.raises(WaError) as info:
        resolve_callable(spec, what="model factory")
    assert info.value.message == (
        f"model factory '{spec}' is not of the form 'package.module:name' or 'path/to/file.py:name'"
    )
    assert info.value.code == ExitCode.USAGE


def test_module_not_importable(unique) -> None:
    with pytest.raises(
        WaError,
        match=rf"cannot import module '{unique}' for the model factory: "
        rf"ModuleNotFoundError: No module named '{unique}'",
    ):
        resolve_callable(f"{unique}:build", what="model factory")


def test_missing_file(tmp_path) -> None:
    with pytest.raises(WaError, match=r"model factory file '.*nope\.py' does not exist"):
        resolve_callable(f"{tmp_path / 'nope.py'}:build", what="model factory")


def test_file_that_raises_on_import(tmp_path) -> None:
    bad = write(tmp_path / "broken.py", "def build(:\n")
    with pytest.raises(
        WaError,
        match=r"importing model factory file '.*broken\.py' raised "
        "SyntaxError",
    ):
        resolve_callable(f"{bad}:build", what="model factory")
    assert not [name for name in sys.modules if name.startswith("_wa_user_broken")]


def test_missing_attribute_lists_callables_and_suggests(tmp_path) -> None:
    net = write(
        tmp_path / "net.py",
        """
        import math
        WIDTH = 3
        def build(): ...
        def train_loader(): ...
        """,
    )
    with pytest.raises(WaError) as info:
        resolve_callable(f"{net}:bulid", what="model factory")
    assert info.value.message.endswith(
        "has no attribute 'bulid' (did you mean 'build'? callables: 'build', 'train_loader')"
    )


def test_not_callable(tmp_path) -> None:
    net = write(tmp_path / "net.py", "WIDTH = 3\n")
    with pytest.raises(WaError, match=r"model factory '.*net\.py:WIDTH' is a int, not a callable"):
        resolve_callable(f"{net}:WIDTH", what="model factory")


def test_call_factory_passes_kwargs_and_wraps_errors() -> None:
    def build(width: int) -> int:
        if width < 0:
            raise ValueError("width must be\n  positive")
        return width * 2

    assert call_factory(build, {"width": 4}, what="model factory") == 8
    with pytest.raises(WaError) as info:
        call_factory(build, {"width": -1}, what="model factory")
    assert info.value.message == (
        "model factory 'test_call_factory_passes_kwargs_and_wraps_errors.<locals>.build' "
        "raised ValueError: width must be positive"
    )
    assert isinstance(info.value.__cause__, ValueError)


def test_call_factory_lets_wa_errors_through() -> None:
    def build() -> None:
        raise WaError("already clear", ExitCode.OUTPUT)

    with pytest.raises(WaError) as info:
        call_factory(build, what="model factory")
    assert (info.value.message, info.value.code) == ("already clear", ExitCode.OUTPUT)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_strict_load_copies_every_tensor() -> None:
    model, source = small_model(), small_model()
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in source.state_dict().items()}
    load_state_dict_strict(model, state)
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_strict_load_names_missing_unexpected_and_shapes() -> None:
    state = dict(small_model().state_dict())
    del state["1.running_var"]
    state["2.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(4, 5)
    with pytest.raises(WaError) as info:
        load_state_dict_strict(small_model(), state)
    assert info.value.code == ExitCode.INCOMPATIBLE
    assert info.value.message == (
        "checkpoint does not fit the model: missing keys '1.running_var'; unexpected keys "
        "'2.weight'; shape mismatch '0.weight' (4, 5) in checkpoint vs (4, 3) in model "
        "(the model factory must build the architecture the checkpoint was saved from)"
    )


def test_strict_load_caps_lists_and_spots_a_prefix() -> None:
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(4)])  # 8 keys
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(WaError) as info:
        load_state_dict_strict(model, state)
    message = info.value.message
    assert (
        "missing keys '0.weight', '0.bias', '1.weight', '1.bias', '2.weight' and 3 more" in message
    )
    assert "unexpected keys 'module.0.weight'," in message
    assert message.endswith(
        "(the checkpoint's keys start with 'module.': pass strip_prefixes module. "
        "or strip_prefixes auto)"
    )
    cli = info.value.render(spell)
    assert cli.endswith("pass --strip-prefix module. or --strip-prefix auto)")
