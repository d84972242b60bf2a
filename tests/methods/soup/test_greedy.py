"""Greedy soup and WiSE-FT sweep against an independent implementation of the papers' recipes.

The score is analytic (minus the squared distance of the weights to a target point), so the
oracle can rank, accept and reject in float64 without the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from wa_cli.errors import WaError
from wa_cli.methods.soup.run import greedy_soup_to_file, sweep_to_file

TARGET = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]], dtype=torch.float64)


def build() -> nn.Module:
    return nn.Linear(3, 2, bias=False)


class Score:
    """-||W - TARGET||^2 of the model's weight; counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model: nn.Module) -> float:
        self.calls += 1
        return -float(((model.weight.detach().double() - TARGET) ** 2).sum())


def _inputs(tmp_path, points: list[np.ndarray]) -> list:
    paths = []
    for i, p in enumerate(points):
        paths.append(tmp_path / f"ft_{i}.safetensors")
        save_file({"weight": torch.tensor(p, dtype=torch.float32)}, paths[-1])
    return paths


def _oracle(points: list[np.ndarray]) -> tuple[list[int], int]:
    """The paper's Recipe 1 in float64: sorted by own score, keep if not worse (ties kept)."""
    f32 = [np.asarray(p, dtype=np.float32).astype(np.float64) for p in points]
    score = lambda w: -float(((w - TARGET.numpy()) ** 2).sum())  # noqa: E731
    own = [score(w) for w in f32]
    order = sorted(range(len(f32)), key=lambda i: -own[i])
    kept, best = [order[0]], own[order[0]]
    for i in order[1:]:
        cand = np.mean([f32[j] for j in [*kept, i]], axis=0).astype(np.float32).astype(np.float64)
        s = score(cand)
        if s >= best:
            kept.append(i)
            best = s
    return sorted(kept), 2 * len(points) - 1


def test_greedy_soup_follows_the_recipe_and_writes_the_mean_of_the_kept(tmp_path):
    rng = np.random.default_rng(0)
    # Near and far fine-tunes: averaging near ones helps, adding far ones hurts.
    points = [
        TARGET.numpy() + rng.normal(0, s, TARGET.shape) for s in (0.5, 3.0, 0.5, 3.0, 0.5, 0.5)
    ]
    paths = _inputs(tmp_path, points)
    score = Score()
    out = tmp_path / "soup.safetensors"
    soup, report = greedy_soup_to_file(paths, out, model=build, evaluate=score, mode="max")
    kept, calls = _oracle(points)
    assert soup.kept == kept and 1 < len(kept) < len(points)
    assert score.calls == calls == soup.evaluations
    mean = np.mean([np.float64(np.float32(points[i])) for i in kept], axis=0)
    torch.testing.assert_close(load_file(out)["weight"], torch.tensor(mean, dtype=torch.float32))
    assert [s.kept for s in soup.steps].count(True) == len(kept)
    assert report.method == "greedy_soup"


def test_ties_are_kept_and_stored_scores_save_n_evaluations(tmp_path):
    same = TARGET.numpy() + 0.25
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"c_{i}.safetensors")
        weight = torch.tensor(same, dtype=torch.float32)
        save_file({"weight": weight}, paths[-1], metadata={"val_score": "-0.375"})
    score = Score()
    soup, _ = greedy_soup_to_file(
        paths, tmp_path / "o.safetensors", model=build, evaluate=score, metric="val_score",
        mode="max",
    )  # fmt: skip
    assert soup.kept == [0, 1, 2]  # equal scores: kept
    assert score.calls == 2  # N - 1 with the stored scores


@pytest.mark.parametrize(
    ("returned", "fragment"),
    [(math.nan, "returned nan"), ("good", "returned str"), ({"a": 1.0, "b": 2.0}, "pick one")],
)
def test_a_bad_score_is_one_line_naming_the_function_and_nothing_is_written(
    tmp_path, returned, fragment
):
    paths = _inputs(tmp_path, [TARGET.numpy(), TARGET.numpy() + 1])

    def my_eval(model):
        return returned

    out = tmp_path / "o.safetensors"
    with pytest.raises(WaError, match=fragment) as info:
        greedy_soup_to_file(paths, out, model=build, evaluate=my_eval, mode="max")
    assert "my_eval" in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()


def test_a_raising_hook_is_named(tmp_path):
    paths = _inputs(tmp_path, [TARGET.numpy(), TARGET.numpy() + 1])

    def broken(model):
        raise RuntimeError("cuda out of memory")

    with pytest.raises(WaError, match="'.*broken' raised RuntimeError: cuda out of memory"):
        greedy_soup_to_file(paths, tmp_path / "o.safetensors", model=build, evaluate=broken,
                            mode="max")  # fmt: skip


