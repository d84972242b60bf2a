"""`wa graft` through the CLI: outputs against float64 recomputations, the paper rule, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_bytes

from tests.helpers import assert_one_line_error, make_trajectory, run_wa
from tests.methods.graft.test_files import assert_state_close, float64_graft
from tests.methods.graft.test_graft import ordered_sd, reference_graft
from tests.oracles import np_entropy, spec_alpha

# An earlier output: a safetensors file, which --force may replace (anything else it may not).
KEEP_ME = safetensors_bytes({"keep": torch.zeros(1)})


def test_graft_matches_float64_recomputation_and_keeps_receiver_int_buffers(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "g.safetensors"
    r = run_wa(["graft", *traj.paths, "-o", out, "--device", "cpu"], capsys)
    assert r.code == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: graft of 2 input(s)")
    assert "bn-recalibrate" in r.stderr and "wa: error" not in r.stderr
    u, v = load_file(traj.paths[0]), load_file(traj.paths[1])
    g = load_file(out)
    assert_state_close(g, float64_graft(u, v))
    assert torch.equal(g["1.num_batches_tracked"], u["1.num_batches_tracked"])
    assert not torch.equal(u["1.num_batches_tracked"], v["1.num_batches_tracked"])


def test_zero_amplitude_equals_wa_average(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    graft, mean = tmp_path / "g.safetensors", tmp_path / "m.safetensors"
    assert run_wa(["graft", *traj.paths, "-o", graft, "--a", "0", "-q"], capsys).code == 0
    r = run_wa(["average", *traj.paths, "-o", mean, "--non-float", "first", "-q"], capsys)
    assert r.code == 0
    g, m = load_file(graft), load_file(mean)
    assert set(g) == set(m)
    for k in g:
        assert torch.equal(g[k], m[k]), k


def test_grafting_a_model_with_itself_returns_it_exactly(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=1)
    out = tmp_path / "g.safetensors"
    for rule in ("module", "tensor", "paper"):
        r = run_wa(["graft", traj.paths[0], traj.paths[0], "-o", out, "--rule", rule, "--force"],
                   capsys)  # fmt: skip
        assert r.code == 0, r.stderr
        g, u = load_file(out), load_file(traj.paths[0])
        assert all(torch.equal(g[k], u[k]) for k in u), rule


def test_three_model_ring_writes_one_file_per_input(tmp_path, capsys):
    traj = make_trajectory(tmp_path / "in", n=3)
    out = tmp_path / "ring"
    r = run_wa(["graft", *traj.paths, "-o", out, "--json", "-q"], capsys)
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    expected_files = [str(out / f"ckpt_{i}.grafted.safetensors") for i in range(3)]
    assert report["outputs"] == expected_files and report["pairs"] == [[0, 2], [1, 0], [2, 1]]
    states = [load_file(p) for p in traj.paths]
    for i, path in enumerate(expected_files):
        assert_state_close(load_file(path), float64_graft(states[i], states[i - 1]))


def test_paper_rule_on_an_ordered_pickle_reproduces_the_reference(tmp_path, capsys):
    u, v = ordered_sd(1), ordered_sd(2)
    torch.save({"state_dict": u, "epoch": 3}, tmp_path / "u.pt")
    torch.save({"state_dict": v, "epoch": 3}, tmp_path / "v.pt")
    out = tmp_path / "g.safetensors"
    r = run_wa(["graft", tmp_path / "u.pt", tmp_path / "v.pt", "-o", out, "--rule", "paper"],
               capsys)  # fmt: skip
    assert r.code == 0, r.stderr
    g = load_file(out)
    for k, t in reference_graft(u, v).items():
        torch.testing.assert_close(g[k], t.to(torch.float32), rtol=1e-6, atol=1e-7)
    assert torch.equal(g["bn1.num_batches_tracked"], u["bn1.num_batches_tracked"])
    # Pickles keep state-dict order: only the "before the first conv" warning, as one line.
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("wa: warning:")]
    paper = [ln for ln in warnings if "paper graft rule" in ln]
    assert len(paper) == 1 and "'stem.scale'" in paper[0]
    # u and v are independent initialisations: the relatedness check says so, in one line.
    assert [ln for ln in warnings if ln not in paper] == [
        ln for ln in warnings if "look independently trained" in ln
    ]


def test_paper_rule_warns_when_the_key_order_is_unknown(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    r = run_wa(["graft", *traj.paths, "--rule", "paper", "--dry-run"], capsys)
    assert r.code == 0, r.stderr
    assert any(
        ln.startswith("wa: warning:") and "key order is not known" in ln
        for ln in r.stderr.splitlines()
    )


def test_dry_run_prints_the_alpha_table_and_writes_nothing(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    before = sorted(tmp_path.iterdir())
    out = tmp_path / "g.safetensors"
    r = run_wa(["graft", *traj.paths, "-o", out, "--dry-run", "--json"], capsys)
    assert r.code == 0, r.stderr
    assert sorted(tmp_path.iterdir()) == before
    report = json.loads(r.stdout)
    assert report["dry_run"] and report["outputs"] == [str(out)]
    u, v = load_file(traj.paths[0]), load_file(traj.paths[1])
    for row in report["alphas"]:
        w = row["from"]
        assert row["entropy"] == pytest.approx([np_entropy(u[w]), np_entropy(v[w])], abs=1e-12)
        assert row["alpha"] == pytest.approx([spec_alpha(*row["entropy"])], abs=1e-12)
    r = run_wa(["graft", *traj.paths, "--dry-run"], capsys)
    assert r.code == 0 and "1.weight" in r.stdout and "α ckpt_0<-ckpt_1" in r.stdout


@pytest.fixture
def bad_inputs(tmp_path):
    good = make_trajectory(tmp_path / "good", n=3).paths
    state = dict(load_file(good[0]))
    state["0.weight"] = torch.ones(1, 2, 3, 4)
    save_file(state, tmp_path / "shape.safetensors")
    save_file({"other": torch.ones(1)}, tmp_path / "keys.safetensors")
    return good


CASES = [
    # (arguments after 'graft', exit code, fragments of the one error line)
    (["{g0}", "-o", "{out}"], 2, ["at least two checkpoints"]),
    (["{g0}", "{g1}"], 2, ["-o", "--dry-run"]),
    (["{g0}", "{tmp}/shape.safetensors", "-o", "{out}"], 4, ["shape mismatch", "'0.weight'"]),
    (["{g0}", "{tmp}/keys.safetensors", "-o", "{out}"], 4, ["key sets differ", "architecture"]),
    (["{g0}", "{g1}", "-o", "{out}", "--bins", "1"], 2, ["bins must be an integer from 2"]),
    (["{g0}", "{g1}", "-o", "{out}", "--a", "1"], 2, ["--a must be in [0, 1)"]),
    (["{g0}", "{g1}", "-o", "{out}", "--a", "-0.5"], 2, ["--a must be in [0, 1)"]),
    (["{g0}", "{g1}", "-o", "{out}", "--c", "0"], 2, ["c must be"]),
    (["{g0}", "{g1}", "-o", "{out}", "--rule", "layer"], 2, ["--rule"]),
    (["{g0}", "{g1}", "{g2}", "-o", "{out}"], 2, ["must name a folder"]),
    (["{g0}", "{g1}", "-o", "{out}", "--dtype", "int8"], 2, ["--dtype 'int8' is not one of"]),
    (["{g0}", "{g1}", "-o", "{g0}", "--force"], 5, ["would overwrite the input"]),
]


@pytest.mark.parametrize("args, code, fragments", CASES)
def test_errors_are_one_line_and_write_nothing(tmp_path, capsys, bad_inputs, args, code, fragments):
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    fmt = {"tmp": tmp_path, "out": tmp_path / "o.safetensors"}
    fmt.update({f"g{i}": p for i, p in enumerate(bad_inputs)})
    r = run_wa(["graft", *[a.format(**fmt) for a in args]], capsys)
    assert_one_line_error(r, code, *fragments)
    assert r.stdout == ""
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_existing_output_needs_force(tmp_path, capsys):
    traj = make_trajectory(tmp_path, n=2)
    out = tmp_path / "g.safetensors"
    out.write_bytes(KEEP_ME)
    r = run_wa(["graft", *traj.paths, "-o", out], capsys)
    assert_one_line_error(r, 5, "already exists", "--force")
    assert out.read_bytes() == KEEP_ME


def test_sample_runs_graft(tmp_path: Path, capsys):
    from tests.helpers import REPO

    a = REPO / "sample_checkpoints/run_a/ckpt_1350.safetensors"
    b = REPO / "sample_checkpoints/run_b/ckpt_1350.safetensors"
    out = tmp_path / "grafted.safetensors"
    r = run_wa(["graft", a, b, "-o", out, "-q"], capsys)
    assert r.code == 0, r.stderr
    assert_state_close(load_file(out), _sample_oracle(load_file(a), load_file(b)))


def _sample_oracle(u: dict, v: dict) -> dict:
    """The module rule for the sample CNN (conv1, bn1, conv2, bn2, fc), in float64."""
    out = {}
    for k, t in u.items():
        if not t.is_floating_point():
            out[k] = t
            continue
        w = k.rpartition(".")[0] + ".weight"
        alpha = spec_alpha(np_entropy(u[w]), np_entropy(v[w]))
        out[k] = (alpha * t.double() + (1 - alpha) * v[k].double()).to(t.dtype)
    return out


def test_key_mismatch_does_not_suggest_an_option_graft_lacks(tmp_path, capsys, bad_inputs):
    r = run_wa(
        ["graft", bad_inputs[0], tmp_path / "keys.safetensors", "-o", tmp_path / "o"], capsys
    )
    assert "--keys" not in r.stderr
