"""Model Stock against an independent float64 implementation of Jang et al.'s formula per tensor."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import cnn_state
from wa_cli.errors import WaError
from wa_cli.methods.soup.stock import model_stock_to_file


def _oracle(base: dict, tuned: list[dict]) -> dict[str, np.ndarray]:
    out = {}
    n = len(tuned)
    for key, b in base.items():
        if not b.is_floating_point():
            out[key] = tuned[-1][key].numpy()  # non-float: copied from the last input
            continue
        b64 = b.double().numpy().ravel()
        offs = [t[key].double().numpy().ravel() - b64 for t in tuned]
        cos = []
        for x, y in itertools.combinations(offs, 2):
            d = np.linalg.norm(x) * np.linalg.norm(y)
            cos.append(float(x @ y) / d if d > 0 else 0.0)
        c = min(max(sum(cos) / len(cos), 0.0), 1.0)
        t = n * c / (1 + (n - 1) * c)
        mean = sum(o + b64 for o in offs) / n
        out[key] = (t * mean + (1 - t) * b64).reshape(b.shape)
    return out


def _finetunes(base: dict, n: int, shared: float) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    direction = {
        k: torch.randn(v.shape, generator=g) for k, v in base.items() if v.is_floating_point()
    }
    tuned = []
    for _ in range(n):
        state = {}
        for k, v in base.items():
            if v.is_floating_point():
                own = torch.randn(v.shape, generator=g)
                state[k] = v + 0.1 * (shared * direction[k] + own)
            else:
                state[k] = v + 1
        tuned.append(state)
    return tuned


@pytest.mark.parametrize(("n", "shared"), [(2, 1.0), (3, 0.5), (4, 3.0)])
def test_model_stock_equals_the_formula_per_tensor(tmp_path, n, shared):
    base = cnn_state(0)
    tuned = _finetunes(base, n, shared)
    save_file(base, tmp_path / "base.safetensors")
    paths = []
    for i, s in enumerate(tuned):
        paths.append(tmp_path / f"ft_{i}.safetensors")
        save_file(s, paths[-1])
    report = model_stock_to_file(tmp_path / "base.safetensors", paths, tmp_path / "o.safetensors")
    got = load_file(tmp_path / "o.safetensors")
    expected = _oracle(base, tuned)
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], torch.from_numpy(value).to(got[key].dtype))
    assert 0 < report.params["mean_ratio"] < 1


def test_opposed_finetunes_keep_the_base(tmp_path):
    base = {"w": torch.zeros(4)}
    save_file(base, tmp_path / "b.safetensors")
    save_file({"w": torch.tensor([1.0, 0, 0, 0])}, tmp_path / "x.safetensors")
    save_file({"w": torch.tensor([-1.0, 0, 0, 0])}, tmp_path / "y.safetensors")
    out = tmp_path / "o.safetensors"
    model_stock_to_file(
        tmp_path / "b.safetensors", [tmp_path / "x.safetensors", tmp_path / "y.safetensors"], out
    )
    assert torch.equal(load_file(out)["w"], base["w"])


def test_one_finetune_is_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "b.safetensors")
    save_file({"w": torch.ones(2)}, tmp_path / "x.safetensors")
    with pytest.raises(WaError, match="at least 2 fine-tunes"):
        model_stock_to_file(
            tmp_path / "b.safetensors", tmp_path / "x.safetensors", tmp_path / "o.safetensors"
        )


def test_cosines_summed_over_slices_equal_whole_tensor_ones(monkeypatch):
    """The Gram matrix summed over slices (bounded memory for a large tensor) is numpy's."""
    from wa_cli.methods.soup import stock

    monkeypatch.setattr(stock, "_CHUNK", 7)  # 7 does not divide 5 * 11: a short last slice
    g = torch.Generator().manual_seed(3)
    base = torch.randn(5, 11, generator=g)
    shared = torch.randn(5, 11, generator=g)
    tuned = [base + shared + 0.5 * torch.randn(5, 11, generator=g) for _ in range(4)]
    b64 = base.double().numpy().ravel()
    offs = [t.double().numpy().ravel() - b64 for t in tuned]
    cos = [x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
           for x, y in itertools.combinations(offs, 2)]  # fmt: skip
    got = stock.mean_pairwise_cosine(base, tuned)
    assert got == pytest.approx(float(np.mean(cos)), rel=1e-12)
    assert 0.3 < got < 0.99  # the slices really were summed (not only the first one)


def test_model_stock_takes_reading_combining_and_writing_keywords(tmp_path):
    """Like the other soups: strip_prefixes= and exclude= read the base and the fine-tunes,
    dtype= and force= combine and write, reduce=/write= (or opts=/out=) as objects; a selection
    keyword is a TypeError. Oracle: the float64 formula on the stripped keys, cast to float16."""
    from wa_cli.engine.options import ReduceOptions, WriteOptions

    base = cnn_state(0)
    tuned = _finetunes(base, 3, 1.0)
    ddp = lambda s: {**{f"module.{k}": v for k, v in s.items()}, "module.extra": torch.ones(2)}  # noqa: E731
    save_file(ddp(base), tmp_path / "base.safetensors")
    paths = []
    for i, s in enumerate(tuned):
        paths.append(tmp_path / f"ft_{i}.safetensors")
        save_file(ddp(s), paths[-1])
    out = tmp_path / "o.safetensors"
    save_file({"old": torch.zeros(1)}, out)
    reading = dict(strip_prefixes="module.", exclude=["extra"])
    model_stock_to_file(tmp_path / "base.safetensors", paths, out, dtype="float16", force=True,
                        **reading)  # type: ignore[arg-type]  # fmt: skip
    expected = _oracle(base, tuned)
    got = load_file(out)
    assert set(got) == set(expected)
    for key, value in expected.items():
        if got[key].is_floating_point():
            assert got[key].dtype == torch.float16
            torch.testing.assert_close(got[key], torch.from_numpy(value).to(torch.float16))
    for given in (
        {"reduce": ReduceOptions.checked(dtype="float16"), "write": WriteOptions(force=True)},
        {"opts": ReduceOptions.checked(dtype="float16"), "out": WriteOptions(force=True)},
    ):
        model_stock_to_file(tmp_path / "base.safetensors", paths, out, **reading, **given)  # type: ignore[arg-type]
        assert all(torch.equal(load_file(out)[k], got[k]) for k in got)
    with pytest.raises(TypeError, match="unexpected keyword argument 'last'"):
        model_stock_to_file(tmp_path / "base.safetensors", paths, out, last=2)  # type: ignore[call-arg]
