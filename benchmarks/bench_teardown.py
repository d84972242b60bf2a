"""Does ending ``wa`` with ``os._exit`` (no interpreter teardown) save time? Side by side.

Two variants of the console entry point (``wa_cli.__main__.main``), each a fresh ``python -c``:

* ``skip``: the entry point as shipped (the process ends with ``os._exit`` once flushed);
* ``teardown``: the same, with ``signals.skip_teardown`` replaced by a no-op first, so the
  process ends through ``SystemExit`` and the interpreter's full teardown.

Workloads: ``sample``: ``wa average`` of ``sample_checkpoints/run_a`` (11 x 26 KB) and
``wa inspect-entropy`` of one of them; ``many``: 4 x 20,000 small fp32 tensors (generated once
under ``--data-dir``, 2.5 MB each), ``wa average`` of all four and ``inspect-entropy`` of one.
Variants interleave for ``--repeats`` rounds; the table shows medians (and minima) of wall time.

    python benchmarks/bench_teardown.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENTRY = (
    "import sys; sys.argv = ['wa'] + sys.argv[1:]; {patch}from wa_cli.__main__ import main; main()"
)
VARIANTS = {
    "skip": ENTRY.format(patch=""),
    "teardown": ENTRY.format(
        patch="from wa_cli.cli import signals; signals.skip_teardown = lambda skip=True: None; "
    ),
}


def many_small(data_dir: Path) -> list[Path]:
    """4 checkpoints of 20,000 fp32 tensors of 32 elements (generated once)."""
    import torch
    from safetensors.torch import save_file

    folder = data_dir / "teardown_many_small"
    paths = [folder / f"ckpt_{i}.safetensors" for i in range(4)]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        gen = torch.Generator().manual_seed(i)
        tensors = {
            f"experts.{k:05d}.weight": torch.randn(4, 8, generator=gen) for k in range(20_000)
        }
        save_file(tensors, str(path))
    return paths


def commands(data_dir: Path, out: Path) -> dict[str, list[str]]:
    sample = sorted((REPO / "sample_checkpoints" / "run_a").glob("*.safetensors"))
    many = many_small(data_dir)
    quiet = ["--force", "-q"]
    return {
        "average sample (11 x 26 KB)": [
            "average",
            *map(str, sample),
            "-o",
            str(out / "a.st"),
            *quiet,
        ],
        "inspect-entropy sample (1)": ["inspect-entropy", str(sample[-1])],
        "average many (4 x 20,000 keys)": [
            "average",
            *map(str, many),
            "-o",
            str(out / "b.st"),
            *quiet,
        ],
        "inspect-entropy many (20,000 keys)": ["inspect-entropy", str(many[-1])],
    }


def run_once(code: str, args: list[str]) -> float:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {args}\n{proc.stderr.decode()[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "wa_bench")
    opts = parser.parse_args()
    out = opts.data_dir / "out"
    out.mkdir(parents=True, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {opts.repeats} rounds, medians (min) in seconds")
    print(f"{'command':38} {'skip':>14} {'teardown':>14} {'saved':>14}")
    for name, args in commands(opts.data_dir, out).items():
        walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(opts.repeats):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for variant in order:
                walls[variant].append(run_once(VARIANTS[variant], args))
        skip, full = (statistics.median(walls[v]) for v in ("skip", "teardown"))
        cells = [f"{statistics.median(w):.3f} ({min(w):.3f})" for w in walls.values()]
        saved = f"{full - skip:+.3f} ({(full - skip) / full:+.0%})"
        print(f"{name:38} {cells[0]:>14} {cells[1]:>14} {saved:>14}", flush=True)


if __name__ == "__main__":
    main()
