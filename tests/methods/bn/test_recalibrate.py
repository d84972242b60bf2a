"""recalibrate_bn: update_bn as the reference, closed-form batch statistics as the oracle."""

from __future__ import annotations

import copy
import json
import math
from collections import UserDict, namedtuple
from collections.abc import Iterator, Mapping

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from tests.oracles import bn_mlp, fresh_cnn_6x6
from wa_cli.cli.flags import spell
from wa_cli.errors import ExitCode, WaError
from wa_cli.methods.bn.recalibrate import (
    NO_BN_NOTE,
    BNLayerChange,
    BNReport,
    describe_batch,
    recalibrate_bn,
)

SIZES = (5, 8, 13, 2)  # unequal on purpose: batch and sample weighting then differ


def labelled_batches(shape: tuple[int, ...], seed: int = 1) -> list[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (3 * torch.randn(n, *shape, generator=generator) + 1, torch.zeros(n, dtype=torch.long))
        for n in SIZES
    ]


def raw_batches(features: int = 3, seed: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [2 * torch.randn(n, features, generator=generator) - 1 for n in SIZES]


def assert_same_state(actual: nn.Module, expected: nn.Module) -> None:
    a, e = actual.state_dict(), expected.state_dict()
    assert a.keys() == e.keys()
    for key in e:
        torch.testing.assert_close(a[key], e[key], atol=1e-6, rtol=1e-6, msg=key)


@pytest.mark.parametrize(
    ("build", "shape"), [(fresh_cnn_6x6, (3, 6, 6)), (bn_mlp, (6,))], ids=["cnn", "mlp"]
)
def test_matches_update_bn(build, shape) -> None:
    model = build()
    reference = copy.deepcopy(model)
    batches = labelled_batches(shape)
    update_bn(batches, reference)
    report = recalibrate_bn(model, batches)
    assert_same_state(model, reference)
    assert report.batches == len(SIZES)
    assert report.samples == sum(SIZES)


def test_batch_weighting_is_mean_of_batch_statistics() -> None:
    bn = nn.BatchNorm1d(3)
    batches = raw_batches()
    recalibrate_bn(bn, batches)
    data = [b.double() for b in batches]
    mean = torch.stack([b.mean(0) for b in data]).mean(0)
    var = torch.stack([b.var(0, unbiased=True) for b in data]).mean(0)
    torch.testing.assert_close(bn.running_mean.double(), mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), var, atol=1e-6, rtol=1e-6)
    assert int(bn.num_batches_tracked) == len(SIZES)


def test_sample_weighting_weights_batches_by_size() -> None:
    bn = nn.BatchNorm1d(3)
    batches = raw_batches()
    report = recalibrate_bn(bn, batches, weighting="sample")
    data = [b.double() for b in batches]
    sizes = torch.tensor(SIZES, dtype=torch.float64)[:, None]
    mean = (sizes * torch.stack([b.mean(0) for b in data])).sum(0) / sizes.sum()
    var = (sizes * torch.stack([b.var(0, unbiased=True) for b in data])).sum(0) / sizes.sum()
    torch.testing.assert_close(bn.running_mean.double(), mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), var, atol=1e-6, rtol=1e-6)
    assert report.weighting == "sample"
    # The two weightings really differ on these batches, so the test above can fail.
    batch_mean = torch.stack([b.mean(0) for b in data]).mean(0)
    assert not torch.allclose(batch_mean, mean, atol=1e-3)


def test_batchnorm2d_closed_form_over_pixels() -> None:
    bn = nn.BatchNorm2d(2)
    generator = torch.Generator().manual_seed(3)
    batches = [torch.randn(n, 2, 3, 4, generator=generator) + 5 for n in (2, 3)]
    recalibrate_bn(bn, batches)
    per_channel = [b.double().transpose(0, 1).reshape(2, -1) for b in batches]
    mean = torch.stack([c.mean(1) for c in per_channel]).mean(0)
    var = torch.stack([c.var(1, unbiased=True) for c in per_channel]).mean(0)
    torch.testing.assert_close(bn.running_mean.double(), mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), var, atol=1e-6, rtol=1e-6)


