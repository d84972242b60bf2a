"""recalibrate_checkpoint: file in, file out, only the BN buffers new (update_bn as the oracle)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import update_bn

from tests.helpers import cnn_state, tiny_cnn
from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.bn.checkpoint import recalibrate_checkpoint, resolve_data, resolve_model
from wa_cli.methods.bn.tensor_data import TensorFileBatches

BN_KEYS = ["1.running_mean", "1.running_var", "1.num_batches_tracked"]


def batches(sizes: tuple[int, ...] = (5, 8, 3, 6), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [2 * torch.randn(b, 3, 5, 5, generator=g) + 1 for b in sizes]


def oracle(state: dict[str, torch.Tensor], data: list) -> dict[str, torch.Tensor]:
    model = tiny_cnn(seed=0)
    model.load_state_dict(state)
    update_bn(data, model)
    return model.state_dict()


def test_bf16_checkpoint_keeps_dtypes_and_every_other_byte(tmp_path) -> None:
    state = {k: v.bfloat16() if v.is_floating_point() else v for k, v in cnn_state(2).items()}
    save_file(state, tmp_path / "in.safetensors", metadata={"format": "pt"})
    report = recalibrate_checkpoint(
        tmp_path / "in.safetensors", tmp_path / "out.safetensors", lambda: tiny_cnn(0), batches()
    )
    out = load_file(tmp_path / "out.safetensors")
    # The model ran in float32 on the bf16 values; its statistics are rounded once to bf16.
    expected = oracle({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                      batches())  # fmt: skip
    for key, value in out.items():
        assert value.dtype == state[key].dtype, key
        if key in BN_KEYS:
            assert torch.equal(value, expected[key].to(value.dtype)), key
        else:
            assert torch.equal(value.view(torch.uint8), state[key].view(torch.uint8)), key
    assert not torch.equal(out["1.running_var"], state["1.running_var"])
    assert report.replaced == BN_KEYS and report.bn.batches == 4 and report.bn.samples == 22


def test_pickle_input_and_metadata_kept_with_provenance(tmp_path) -> None:
    state = cnn_state(3)
    torch.save({"state_dict": state, "epoch": 9}, tmp_path / "in.pt")
    recalibrate_checkpoint(
        tmp_path / "in.pt", tmp_path / "out.safetensors", tiny_cnn(0), batches(),
        params={"model": "net.py:build"}, command="wa bn-recalibrate in.pt",
    )  # fmt: skip
    out = load_file(tmp_path / "out.safetensors")
    expected = oracle(state, batches())
    for key in state:
        torch.testing.assert_close(out[key], expected[key], rtol=1e-6, atol=1e-6, msg=key)
    meta = safe_open(str(tmp_path / "out.safetensors"), "pt").metadata()
    assert meta["epoch"] == "9" and meta["format"] == "pt"
    assert meta["wa_command"] == "wa bn-recalibrate in.pt"
    params = json.loads(meta["wa_params"])
    assert params["model"] == "net.py:build" and params["batches"] == 4 and params["samples"] == 22


def test_input_recipe_is_kept_as_parent(tmp_path) -> None:
    metadata = {"format": "pt", "wa_method": "mean", "wa_inputs": '["a", "b"]'}
    save_file(cnn_state(1), tmp_path / "swa.safetensors", metadata=metadata)
    recalibrate_checkpoint(
        tmp_path / "swa.safetensors", tmp_path / "out.safetensors", tiny_cnn(0), batches()
    )
    meta = safe_open(str(tmp_path / "out.safetensors"), "pt").metadata()
    assert meta["wa_method"] == "bn_recalibrate"
    assert json.loads(meta["wa_parent"]) == {"wa_method": "mean", "wa_inputs": '["a", "b"]'}


def test_non_bn_tensors_come_from_the_file_not_the_model(tmp_path) -> None:
    # A bfloat16 model holds rounded copies of the float32 weights: had they been written back,
    # the output would differ from the input outside BatchNorm.
    torch.manual_seed(0)
    state = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).state_dict()
    save_file(state, tmp_path / "in.safetensors")
    data = [torch.randn(6, 3, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).bfloat16()
    recalibrate_checkpoint(
        tmp_path / "in.safetensors", tmp_path / "out.safetensors", model, data,
        forward=lambda m, x: m(x.bfloat16()),
    )  # fmt: skip
    reference = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).bfloat16()
    reference.load_state_dict(state)
    update_bn([x.bfloat16() for x in data], reference)
    out = load_file(tmp_path / "out.safetensors")
    for key in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert torch.equal(out[key], state[key]), key
    assert not torch.equal(reference.state_dict()["0.weight"].float(), state["0.weight"])
    for key in ("1.running_mean", "1.running_var"):
        assert out[key].dtype == torch.float32
        assert torch.equal(out[key], reference.state_dict()[key].float()), key


class Twice(nn.Module):
    """One BatchNorm layer reachable under two names: both keys must receive the new values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.alias = self.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def test_a_layer_under_two_names_updates_both_keys(tmp_path) -> None:
    torch.manual_seed(0)
    model = Twice()
    save_file({k: v.clone() for k, v in model.state_dict().items()}, tmp_path / "in.safetensors")
    report = recalibrate_checkpoint(
        tmp_path / "in.safetensors", tmp_path / "out.safetensors", Twice(), batches()
    )
    update_bn(batches(), model)
    out = load_file(tmp_path / "out.safetensors")
    for name in ("bn", "alias"):
        for stat in ("running_mean", "running_var", "num_batches_tracked"):
            key = f"{name}.{stat}"
            torch.testing.assert_close(out[key], model.state_dict()[key], rtol=1e-6, atol=1e-6)
    assert len(report.replaced) == 6


