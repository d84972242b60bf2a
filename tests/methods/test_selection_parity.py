"""The library selects as the command does: ``wa.average(..., last=5)`` is ``wa average --last 5``.

For each of ``last``, ``every``, ``from_step``/``to_step``, ``top_k`` + ``metric`` + ``mode``
(from metadata and from a metrics file) and the dry run, the real ``wa`` command and the library
call run on the same trajectory; the outputs must be the same bytes (the library is given the
command line the CLI records, so the provenance agrees too), the reports the same apart from
timings, and the dry-run plans equal. An independent oracle checks the selected mean as well.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import wa_cli as wa
from tests.helpers import run_wa, run_wa_process

# Steps and losses in metadata; alphabetical order is not step order.
META = {"apple": (300, 0.40), "banana": (100, 0.90), "cherry": (500, 0.35), "damson": (200, 0.6)}
META |= {"elder": (400, 0.30), "fig": (600, 0.50)}

CASES = {
    "last": (["--last", "3"], {"last": 3}),
    "every": (["--every", "2"], {"every": 2}),
    "step range": (["--from-step", "200", "--to-step", "400"], {"from_step": 200, "to_step": 400}),
    "top-k": (
        ["--top-k", "2", "--metric", "val_loss", "--mode", "min"],
        {"top_k": 2, "metric": "val_loss", "mode": "min"},
    ),
    "order": (["--order", "step", "--last", "2"], {"order": "step", "last": 2}),
}
METHODS = {
    "average": ([], {}),  # weights: one per selected checkpoint, set in the test
    "ema": (["--half-life", "150"], {"half_life": 150.0}),
}


@pytest.fixture
def traj(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "run"
    folder.mkdir()
    paths = []
    for i, (name, (step, loss)) in enumerate(META.items()):
        path = folder / f"{name}.safetensors"
        g = torch.Generator().manual_seed(i)
        state = {"w": torch.randn(4, 3, generator=g), "n": torch.tensor(step)}
        save_file(state, path, {"format": "pt", "step": str(step), "val_loss": str(loss)})
        paths.append(path)
    return paths


def _library(method: str, paths: list[Path], out: Path | None, own: dict, sel: dict, argv: list):
    """The library call equal to ``wa METHOD ...``: the CLI's own defaults made explicit."""
    if method == "ema" and "order" not in sel:
        sel = {**sel, "order": "auto"}  # `wa ema` sorts its inputs by default
    verb = wa.average_to_file if method == "average" else wa.ema_to_file
    kwargs = {**own, **sel, "drop_duplicates": True}
    if out is None:
        return verb(paths, dry_run=True, **kwargs)
    return verb(paths, out, command=shlex.join(["wa", *map(str, argv)]), **kwargs)


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


def _timeless(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("seconds", "gb_per_s", "outputs")}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", list(METHODS))
def test_library_writes_the_bytes_the_command_writes(tmp_path, traj, capsys, method, case):
    flags, sel = CASES[case]
    own_flags, own = METHODS[method]
    if method == "average":  # one weight per selected checkpoint
        n = len(_library(method, traj, None, {}, sel, []).checkpoints)
        weights = list(range(1, n + 1))
        own_flags, own = ["--weights", ",".join(map(str, weights))], {"weights": weights}
    cli_out, lib_out = tmp_path / "cli.safetensors", tmp_path / "lib.safetensors"
    argv = [method, *traj, *flags, *own_flags, "-o", cli_out, "--json"]
    r = run_wa(argv, capsys)
    assert r.code == 0, r.stderr
    report = _library(method, traj, lib_out, own, sel, argv)
    assert _metadata(lib_out) == _metadata(cli_out)
    assert lib_out.read_bytes() == cli_out.read_bytes()
    assert _timeless(report.to_json()) == _timeless(json.loads(r.stdout))
    plan = _library(method, traj, None, own, sel, [])
    dry = run_wa([*argv[:-3], "--dry-run", "--json"], capsys)
    assert dry.code == 0, dry.stderr
    assert plan.to_json() == json.loads(dry.stdout)


def test_selected_mean_against_an_independent_oracle(traj):
    # --last 3 in step order: elder (400), cherry (500), fig (600), whatever the names say.
    state = dict(wa.average(traj, last=3))
    kept = [load_file(traj[list(META).index(n)]) for n in ("elder", "cherry", "fig")]
    expected = sum(s["w"].double() for s in kept) / 3
    assert torch.equal(state["w"], expected.float())
    assert int(state["n"]) == 600  # the non-float tensor of the last selected, in step order


def test_top_k_from_a_metrics_file(tmp_path, traj, capsys):
    metrics = tmp_path / "metrics.csv"
    rows = [f"{p.name},{acc}" for p, acc in zip(traj, (0.7, 0.9, 0.6, 0.8, 0.95, 0.5))]
    metrics.write_text("file,val_acc\n" + "\n".join(rows) + "\n")
    flags = ["--top-k", "3", "--metric", "val_acc", "--metrics", metrics]
    r = run_wa(["average", *traj, *flags, "--dry-run", "--json"], capsys)
    assert r.code == 0, r.stderr
    plan = wa.average(traj, top_k=3, metric="val_acc", metrics=metrics, dry_run=True)
    assert plan.to_json() == json.loads(r.stdout)
    assert [row["name"] for row in plan.checkpoints] == [
        "banana.safetensors", "damson.safetensors", "elder.safetensors"
    ]  # fmt: skip


def test_the_real_process_agrees(tmp_path, traj):
    """One run through ``python -m wa_cli`` (not the in-process entry point)."""
    out = tmp_path / "cli.safetensors"
    r = run_wa_process(["average", *traj, "--last", "2", "-o", out, "--json"])
    assert r.code == 0, r.stderr
    state = dict(wa.average(traj, last=2))
    written = load_file(out)
    assert state.keys() == written.keys()
    assert all(torch.equal(state[k], written[k]) for k in state)


def test_library_errors_name_parameters_and_the_command_names_flags(traj, capsys):
    with pytest.raises(wa.WaError, match=r"^last must be >= 1|last") as e:
        wa.average(traj, last=0)
    assert "last" in e.value.params
    r = run_wa(["average", *traj, "--last", "0", "--dry-run"], capsys)
    assert r.code == 2 and "--last" in r.stderr, r.stderr
    with pytest.raises(TypeError, match="unexpected keyword argument 'lats'"):
        wa.average(traj, lats=3)  # type: ignore[call-arg]
