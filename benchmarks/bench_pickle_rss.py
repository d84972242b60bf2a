"""Peak RSS of averaging two ``.pt`` files: wa's positional reads against mmapped loading.

wa reads a pickle's tensors with ``pread`` (``wa_cli.io.pickle_checkpoint``). The baseline is what
wa did before: ``torch.load(mmap=True)`` and reading every tensor out of the mapping once, which
leaves every touched page of every input counted in the process's resident memory. The
baseline keeps no output (one key's float64 sum at a time), so the difference is the mapping.
Both runs are measured as fresh children by ``_measure.py`` (exact peak RSS), side by side.

Usage: python benchmarks/bench_pickle_rss.py [--mb 200] [--dir /tmp/wa-bench-pt]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

_MMAP_BASELINE = """
import sys, torch
paths, out = sys.argv[1:-1], sys.argv[-1]
states = [torch.load(p, map_location="cpu", weights_only=True, mmap=True) for p in paths]
for key in states[0]:  # one key at a time, the result dropped: only the mapping accumulates
    total = torch.zeros(states[0][key].shape, dtype=torch.float64)
    for s in states:
        total += s[key]  # reads every page of the mapping once
    del total
"""


def make_inputs(folder: Path, mb: int) -> list[Path]:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    n = mb * 2**20 // 4 // 8  # 8 float32 tensors per file
    for i in range(2):
        path = folder / f"ckpt_{i}.pt"
        if not path.exists():
            g = torch.Generator().manual_seed(i)
            torch.save({f"layer{j}.weight": torch.randn(n, generator=g) for j in range(8)}, path)
        paths.append(path)
    return paths


def measure(cmd: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(HERE / "_measure.py"), "--", *cmd],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    record = json.loads(out.stdout)
    if record["rc"] != 0:
        raise SystemExit(f"{cmd[:3]} failed: {record['stderr']}")
    return {"wall_s": round(record["wall_s"], 2), "peak_rss_mb": round(record["peak_rss_mb"], 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200, help="size of each input file in MB")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/wa-bench-pt"))
    args = parser.parse_args()
    paths = make_inputs(args.dir, args.mb)
    out = args.dir / "avg.safetensors"
    wa = measure([sys.executable, "-m", "wa_cli", "average", *map(str, paths), "-o", str(out),
                  "--force", "-q"])  # fmt: skip
    mmap = measure([sys.executable, "-c", _MMAP_BASELINE, *map(str, paths), str(args.dir / "b.pt")])
    rows = {"wa (pread)": wa, "torch.load(mmap=True)": mmap}
    print(f"two .pt inputs of {args.mb} MB each")
    for name, r in rows.items():
        print(f"  {name:<24} peak RSS {r['peak_rss_mb']:>8.1f} MB   wall {r['wall_s']:>6.2f} s")
    print(f"  ratio (mmap / wa)        {mmap['peak_rss_mb'] / wa['peak_rss_mb']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