def test_no_batchnorm_never_asks_for_data(tmp_path) -> None:
    save_file({"weight": torch.randn(2, 3), "bias": torch.randn(2)}, tmp_path / "in.safetensors")

    def data() -> list:
        raise AssertionError("the data loader must not be called")

    args = (tmp_path / "in.safetensors", tmp_path / "out.safetensors", nn.Linear(3, 2), data)
    report = recalibrate_checkpoint(*args)
    assert report.output is None and "no BatchNorm" in (report.bn.note or "")
    assert not (tmp_path / "out.safetensors").exists()
    report = recalibrate_checkpoint(*args, force=True)
    assert report.output == str(tmp_path / "out.safetensors") and report.replaced == []
    out, inp = load_file(tmp_path / "out.safetensors"), load_file(tmp_path / "in.safetensors")
    assert all(torch.equal(out[k], inp[k]) for k in inp)


def test_progress_totals_and_early_stop(tmp_path) -> None:
    save_file(cnn_state(1), tmp_path / "in.safetensors")
    calls: list[tuple[int, int | None]] = []
    recalibrate_checkpoint(
        tmp_path / "in.safetensors", tmp_path / "out.safetensors", tiny_cnn(0),
        lambda: iter(batches()), max_batches=2, progress=lambda d, t: calls.append((d, t)),
    )  # fmt: skip
    assert calls == [(1, 2), (2, 2)]
    expected = oracle(cnn_state(1), batches()[:2])
    out = load_file(tmp_path / "out.safetensors")
    torch.testing.assert_close(out["1.running_var"], expected["1.running_var"])
    assert int(out["1.num_batches_tracked"]) == 2


def test_sharded_output_matches_single_file(tmp_path) -> None:
    save_file(cnn_state(1), tmp_path / "in.safetensors")
    recalibrate_checkpoint(
        tmp_path / "in.safetensors", tmp_path / "one.safetensors", tiny_cnn(0), batches()
    )
    report = recalibrate_checkpoint(
        tmp_path / "in.safetensors", tmp_path / "shards", tiny_cnn(0), batches(),
        max_shard_size=200,
    )  # fmt: skip
    assert report.output == str(tmp_path / "shards")
    merged = {}
    for shard in sorted((tmp_path / "shards").glob("*.safetensors")):
        merged.update(load_file(shard))
    single = load_file(tmp_path / "one.safetensors")
    assert merged.keys() == single.keys()
    assert all(torch.equal(merged[k], single[k]) for k in single)


def test_failure_in_the_forward_pass_writes_nothing(tmp_path) -> None:
    save_file(cnn_state(1), tmp_path / "in.safetensors")

    def forward(model: nn.Module, batch: torch.Tensor) -> None:
        if batch.shape[0] == 3:
            raise ValueError("bad batch")
        model(batch)

    with pytest.raises(WaError, match="failed on batch 2") as info:
        recalibrate_checkpoint(
            tmp_path / "in.safetensors", tmp_path / "out.safetensors", tiny_cnn(0), batches(),
            forward=forward,
        )  # fmt: skip
    assert info.value.code == ExitCode.BAD_INPUT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors"]


def test_resolve_data_routes_files_and_loaders(tmp_path) -> None:
    save_file({"x": torch.randn(130, 3)}, tmp_path / "calib.safetensors")
    files = resolve_data(str(tmp_path / "calib.safetensors"))
    assert isinstance(files, TensorFileBatches) and files.batch_size == 64 and len(files) == 3
    (tmp_path / "loaders.py").write_text(
        "from pathlib import Path\n\n"
        "def make(n=1):\n"
        "    Path(__file__).with_name('called').touch()\n"
        "    return [n]\n"
    )
    lazy = resolve_data(f"{tmp_path}/loaders.py:make", kwargs={"n": 5})
    assert callable(lazy) and not (tmp_path / "called").exists()  # resolved now, not yet called
    assert lazy() == [5] and (tmp_path / "called").exists()
    with pytest.raises(WaError, match="with data_kwargs") as info:
        resolve_data(f"{tmp_path}/loaders.py:make", batch_size=8)
    assert info.value.code == ExitCode.USAGE
    with pytest.raises(WaError, match="takes no data_kwargs"):
        resolve_data(str(tmp_path / "calib.safetensors"), kwargs={"n": 1})