def test_momenta_and_modes_restored_and_other_tensors_untouched() -> None:
    model = fresh_cnn_6x6()
    model[1].momentum = 0.3
    model.train()
    model[4].eval()  # a frozen head: its mode must survive, which model.train(was_training) breaks
    modes = [m.training for m in model.modules()]
    others = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    others.pop("1.num_batches_tracked")
    recalibrate_bn(model, labelled_batches((3, 6, 6)))
    assert model[1].momentum == 0.3
    assert [m.training for m in model.modules()] == modes
    for key, value in others.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_everything_restored_when_a_batch_fails() -> None:
    model = bn_mlp()
    model.eval()
    model[1].momentum = None
    model[4].momentum = 0.05
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = torch.randn(4, 6)
    with pytest.raises(WaError) as info:
        recalibrate_bn(model, [good, good, torch.randn(4, 7)])
    assert info.value.code == ExitCode.BAD_INPUT
    assert model[1].momentum is None and model[4].momentum == 0.05
    assert not any(m.training for m in model.modules())
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_bad_batch_message_names_batch_model_error_and_forward() -> None:
    with pytest.raises(WaError) as info:
        recalibrate_bn(bn_mlp(), [torch.randn(4, 7)])
    message = info.value.message
    assert "batch 0 (Tensor (4, 7) float32)" in message
    assert "mat1 and mat2 shapes cannot be multiplied" in message
    assert "(forward module:fn, called as fn(model, batch))" in message
    assert "(--forward module:fn, called as" in info.value.render(spell)
    assert "\n" not in message


def test_dict_batches_through_forward() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return self.bn(self.linear(x) + z)

    class Packed(nn.Module):  # the same network fed one concatenated tensor, for update_bn
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, xz: torch.Tensor) -> torch.Tensor:
            return self.inner(xz[:, :3], xz[:, 3:])

    torch.manual_seed(0)
    model = TwoInputs()
    reference = Packed(copy.deepcopy(model))
    generator = torch.Generator().manual_seed(4)
    batches = [
        {"x": torch.randn(n, 3, generator=generator), "z": torch.randn(n, 4, generator=generator)}
        for n in SIZES
    ]
    update_bn([torch.cat([b["x"], b["z"]], 1) for b in batches], reference)
    report = recalibrate_bn(model, batches, device="cpu", forward=lambda m, b: m(b["x"], z=b["z"]))
    assert_same_state(model, reference.inner)
    assert report.samples == sum(SIZES)


def test_failing_forward_function_is_named() -> None:
    def forward(model: nn.Module, batch: dict) -> None:
        model(batch["image"])

    with pytest.raises(
        WaError,
        match=r"forward function '.*forward' failed on batch 0 "
        r"\(dict with keys 'x'\): KeyError: 'image'",
    ):
        recalibrate_bn(bn_mlp(), [{"x": torch.randn(4, 6)}], forward=forward)


def test_max_batches_never_asks_for_more() -> None:
    batches = labelled_batches((6,))

    def loader() -> Iterator[tuple[torch.Tensor, ...]]:
        yield from batches[:2]
        raise AssertionError("a third batch was requested")

    model = bn_mlp()
    reference = copy.deepcopy(model)
    update_bn(batches[:2], reference)
    report = recalibrate_bn(model, loader(), max_batches=2)
    assert_same_state(model, reference)
    assert report.batches == 2


