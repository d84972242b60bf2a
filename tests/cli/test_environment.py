"""Environment variables wa reads (docs/environment.md): bad values are one line naming them."""

from __future__ import annotations

import pytest

from tests.helpers import assert_one_line_error, run_wa


@pytest.mark.parametrize("value", ["no", "NO", "false", "off", "0", ""])
def test_wa_debug_off_values_keep_tracebacks_off(tmp_path, capsys, monkeypatch, value):
    monkeypatch.setenv("WA_DEBUG", value)
    r = run_wa(
        ["average", tmp_path / "missing.safetensors", "-o", tmp_path / "o.safetensors"], capsys
    )
    assert_one_line_error(r, 3, "missing.safetensors")


@pytest.mark.parametrize("value", ["1", "true", "Yes", "on"])
def test_wa_debug_on_values_raise(tmp_path, capsys, monkeypatch, value):
    from wa_cli.errors import WaError

    monkeypatch.setenv("WA_DEBUG", value)
    with pytest.raises(WaError):
        run_wa(
            ["average", tmp_path / "missing.safetensors", "-o", tmp_path / "o.safetensors"], capsys
        )


def test_wa_debug_unknown_value_warns_and_stays_off(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WA_DEBUG", "maybe")
    r = run_wa(
        ["average", tmp_path / "missing.safetensors", "-o", tmp_path / "o.safetensors"], capsys
    )
    lines = r.stderr.splitlines()
    assert r.code == 3 and "Traceback" not in r.stderr
    assert lines[0].startswith("wa: warning: WA_DEBUG='maybe' is not one of"), lines
    assert lines[1].startswith("wa: error: ") and len(lines) == 2
