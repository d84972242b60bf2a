"""The graft relatedness check: independent initialisations warn, fine-tunes of one init do not."""

from __future__ import annotations

import copy

import torch
from safetensors.torch import save_file

from tests.helpers import run_wa, tiny_cnn
from wa_cli.methods.graft.files import plan_graft
from wa_cli.methods.graft.relatedness import UNRELATED_BELOW, measure, weight_keys

WARNING = "look independently trained"


def fine_tune(model: torch.nn.Module, seed: int, steps: int = 30) -> dict[str, torch.Tensor]:
    """Real SGD steps on random data: a run that starts from ``model``'s weights."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        x = torch.randn(8, 3, 5, 5, generator=gen)
        y = torch.randint(0, 3, (8,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_pair(tmp_path, a, b):
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    save_file(a, paths[0])
    save_file(b, paths[1])
    return paths


def test_independent_initialisations_warn(tmp_path, capsys):
    paths = save_pair(tmp_path, fine_tune(tiny_cnn(0), 10), fine_tune(tiny_cnn(1), 11))
    plan = plan_graft(paths)
    found = measure(plan.check, (0, 1), weight_keys(plan.check))
    assert set(found.cosines) == {"0.weight", "4.weight"}
    assert abs(found.median) < UNRELATED_BELOW  # type: ignore[arg-type]
    assert [w for w in plan.warnings if WARNING in w] != []
    r = run_wa(["graft", *paths, "-o", tmp_path / "g.safetensors"], capsys)
    assert r.code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if WARNING in ln]
    assert len(lines) == 1 and lines[0].startswith("wa: warning: ")
    assert "destroys accuracy" in lines[0] and "graft during training" in lines[0]


def test_fine_tunes_of_one_init_do_not_warn(tmp_path, capsys):
    base = tiny_cnn(0)
    paths = save_pair(tmp_path, fine_tune(base, 10), fine_tune(base, 11))
    plan = plan_graft(paths)
    found = measure(plan.check, (0, 1), weight_keys(plan.check))
    # The oracle: the cosine in float64 over the whole tensors, computed here.
    a, b = fine_tune(base, 10), fine_tune(base, 11)
    for key, cos in found.cosines.items():
        x, y = a[key].double().flatten(), b[key].double().flatten()
        assert abs(cos - float(x @ y / (x.norm() * y.norm()))) < 1e-12
    assert found.median > 0.9  # type: ignore[operator]
    assert not [w for w in plan.warnings if WARNING in w]
    r = run_wa(["graft", *paths, "--dry-run"], capsys)
    assert r.code == 0 and WARNING not in r.stderr, r.stderr


def test_the_check_reads_a_bounded_sample_of_a_large_model(tmp_path, monkeypatch):
    """At most MAX_LAYERS layers, evenly spread, and a prefix of each: a bounded cost however
    large the model (with one layer per key looked up directly, not by a scan of the plan)."""
    import wa_cli.methods.graft.relatedness as rel

    gen = torch.Generator().manual_seed(0)
    base = {f"l.{i:04d}.weight": torch.randn(8, 16, generator=gen) for i in range(600)}
    tuned = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
    paths = save_pair(tmp_path, base, tuned)
    monkeypatch.setattr(rel, "SAMPLE_ELEMENTS", 32)
    plan = plan_graft(paths)
    keys = weight_keys(plan.check)
    assert len(keys) == rel.MAX_LAYERS
    assert keys[0] == "l.0000.weight" and keys[-1] > "l.0590.weight"  # spread to the end
    found = measure(plan.check, (0, 1), keys)
    for key, cos in found.cosines.items():  # oracle: float64 cosine of each 32-element prefix
        x, y = base[key].double().flatten()[:32], tuned[key].double().flatten()[:32]
        assert abs(cos - float(x @ y / (x.norm() * y.norm()))) < 1e-12
    assert not found.unrelated