def test_no_batchnorm_returns_a_note_without_running_the_model() -> None:
    class Exploding(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("forward must not run")

    report = recalibrate_bn(Exploding(), [torch.randn(2, 2)])
    assert report.batches == 0 and report.layers == []
    assert report.note == NO_BN_NOTE and "no BatchNorm layer" in NO_BN_NOTE


def test_instancenorm_only_on_request() -> None:
    model = nn.Sequential(nn.InstanceNorm1d(3, track_running_stats=True), nn.BatchNorm1d(3))
    generator = torch.Generator().manual_seed(5)
    batches = [torch.randn(n, 3, 6, generator=generator) * 2 + 1 for n in (2, 5, 3)]
    reference = copy.deepcopy(model)
    update_bn(batches, reference)
    recalibrate_bn(model, batches)
    # Default: update_bn's layers only; the InstanceNorm keeps its statistics (update_bn's drift).
    assert torch.equal(model[0].running_mean, torch.zeros(3))
    assert not torch.equal(reference[0].running_mean, torch.zeros(3))
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean)
    torch.testing.assert_close(model[1].running_var, reference[1].running_var)
    recalibrate_bn(model, batches, include_instancenorm=True)
    # Train-mode InstanceNorm updates with the mean over instances of per-instance statistics.
    data = [b.double() for b in batches]
    mean = torch.stack([b.mean(dim=(0, 2)) for b in data]).mean(0)
    var = torch.stack([b.var(dim=2, unbiased=True).mean(0) for b in data]).mean(0)
    torch.testing.assert_close(model[0].running_mean.double(), mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model[0].running_var.double(), var, atol=1e-6, rtol=1e-6)
    assert int(model[0].num_batches_tracked) == 3


def test_lazy_batchnorm() -> None:
    bn = nn.LazyBatchNorm1d()  # update_bn itself fails here: it resets before initialisation
    batches = raw_batches()
    recalibrate_bn(bn, batches)
    mean = torch.stack([b.double().mean(0) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean.double(), mean, atol=1e-6, rtol=1e-6)


def test_report_relative_changes_and_json() -> None:
    model = bn_mlp()
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
        model[1].running_var.fill_(2.0)
    old_mean, old_var = model[1].running_mean.double(), model[1].running_var.double()
    seen = []
    report = recalibrate_bn(model, labelled_batches((6,)), progress=seen.append)
    layer = report.layers[0]
    assert (layer.name, layer.kind) == ("1", "BatchNorm1d")
    new_mean, new_var = model[1].running_mean.double(), model[1].running_var.double()
    expected_mean = float((new_mean - old_mean).norm() / old_mean.norm())
    expected_var = float((new_var - old_var).norm() / old_var.norm())
    assert layer.mean_change == pytest.approx(expected_mean, rel=1e-9)
    assert layer.var_change == pytest.approx(expected_var, rel=1e-9)
    assert report.layers[1].mean_change is None  # old mean all zeros: relative change undefined
    assert seen == [1, 2, 3, 4]
    data = json.loads(json.dumps(report.to_json()))
    assert data["batches"] == 4 and data["samples"] == sum(SIZES)
    assert [entry["name"] for entry in data["layers"]] == ["1", "4"]


@pytest.mark.parametrize(
    ("batches", "kwargs", "pattern"),
    [
        ([], {}, "yielded no batches"),
        (iter(()), {}, "yielded no batches"),
        (5, {}, "returned a int, which is not iterable"),
        ([torch.randn(4, 6)], {"weighting": "size"}, "weighting='size' is not one of"),
        ([torch.randn(4, 6)], {"max_batches": 0}, "max_batches must be a positive integer"),
        ([()], {}, "batch 0 is an empty tuple"),
        ([{"x": torch.randn(4, 6)}], {}, r"cannot take batch 0 \(dict with keys 'x'\)"),
    ],
)
def test_user_errors(batches, kwargs, pattern) -> None:
    model = bn_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WaError, match=pattern):
        recalibrate_bn(model, batches, **kwargs)
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_loader_exception_becomes_wa_error() -> None:
    def loader() -> Iterator[torch.Tensor]:
        yield torch.randn(4, 6)
        raise OSError("disk went away")

    with pytest.raises(WaError, match=r"data loader raised OSError: disk went away at batch 1"):
        recalibrate_bn(bn_mlp(), loader())


def test_describe_batch() -> None:
    batch = [torch.zeros(2, 3), torch.zeros(2), torch.zeros(1), torch.zeros(1, dtype=torch.bool)]
    assert describe_batch(batch) == (
        "list of [Tensor (2, 3) float32, Tensor (2,) float32, Tensor (1,) float32, ... 1 more]"
    )
    assert BNReport().to_json()["layers"] == []


