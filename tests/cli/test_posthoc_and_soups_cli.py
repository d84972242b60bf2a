"""The real commands for post-hoc EMA (wa ema --sigma-rel) and soups (wa average --greedy,
--sweep, --model-stock): one library call each, one-line errors, nothing written on failure."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tests.helpers import assert_one_line_error, run_wa
from wa_cli.methods.ema.power import Profile, gamma_of_sigma_rel, inner
from wa_cli.train import PowerEMA


def _snapshots(tmp_path):
    model = nn.Linear(4, 3).double()
    ema = PowerEMA(model, sigma_rels=(0.05, 0.10), directory=tmp_path / "snaps", every=25)
    g = torch.Generator().manual_seed(3)
    for _ in range(100):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        ema.update()
        ema.maybe_save()
    return sorted((tmp_path / "snaps").glob("*.safetensors"))


def _reconstruction(paths, sigma_rel, step):
    rows = []
    for p in paths:
        width, at = p.stem.split("_")[1:]
        if int(at) <= step:
            rows.append((Profile(int(at), gamma_of_sigma_rel(float(width))), p))
    gram = np.array([[inner(a, b) for b, _ in rows] for a, _ in rows])
    target = Profile(step, gamma_of_sigma_rel(sigma_rel))
    x = np.linalg.lstsq(gram, [inner(a, target) for a, _ in rows], rcond=None)[0]
    return sum(xi * load_file(p)["weight"] for xi, (_, p) in zip(x / x.sum(), rows))


def test_wa_ema_sigma_rel_from_snapshots_with_a_plot(tmp_path, capsys):
    paths = _snapshots(tmp_path)
    out, plot = tmp_path / "ema.safetensors", tmp_path / "profile.png"
    result = run_wa(
        ["ema", *paths, "--sigma-rel", "0.07", "--at-step", "75", "-o", out, "--plot", plot,
         "--json"], capsys,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["method"] == "posthoc_ema" and report["params"]["fit_error"] < 0.05
    assert len(report["weights"]) == 6  # the snapshots after step 75 are left out
    expected = _reconstruction(paths, 0.07, 75)
    torch.testing.assert_close(load_file(out)["weight"], expected, rtol=1e-9, atol=1e-9)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_widths_write_one_file_each_into_a_folder(tmp_path, capsys):
    paths = _snapshots(tmp_path)
    folder = tmp_path / "widths"
    result = run_wa(["ema", *paths, "--sigma-rel", "0.06,0.09", "-o", folder, "-q"], capsys)
    assert result.code == 0, result.stderr
    for width in (0.06, 0.09):
        got = load_file(folder / f"ema_sigma_{width:g}.safetensors")["weight"]
        torch.testing.assert_close(got, _reconstruction(paths, width, 100), rtol=1e-9, atol=1e-9)


def test_posthoc_and_a_decay_together_is_one_line(tmp_path, capsys):
    paths = _snapshots(tmp_path)
    out = tmp_path / "o.safetensors"
    result = run_wa(["ema", *paths, "--sigma-rel", "0.07", "--half-life", "9", "-o", out], capsys)
    assert_one_line_error(result, 2, "not both")
    assert not out.exists()


def _user_module(tmp_path, score_body: str) -> str:
    source = tmp_path / "usermod.py"
    source.write_text(textwrap.dedent(f"""
        import torch
        from torch import nn

        TARGET = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]], dtype=torch.float64)

        def build():
            return nn.Linear(3, 2, bias=False)

        def score(model):
        {textwrap.indent(textwrap.dedent(score_body), "    ")}
    """))  # fmt: skip
    return str(source)


def _fine_tunes(tmp_path, points):
    paths = []
    for i, p in enumerate(points):
        paths.append(tmp_path / f"ft_{i}.safetensors")
        save_file({"weight": torch.tensor(p, dtype=torch.float32)}, paths[-1])
    return paths


TARGET = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]])
DISTANCE = "return -float(((model.weight.detach().double() - TARGET) ** 2).sum())"


def test_wa_average_greedy_writes_the_mean_of_the_kept(tmp_path, capsys):
    rng = np.random.default_rng(0)
    points = [TARGET + rng.normal(0, s, TARGET.shape) for s in (0.5, 3.0, 0.5, 3.0, 0.5, 0.5)]
    paths = _fine_tunes(tmp_path, points)
    module = _user_module(tmp_path, DISTANCE)
    out = tmp_path / "soup.safetensors"
    result = run_wa(
        ["average", *paths, "--greedy", "--model", f"{module}:build", "--eval", f"{module}:score",
         "--mode", "max", "-o", out], capsys,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert "11 evaluations" in result.stdout  # 2N - 1
    kept = [0, 4, 5]  # the paper's recipe on these points (tests/methods/soup/test_greedy.py)
    mean = np.mean([np.float64(np.float32(points[i])) for i in kept], axis=0)
    torch.testing.assert_close(load_file(out)["weight"], torch.tensor(mean, dtype=torch.float32))


def test_wa_average_sweep_and_model_stock(tmp_path, capsys):
    zero, one = TARGET - 1.0, TARGET + 3.0
    paths = _fine_tunes(tmp_path, [zero, one])
    module = _user_module(tmp_path, DISTANCE)
    out = tmp_path / "wise.safetensors"
    result = run_wa(
        ["average", *paths, "--sweep", "0:1:0.25", "--model", f"{module}:build",
         "--eval", f"{module}:score", "--mode", "max", "-o", out], capsys,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    z, o = (torch.tensor(p, dtype=torch.float32).double() for p in (zero, one))
    torch.testing.assert_close(load_file(out)["weight"], (0.75 * z + 0.25 * o).float())
    base = torch.full((2, 3), -2.0, dtype=torch.float64)
    save_file({"weight": base.float()}, tmp_path / "base.safetensors")
    stock = tmp_path / "stock.safetensors"
    result = run_wa(
        ["average", *paths, "--model-stock", tmp_path / "base.safetensors", "-o", stock], capsys
    )
    assert result.code == 0, result.stderr
    a, b = (z - base).reshape(-1), (o - base).reshape(-1)
    cos = min(max(float(a @ b / (a.norm() * b.norm())), 0.0), 1.0)
    t = 2 * cos / (1 + cos)  # N cos / (1 + (N - 1) cos), N = 2
    assert 0 < t < 1
    expected = t * (z + o) / 2 + (1 - t) * base
    torch.testing.assert_close(load_file(stock)["weight"], expected.float())


def test_a_bad_score_is_one_line_naming_the_function_and_nothing_is_written(tmp_path, capsys):
    paths = _fine_tunes(tmp_path, [TARGET, TARGET + 1])
    module = _user_module(tmp_path, "return float('nan')")
    out = tmp_path / "soup.safetensors"
    result = run_wa(
        ["average", *paths, "--greedy", "--model", f"{module}:build", "--eval", f"{module}:score",
         "--mode", "max", "-o", out], capsys,
    )  # fmt: skip
    assert_one_line_error(result, 3, "score", "returned nan")
    assert not out.exists()
    result = run_wa(["average", *paths, "--greedy", "-o", out], capsys)
    assert_one_line_error(result, 2, "--model", "--eval")


def test_every_soup_reads_its_inputs_with_the_reading_flags(tmp_path, capsys):
    """--strip-prefix and --exclude apply to soups as to a plain average. They were dropped:
    --greedy and --sweep then refused the model's keys, and --model-stock wrote the 'module.'
    keys and the excluded tensor with exit 0."""
    zero, one = TARGET - 1.0, TARGET + 3.0
    paths = []
    for i, p in enumerate((zero, one)):
        paths.append(tmp_path / f"ddp_{i}.safetensors")
        w = torch.tensor(p, dtype=torch.float32)
        save_file({"module.weight": w, "module.step_count": torch.full((1,), 7.0)}, paths[-1])
    save_file(
        {"module.weight": torch.full((2, 3), -2.0), "module.step_count": torch.zeros(1)},
        tmp_path / "base.safetensors",
    )
    module = _user_module(tmp_path, DISTANCE)
    reading = ["--strip-prefix", "module.", "--exclude", "step_count"]
    scoring = ["--model", f"{module}:build", "--eval", f"{module}:score", "--mode", "max"]
    runs = {
        "greedy": ["--greedy", *scoring],
        "sweep": ["--sweep", "0:1:0.25", *scoring],
        "stock": ["--model-stock", tmp_path / "base.safetensors"],
    }
    z, o = (torch.tensor(p, dtype=torch.float32).double() for p in (zero, one))
    for name, flags in runs.items():
        out = tmp_path / f"{name}.safetensors"
        result = run_wa(["average", *paths, *flags, *reading, "-o", out], capsys)
        assert result.code == 0, result.stderr
        assert set(load_file(out)) == {"weight"}, name
    # The sweep's best α on the grid is 0.25 (closest to TARGET): the value shows the stripped
    # keys were the ones scored and written.
    torch.testing.assert_close(
        load_file(tmp_path / "sweep.safetensors")["weight"], (0.75 * z + 0.25 * o).float()
    )
