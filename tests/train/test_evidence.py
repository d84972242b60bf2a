"""The evidence script: its data, augmentation, statistics, grafting loop, and a --quick run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

import evidence  # noqa: E402


def test_split_is_fresh_per_seed_and_flips_exactly_the_noise_rate() -> None:
    a, again, other = (evidence.make_split(s, 500) for s in (0, 0, 1))
    assert torch.equal(a.x_train, again.x_train) and torch.equal(a.y_train, again.y_train)
    assert not torch.equal(a.x_train, other.x_train)
    assert (len(a.y_train), len(a.y_test)) == (500, 1297)
    flipped = a.y_train != a.y_clean
    assert int(flipped.sum()) == 200  # 40 % of 500, each to a different class
    # train + test is the whole data set, each image once: the same rows in sorted order
    data = load_file(evidence.DATA)
    ref = torch.cat([data["train_images"], data["test_images"]]).float().div(16.0)
    ref = ref.flatten(1).numpy()
    mine = torch.cat([a.x_train, a.x_test]).flatten(1).numpy()
    assert np.array_equal(mine[np.lexsort(mine.T)], ref[np.lexsort(ref.T)])
    # the test labels are the true ones: look each test image up in the file
    labels = torch.cat([data["train_labels"], data["test_labels"]]).numpy()
    index = {row.tobytes(): label for row, label in zip(ref, labels, strict=True)}
    test_rows = a.x_test.flatten(1).numpy()
    assert all(index[r.tobytes()] == y for r, y in zip(test_rows, a.y_test.tolist(), strict=True))


def test_shift_moves_each_image_by_at_most_one_pixel_with_zero_fill() -> None:
    x = torch.rand(64, 1, 8, 8) + 1.0  # no zeros inside, so the fill is visible
    out = evidence.shift(x, torch.Generator().manual_seed(0))
    seen = set()
    for img, moved in zip(x[:, 0], out[:, 0], strict=True):
        matches = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ref = torch.zeros(10, 10)
                ref[1 + dy : 9 + dy, 1 + dx : 9 + dx] = img  # move the image, then crop
                if torch.equal(ref[1:9, 1:9], moved):
                    matches.append((dy, dx))
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 9  # all nine offsets occur over 64 images


def test_paired_statistics_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    method = [(0.5, 0.81), (0.4, 0.90), (0.6, 0.77), (0.5, 0.85), (0.45, 0.80)]
    control = [(0.6, 0.80), (0.5, 0.86), (0.6, 0.77), (0.7, 0.81), (0.5, 0.82)]
    p = evidence.paired(method, control)
    d = np.array([100 * (m[1] - c[1]) for m, c in zip(method, control, strict=True)])
    assert p.mean == pytest.approx(d.mean()) and p.std == pytest.approx(d.std(ddof=1))
    ref = stats.ttest_rel([m[1] for m in method], [c[1] for c in control])
    assert p.t == pytest.approx(ref.statistic)
    assert (p.wins, p.ties) == (3, 1)
    assert p.loss_mean == pytest.approx(np.mean([-0.1, -0.1, 0.0, -0.2, -0.05]))
    for df in evidence.T_CRIT:
        assert evidence.t_critical(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    assert evidence.reading(p) == ("within noise" if abs(ref.statistic) < 2.776 else "better")


def test_readings_of_identical_and_constant_differences() -> None:
    same = evidence.paired([(1.0, 0.5)] * 3, [(1.0, 0.5)] * 3)
    assert (same.t, evidence.reading(same)) == (0.0, "within noise")
    worse = evidence.paired([(1.0, 0.4)] * 3, [(1.0, 0.5)] * 3)
    assert worse.t == -math.inf and evidence.reading(worse) == "worse"
    assert evidence.reading(evidence.paired([(1.0, 0.4)], [(1.0, 0.5)])) == "one seed: no test"


def test_better_single_run_is_picked_per_seed_and_failures_pass_through() -> None:
    results: dict[str, list] = {
        "sgd_cosine": [(0.3, 0.9), (0.2, 0.7), "wa failed"],
        "sgd_low_lr": [(0.4, 0.8), (0.5, 0.75), (0.1, 0.9)],
    }
    evidence.add_better_single(results)
    assert results["better_single"] == [(0.3, 0.9), (0.5, 0.75), "wa failed"]


@pytest.fixture
def one_thread():
    # a tiny model: with the CPUs shared, more threads only contend (restored afterwards)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_grafting_with_a_zero_in_training_is_the_running_mean(tmp_path: Path) -> None:
    size = evidence.Size(n_train=96, epochs=2, swa_start=1, warmup_epochs=1)
    split = evidence.make_split(3, size.n_train)
    got = evidence.grafted_in_training(3, size, split, tmp_path, a=0.0).state_dict()
    # oracle: the same two runs stepped by hand, the float64 mean loaded after every epoch
    runs = [
        evidence.Run(evidence.base(3, size), split),
        evidence.Run(evidence.base(103, size, lr=evidence.LR_LOW), split),
    ]
    for _ in range(size.epochs):
        for run in runs:
            run.train_epoch()
        sds = [r.model.state_dict() for r in runs]
        mean = {
            k: ((v.double() + sds[1][k].double()) / 2).to(v.dtype) if v.is_floating_point() else v
            for k, v in sds[0].items()
        }
        for run in runs:
            run.model.load_state_dict(mean)
    for key, value in runs[0].model.state_dict().items():
        assert torch.allclose(got[key], value, rtol=1e-5, atol=1e-6), key


def test_a_failing_wa_command_raises_with_its_last_stderr_line() -> None:
    with pytest.raises(evidence.WaFailed, match="wa no-such-command exited"):
        evidence.wa_command("no-such-command")


def test_quick_run_prints_every_row_and_comparison(tmp_path: Path) -> None:
    out = tmp_path / "raw.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "evidence.py"), "--quick", "--seeds", "1",
         "--jobs", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "n/a" not in proc.stdout, proc.stdout  # every wa step and training run worked
    for label, _, _ in evidence.COMPARISONS:
        assert f"| {label} |" in proc.stdout
    for label in evidence.ROWS.values():
        assert f"| {label} |" in proc.stdout
    raw = json.loads(out.read_text())
    assert set(raw) == set(evidence.ROWS) and all(len(v) == 1 for v in raw.values())
    assert "1597 clean test images (one image = 0.063 points)" in proc.stdout