def test_tensor_file_batches_take_the_models_dtype(tmp_path) -> None:
    x = torch.randn(22, 3, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    save_file({"x": x}, tmp_path / "calib.safetensors")
    files = resolve_data(str(tmp_path / "calib.safetensors"), batch_size=8)
    save_file(cnn_state(3), tmp_path / "in.safetensors")
    report = recalibrate_checkpoint(
        tmp_path / "in.safetensors", tmp_path / "out.safetensors", lambda: tiny_cnn(0), files
    )
    assert report.bn.batches == 3 and report.notes == [] and report.non_finite == {}
    assert files.dtype is None  # the caller's object is left as it was
    expected = oracle(cnn_state(3), [b.float() for b in x.split(8)])
    out = load_file(tmp_path / "out.safetensors")
    for key in BN_KEYS:
        torch.testing.assert_close(out[key], expected[key], rtol=1e-6, atol=1e-6)
    with pytest.raises(WaError, match="batch_size, input_key and drop_last apply"):
        resolve_data(f"{tmp_path}/loaders.py:make", drop_last=True)


def test_resolve_model_checks_what_the_factory_returns() -> None:
    build = resolve_model("torch.nn:Linear", {"in_features": 3, "out_features": 2})
    assert isinstance(build(), nn.Linear)
    with pytest.raises(WaError, match="returned a dict, not a torch.nn.Module") as info:
        resolve_model("builtins:dict")()
    assert info.value.code == ExitCode.USAGE


@pytest.mark.gpu
def test_forward_passes_on_the_gpu(tmp_path) -> None:
    state = cnn_state(1)
    save_file(state, tmp_path / "in.safetensors")
    report = recalibrate_checkpoint(
        tmp_path / "in.safetensors", tmp_path / "out.safetensors", tiny_cnn(0), batches(),
        device="cuda",
    )  # fmt: skip
    assert report.device.startswith("cuda")
    out, expected = load_file(tmp_path / "out.safetensors"), oracle(state, batches())
    for key in state:
        # cuDNN convolutions round differently from the CPU's: fp32 tolerance, not bit equality.
        torch.testing.assert_close(out[key], expected[key], rtol=1e-5, atol=1e-5, msg=key)
    assert torch.equal(out["0.weight"], state["0.weight"])


def test_write_options_object_writes_what_the_keywords_write(tmp_path) -> None:
    """write=WriteOptions travels whole: the same bytes as force=/max_shard_size= keywords."""
    import wa_cli as wa

    save_file(cnn_state(1), tmp_path / "in.safetensors")
    args = (tmp_path / "in.safetensors", tiny_cnn(0), batches())
    by_keywords = recalibrate_checkpoint(
        args[0], tmp_path / "kw", *args[1:], max_shard_size=300, command="wa x"
    )
    write = wa.WriteOptions.checked(max_shard_size="300B", command="wa x")
    by_object = recalibrate_checkpoint(args[0], tmp_path / "obj", *args[1:], write=write)
    assert by_object.output == str(tmp_path / "obj") and by_object.replaced == by_keywords.replaced
    names = sorted(p.name for p in (tmp_path / "kw").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "obj").iterdir()) and len(names) > 2
    for name in names:
        if name.endswith(".safetensors"):
            a, b = load_file(tmp_path / "kw" / name), load_file(tmp_path / "obj" / name)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # force in the object replaces the output, as force=True does
    again = wa.WriteOptions.checked(force=True)
    recalibrate_checkpoint(args[0], tmp_path / "one.safetensors", *args[1:])
    recalibrate_checkpoint(args[0], tmp_path / "one.safetensors", *args[1:], write=again)
    with pytest.raises(WaError, match="exists"):
        recalibrate_checkpoint(args[0], tmp_path / "one.safetensors", *args[1:])


def test_option_objects_and_unknown_keywords_are_refused_before_anything_runs(tmp_path) -> None:
    import wa_cli as wa

    save_file(cnn_state(1), tmp_path / "in.safetensors")
    calls: list[int] = []

    def build() -> nn.Module:
        calls.append(1)
        return tiny_cnn(0)

    args = (tmp_path / "in.safetensors", tmp_path / "out.safetensors", build, batches())
    with pytest.raises(WaError) as info:
        recalibrate_checkpoint(*args, write=wa.WriteOptions(), force=True)
    assert info.value.message == "give write= or force=, not both"
    assert info.value.params == ("write", "force") and info.value.code == ExitCode.USAGE
    with pytest.raises(TypeError, match="unexpected keyword argument 'dtype'"):
        recalibrate_checkpoint(*args, dtype="bf16")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="shard_name"):
        recalibrate_checkpoint(*args, write=wa.WriteOptions.checked(shard_name="model"))
    with pytest.raises(TypeError, match="safetensors only"):
        recalibrate_checkpoint(*args, write=wa.WriteOptions.checked(output_format="dcp"))
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors"]