def test_sweep_writes_the_best_alpha_rounded_once(tmp_path):
    zero = TARGET.numpy() - 1.0
    one = TARGET.numpy() + 3.0  # the best alpha on the line is 0.25
    paths = _inputs(tmp_path, [zero, one])
    score = Score()
    out = tmp_path / "wise.safetensors"
    sweep, _ = sweep_to_file(paths, out, grid="0:1:0.05", model=build, evaluate=score, mode="max")
    assert sweep.best == pytest.approx(0.25) and score.calls == 21 == len(sweep.curve)
    a = sweep.best
    z, o = (torch.tensor(p, dtype=torch.float32).double() for p in (zero, one))
    torch.testing.assert_close(
        load_file(out)["weight"], ((1 - a) * z + a * o).float(), rtol=0, atol=0
    )


def test_mode_is_required_when_the_name_does_not_say(tmp_path):
    paths = _inputs(tmp_path, [TARGET.numpy(), TARGET.numpy() + 1])
    with pytest.raises(WaError, match="mode='max' or mode='min'"):
        greedy_soup_to_file(paths, tmp_path / "o.safetensors", model=build, evaluate=Score())


@pytest.mark.filterwarnings("ignore::FutureWarning")  # gc sees torch's deprecated aliases
def test_candidates_hold_the_model_one_float32_sum_and_one_input(tmp_path):
    """While a candidate is scored, the live tensors are the model, the float32 sum and the input
    being added (3 model sizes in float32), not also a kept input and a candidate state dict (5).

    Counted as the bytes of the distinct storages of every live torch tensor (gc), inside the
    evaluation hook; the model is 1 MB so the few small tensors of the test barely count.
    """
    import gc

    size = 512 * 512 * 4
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        path = tmp_path / f"ft{i}.safetensors"
        save_file({"weight": torch.from_numpy(rng.normal(size=(512, 512)).astype(np.float32))},
                  str(path))  # fmt: skip
        paths.append(str(path))
    peaks: list[int] = []

    def storages() -> dict[int, int]:
        found = {}
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and obj.layout == torch.strided and not obj.is_meta:
                storage = obj.untyped_storage()
                found[storage.data_ptr()] = storage.nbytes()
        return found

    gc.collect()
    before = storages()  # other tests' tensors still alive do not count

    def live_bytes(model: nn.Module) -> float:
        peaks.append(sum(n for ptr, n in storages().items() if ptr not in before))
        return -float(model.weight.detach().double().sub(0.1).square().sum())

    greedy_soup_to_file(paths, tmp_path / "soup.safetensors",
                        model=lambda: nn.Linear(512, 512, bias=False), evaluate=live_bytes,
                        mode="max")  # fmt: skip
    assert len(peaks) == 7
    assert max(peaks[4:]) <= 3.5 * size, [p / size for p in peaks]


def test_a_callable_object_is_named_by_its_class_not_its_address():
    from wa_cli.methods.soup.evaluate import Evaluator

    class Acc:  # an address like 0x7f...acc... must not decide the direction
        def __call__(self, model):
            return 1.0

    assert Evaluator(Acc(), mode="max").name.endswith("Acc")
    with pytest.raises(WaError, match="mode='max' or mode='min'"):
        Evaluator(Score())


def test_the_soups_take_combining_and_writing_as_keywords_or_option_objects(tmp_path):
    """Like average_to_file: dtype=, force=, ... or reduce=/write= (older names opts=/out=),
    reading keywords too (tests/cli/test_posthoc_and_soups_cli.py), and a keyword a soup does
    not take (selection, weights, dry run) is a TypeError (its metric= is the score's, not top-k's).
    Oracle: the float64 mean of the two inputs, cast once to float16."""
    from wa_cli.engine.options import ReduceOptions, WriteOptions

    points = [TARGET.numpy() + 0.25, TARGET.numpy() - 0.125]
    paths = _inputs(tmp_path, points)
    out = tmp_path / "soup.safetensors"
    save_file({"old": torch.zeros(1)}, out)
    score = dict(model=build, evaluate=Score(), mode="max")
    soup, _ = greedy_soup_to_file(paths, out, dtype="float16", force=True, **score)
    mean = np.mean([np.float64(np.float32(points[i])) for i in soup.kept], axis=0)
    assert soup.kept == [0, 1]
    assert torch.equal(load_file(out)["weight"], torch.tensor(mean).to(torch.float16))
    for given in (
        {"reduce": ReduceOptions.checked(dtype="float16"), "write": WriteOptions(force=True)},
        {"opts": ReduceOptions.checked(dtype="float16"), "out": WriteOptions(force=True)},
    ):
        out.unlink()
        save_file({"old": torch.zeros(1)}, out)
        greedy_soup_to_file(paths, out, **score, **given)  # type: ignore[arg-type]
        assert torch.equal(load_file(out)["weight"], torch.tensor(mean).to(torch.float16))
    sweep, _ = sweep_to_file(paths, out, grid=[0.5], **score, write=WriteOptions(force=True))
    assert sweep.best == 0.5
    for bad in ({"top_k": 2}, {"last": 1}, {"dry_run": True}, {"weights": [1, 1]}):
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            greedy_soup_to_file(paths, out, **score, **bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="missing required keyword argument 'grid'"):
        sweep_to_file(paths, out, **score)  # type: ignore[call-arg]
    with pytest.raises(WaError, match="force=1 must be True or False"):
        greedy_soup_to_file(paths, out, **score, force=1)  # type: ignore[arg-type]