@pytest.mark.gpu
def test_cpu_batches_moved_to_the_gpu() -> None:
    model = fresh_cnn_6x6().cuda()
    reference = copy.deepcopy(model)
    batches = labelled_batches((3, 6, 6))
    update_bn(batches, reference, device="cuda")
    nested = [{"inputs": [x]} for x, _ in batches]
    recalibrate_bn(model, nested, device="cuda", forward=lambda m, b: m(b["inputs"][0]))
    assert_same_state(model, reference)


def reject_constant(token: str) -> None:
    raise ValueError(f"invalid JSON token {token}")


def test_non_finite_changes_serialize_as_null() -> None:
    model = bn_mlp()
    with torch.no_grad():
        model[0].weight[2, 0] = float("nan")  # feature 2 of the first BN sees NaN inputs
        model[1].running_mean.fill_(1.0)  # old statistics with a norm: a change is defined
    report = recalibrate_bn(model, [torch.randn(4, 6) for _ in range(2)])
    assert math.isnan(report.layers[0].mean_change) and math.isnan(report.layers[0].var_change)
    assert torch.isnan(model[1].running_mean[2]) and torch.isfinite(model[1].running_mean[:2]).all()
    hand = BNReport([BNLayerChange("a", "BatchNorm1d", float("inf"), 0.25)], note=None)
    for rep in (report, hand):
        text = json.dumps(rep.to_json(), allow_nan=False)
        json.loads(text, parse_constant=reject_constant)
    layers = json.loads(json.dumps(report.to_json()))["layers"]
    assert layers[0]["mean_change"] is None and layers[0]["var_change"] is None
    assert hand.to_json()["layers"][0] == {
        "name": "a",
        "kind": "BatchNorm1d",
        "mean_change": None,
        "var_change": 0.25,
    }


Pair = namedtuple("Pair", ["x", "extra"])


class Features(Mapping):
    """A read-only Mapping that is not a dict (as some batch classes are)."""

    def __init__(self, data: dict) -> None:
        self._data = dict(data)

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class Movable:
    """A batch class with its own ``.to`` (Hugging Face's BatchEncoding style); records calls."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.moved_to = x, []

    def to(self, device):
        self.moved_to.append(device)
        return Movable(self.x.to(device))


@pytest.mark.parametrize(
    ("make", "take"),
    [
        (lambda x: Pair(x, torch.zeros(len(x))), lambda b: (b.x, b.extra)),
        (lambda x: Features({"x": x}), lambda b: (b["x"],)),
        (lambda x: UserDict({"x": x}), lambda b: (b["x"],)),
        (lambda x: Movable(x), lambda b: (b.x,)),
        (lambda x: {"inner": [Pair(x, x)]}, lambda b: b["inner"][0]),
    ],
    ids=["namedtuple", "mapping", "userdict", "to-method", "nested"],
)
def test_every_tensor_of_a_batch_reaches_the_device(make, take) -> None:
    # No GPU here: a dtype is a stand-in "device" that .to() accepts, and float64 on arrival
    # proves a tensor was moved. The model is float64, so an unmoved float32 input also fails.
    model = bn_mlp().double()
    inputs = [torch.randn(n, 6) for n in (3, 5)]
    batches = [make(x) for x in inputs]
    seen = []

    def forward(m: nn.Module, batch) -> None:
        assert type(batch) is type(batches[0])  # the container type is kept
        tensors = take(batch)
        seen.append([t.dtype for t in tensors])
        m(tensors[0])

    recalibrate_bn(model, batches, device=torch.float64, forward=forward)
    assert seen == [[torch.float64] * len(take(b)) for b in batches]
    reference = bn_mlp().double()
    update_bn([x.double() for x in inputs], reference)
    assert_same_state(model, reference)


def test_a_one_sample_batch_gets_a_batch_size_hint() -> None:
    batches = [torch.randn(4, 6), torch.randn(1, 6)]  # a short last batch of one row
    with pytest.raises(WaError) as info:
        recalibrate_bn(bn_mlp(), batches)
    assert "cannot take batch 1 (Tensor (1, 6) float32)" in info.value.message
    assert "BatchNorm cannot normalize a batch of one sample in training mode" in (
        info.value.message
    )
    assert "--forward" not in info.value.message
