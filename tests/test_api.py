"""The notebook API, ``import wa_cli as wa``: verbs, inputs as the CLI takes them, checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import update_bn as torch_update_bn

import wa_cli as wa
from tests.helpers import REPO, make_trajectory, run_wa

SAMPLE = REPO / "sample_checkpoints" / "run_a"
SAMPLE_GLOB = str(SAMPLE / "*.safetensors")


def test_average_of_a_glob_equals_the_cli_output_bit_for_bit(tmp_path: Path, capsys) -> None:
    out = tmp_path / "swa.safetensors"
    assert run_wa(["average", SAMPLE_GLOB, "-o", out], capsys).code == 0
    cli = load_file(out)
    lib = dict(wa.average(SAMPLE_GLOB))
    assert list(lib) == list(cli) or set(lib) == set(cli)
    for k, v in cli.items():
        assert lib[k].dtype == v.dtype
        assert torch.equal(lib[k], v), k


def test_inputs_may_be_a_folder_a_handle_or_a_mix(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path / "run", n=3)
    from_glob = dict(wa.average(str(tmp_path / "run" / "*.safetensors")))
    from_folder = dict(wa.average(tmp_path / "run"))
    with wa.open_checkpoint(traj.paths[0]) as first:
        mixed = dict(wa.average([first, *traj.paths[1:]]))
    for k, v in from_glob.items():
        assert torch.equal(from_folder[k], v)
        assert torch.equal(mixed[k], v)


def test_every_method_has_a_to_file_twin_returning_one_report_type(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path / "run", n=3)
    reports = [
        wa.average_to_file(traj.paths, tmp_path / "a.safetensors"),
        wa.ema_to_file(traj.paths, tmp_path / "e.safetensors", decay=0.5),
        wa.graft_to_file(traj.paths[:2], tmp_path / "g.safetensors"),
        wa.graft_to_file(traj.paths, tmp_path / "ring"),
    ]
    assert all(type(r) is wa.RunReport for r in reports)
    assert len(reports[-1].outputs) == 3
    # Each *_to_file output equals its generator twin.
    pairs = [
        ("a.safetensors", dict(wa.average(traj.paths))),
        ("e.safetensors", dict(wa.ema(traj.paths, decay=0.5))),
        ("g.safetensors", dict(wa.graft(traj.paths[:2]))),
    ]
    for name, state in pairs:
        written = load_file(tmp_path / name)
        assert all(torch.equal(written[k], v) for k, v in state.items()), name


def test_graft_receiver_of_a_ring_is_that_output(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path / "run", n=3)
    report = wa.graft_to_file(traj.paths, tmp_path / "ring")
    second = load_file(report.outputs[1])
    state = dict(wa.graft(traj.paths, receiver=1))
    assert all(torch.equal(second[k], v) for k, v in state.items())


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


def test_update_bn_equals_torch_exactly() -> None:
    torch.manual_seed(1)
    loader = [(torch.randn(8, 5), torch.zeros(8)) for _ in range(4)]
    ours, theirs = _bn_model(), _bn_model()
    wa.update_bn(loader, ours)
    torch_update_bn(loader, theirs)
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert ours.training == theirs.training


def test_open_checkpoint_behaves_like_safe_open() -> None:
    from safetensors import safe_open

    path = sorted(SAMPLE.glob("*.safetensors"))[0]
    with safe_open(str(path), "pt") as ref, wa.open_checkpoint(path) as f:
        assert sorted(f.keys()) == sorted(ref.keys())
        assert f.metadata() == ref.metadata()
        assert len(f) == len(ref.keys()) and sorted(f) == sorted(ref.keys())
        for k in ref.keys():
            assert torch.equal(f.get_tensor(k), ref.get_tensor(k))


def test_write_state_dict_takes_save_files_order_and_tied_tensors(tmp_path: Path) -> None:
    w = torch.randn(3, 4)
    state = {"a": w, "b": w, "c": torch.arange(3)}  # a and b share storage
    wa.write_state_dict(state, tmp_path / "o.safetensors", {"format": "pt"})
    ref = tmp_path / "ref.safetensors"
    save_file({k: v.clone() for k, v in state.items()}, ref, metadata={"format": "pt"})
    got, want = load_file(tmp_path / "o.safetensors"), load_file(ref)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(wa.WaError, match="state_dict") as e:
        wa.write_state_dict(tmp_path / "x.safetensors", state)  # type: ignore[arg-type]  # the old order
    assert "save_file" in e.value.message


def test_dtype_names_and_size_strings(tmp_path: Path) -> None:
    traj = make_trajectory(tmp_path / "run", n=2)
    by_name = dict(wa.average(traj.paths, dtype="bfloat16"))
    by_dtype = dict(wa.average(traj.paths, dtype=torch.bfloat16))
    floats = [k for k, v in by_name.items() if v.is_floating_point()]
    assert floats and all(by_name[k].dtype == torch.bfloat16 for k in floats)
    assert all(torch.equal(by_name[k], by_dtype[k]) for k in by_name)
    report = wa.average_to_file(traj.paths, tmp_path / "shards", max_shard_size="1kB")
    assert len(report.outputs) > 1


def _call(name: str, tmp_path: Path, paths: list[Path], **bad: object) -> None:
    """Call public function ``name`` with ``bad`` values and otherwise good arguments."""
    out = tmp_path / f"{name}.safetensors"
    fn = getattr(wa, name)
    if name in ("average", "ema", "graft"):
        kw = {"decay": 0.5} if name == "ema" else {}
        dict(fn(paths, **{**kw, **bad}))
    elif name in ("average_to_file", "ema_to_file", "graft_to_file"):
        kw = {"decay": 0.5} if name == "ema_to_file" else {}
        fn(paths, out, **kw, **bad)
    elif name == "entropy_report":
        fn(paths, **bad)
    elif name == "recalibrate_checkpoint":
        fn(paths[0], out, lambda: _cnn(), [torch.randn(2, 3, 5, 5)], **bad)
    elif name == "recalibrate_bn":
        fn(_cnn(), [torch.randn(2, 3, 5, 5)], **bad)
    else:
        raise AssertionError(name)


def _cnn() -> nn.Module:
    from tests.helpers import tiny_cnn

    return tiny_cnn(0)


REDUCERS = ["average", "average_to_file", "ema", "ema_to_file", "graft", "graft_to_file"]
BAD_VALUES = (
    [
        (name, param, value)
        for name in REDUCERS
        for param, value in [
            ("dtype", "bf17"),
            ("dtype", torch.int64),
            ("precision", "fp128"),
            ("device", "tpu"),
        ]
    ]
    + [
        (name, param, value)
        for name in ("average", "average_to_file", "ema", "ema_to_file")
        for param, value in [("keys", "Union"), ("non_float", "lst")]
    ]
    + [
        (name, "max_shard_size", value)
        for name in ("average_to_file", "ema_to_file")
        for value in ("5XB", 0, 1.5)
    ]
    + [
        ("graft", "rule", "modules"),
        ("graft_to_file", "rule", "modules"),
        ("graft", "bins", "ten"),
        ("graft", "a", "big"),
        ("entropy_report", "by", "modules"),
        ("entropy_report", "sort", "Entropy"),
        ("entropy_report", "keys", "all"),
        ("entropy_report", "bins", 1),
        ("entropy_report", "base", "two"),
        ("entropy_report", "l1_threshold", -1.0),
        ("entropy_report", "pattern", "("),
        ("recalibrate_bn", "weighting", "samples"),
        ("recalibrate_bn", "max_batches", 0),
        ("recalibrate_checkpoint", "weighting", "samples"),
        ("recalibrate_checkpoint", "max_shard_size", "big"),
        ("recalibrate_checkpoint", "force", "yes"),
        ("average_to_file", "force", "false"),
        ("average", "weights", "1,2"),
        ("ema", "decay", 1.5),
        ("ema", "steps", "100"),
    ]
)


@pytest.mark.parametrize(("name", "param", "value"), BAD_VALUES)
def test_a_bad_value_raises_wa_error_naming_the_parameter(
    name: str, param: str, value: object, tmp_path: Path
) -> None:
    traj = make_trajectory(tmp_path / "run", n=2)
    with pytest.raises(wa.WaError) as e:
        _call(name, tmp_path, traj.paths, **{param: value})
    assert param in e.value.message, e.value.message
    assert param in e.value.params
    assert not list(tmp_path.glob(f"{name}*")), "nothing is written"


@pytest.mark.parametrize("name", [*REDUCERS, "entropy_report"])
@pytest.mark.parametrize("inputs", [["nope/*.safetensors"], "missing.safetensors", [3], 7, []])
def test_bad_inputs_raise_wa_error(name: str, inputs: object, tmp_path: Path) -> None:
    fn = getattr(wa, name)
    kw: dict[str, object] = {"decay": 0.5} if name.startswith("ema") else {}
    args: list[object] = [inputs] + ([tmp_path / "o.safetensors"] if "_to_" in name else [])
    with pytest.raises(wa.WaError) as e:
        result = fn(*args, **kw)
        if not isinstance(result, wa.RunReport):
            dict(result)
    if isinstance(inputs, int) or inputs == [3] or inputs == []:
        assert "inputs" in e.value.message


def test_a_string_input_is_one_path_not_its_characters() -> None:
    with pytest.raises(wa.WaError, match="'missing.safetensors' does not exist"):
        dict(wa.average("missing.safetensors"))


def test_every_export_is_called(tmp_path: Path) -> None:
    """Each exported name does its job once with small valid arguments."""
    traj = make_trajectory(tmp_path / "run", n=2)
    p, out = traj.paths, tmp_path / "out"
    model = _cnn()
    calls = {
        "average": lambda: dict(wa.average(p)),
        "average_to_file": lambda: wa.average_to_file(p, out / "a.safetensors"),
        "ema": lambda: dict(wa.ema(p, decay=0.5)),
        "ema_to_file": lambda: wa.ema_to_file(p, out / "e.safetensors", decay=0.5),
        "graft": lambda: dict(wa.graft(p)),
        "graft_to_file": lambda: wa.graft_to_file(p, out / "g.safetensors"),
        "graft_state_dicts": lambda: wa.graft_state_dicts(traj.states[0], traj.states[1], 0.5),
        "graft_ring": lambda: wa.graft_ring(traj.states),
        "tensor_entropy": lambda: wa.tensor_entropy(torch.arange(10.0)),
        "entropy_report": lambda: wa.entropy_report(p),
        "recalibrate_bn": lambda: wa.recalibrate_bn(model, [torch.randn(2, 3, 5, 5)]),
        "update_bn": lambda: wa.update_bn([torch.randn(2, 3, 5, 5)], model),
        "recalibrate_checkpoint": lambda: wa.recalibrate_checkpoint(
            p[0], out / "bn.safetensors", _cnn, [torch.randn(2, 3, 5, 5)]
        ),
        "open_checkpoint": lambda: len(wa.open_checkpoint(p[0])),
        "write_state_dict": lambda: wa.write_state_dict(traj.states[0], out / "w.safetensors"),
        "WaError": lambda: wa.WaError("x").code,
        "RunReport": lambda: wa.average_to_file(p, out / "r.safetensors").to_json(),
        "DryRun": lambda: wa.average(p, last=1, dry_run=True).to_json(),
        "Selection": lambda: wa.average(p, selection=wa.Selection(every=2), dry_run=True),
        "ReadOptions": lambda: wa.average(p, read=wa.ReadOptions(), dry_run=True),
        "ReduceOptions": lambda: wa.ReduceOptions.checked(dtype="bf16").dtype,
        "WriteOptions": lambda: wa.WriteOptions.checked(max_shard_size="1MB").max_shard_size,
        "GraftPlan": lambda: wa.graft_to_file(p, dry_run=True).outputs,
        "EntropyReport": lambda: wa.entropy_report(p, read=wa.ReadOptions()).rows,
        "BNSpecs": lambda: wa.BNSpecs(batch_size=2).batch_size,
        "BNCheckpointReport": lambda: wa.recalibrate_checkpoint(
            p[0], out / "bn2.safetensors", _cnn, [torch.randn(2, 3, 5, 5)]
        ).to_json(),
        "plot_posthoc": lambda: wa.plot_posthoc(
            wa.ema_to_file(p, out / "pe.safetensors", gamma=2.0), out / "pe.png"
        ),
        "model_stock_to_file": lambda: wa.model_stock_to_file(
            p[0], [p[0], p[1]], out / "ms.safetensors"
        ),
        "greedy_soup_to_file": lambda: wa.greedy_soup_to_file(
            p, out / "gs.safetensors", model=_cnn, evaluate=lambda m: 1.0, mode="max"
        ),
        "sweep_to_file": lambda: wa.sweep_to_file(
            p,
            out / "sw.safetensors",
            grid="0:1:0.5",
            model=_cnn,
            evaluate=lambda m: 1.0,
            mode="max",
        ),
    }
    out.mkdir()
    assert set(calls) == set(wa.__all__) - {"__version__"}
    for name, call in calls.items():
        assert call() is not None or name == "update_bn", name
    assert wa.__version__.count(".") == 2


def test_exports_are_all_callable_and_lazy() -> None:
    """Every export resolves to its kind, and `import wa_cli` stays torch-free."""
    for name in wa.__all__:
        value = getattr(wa, name)
        if name == "__version__":
            assert isinstance(value, str)
        elif name in ("WaError", "RunReport"):
            assert isinstance(value, type)
        else:
            assert callable(value), name
    code = (
        "import sys, wa_cli as wa\n"
        "assert 'torch' not in sys.modules\n"
        "import wa_cli.methods.average\n"  # a submodule import must not shadow the function
        "assert callable(wa.average) and wa.average.__name__ == 'average'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
