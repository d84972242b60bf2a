"""Header parse time and peak RSS: wa's strict reader against the safetensors library, one run.

    python benchmarks/bench_header.py --tensors 1150000

Writes one safetensors file with N one-element tensors (an ~80 MB header at 1.15M), then opens
it in fresh subprocesses: ``wa_cli.io.safetensors_header.read_header`` (strict validation) and
``safetensors.safe_open(...).keys()`` (the reference's Rust parser). Prints seconds, peak RSS and
the ratio for each, so the figure is relative to the machine's load.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

PROBES = {
    "wa": "from pathlib import Path; from wa_cli.io.safetensors_header import read_header; "
    "n = len(read_header(Path(sys.argv[1])).tensors)",
    "safetensors": "from safetensors import safe_open; "
    "n = len(safe_open(sys.argv[1], framework='np').keys())",
}
RUN = (
    "import resource, sys, time; t = time.perf_counter(); {probe}; "
    "print(time.perf_counter() - t, n, "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
)


def write_file(path: Path, n: int) -> int:
    parts = [
        f'"l.{i // 100}.w{i:07d}":{{"dtype":"F32","shape":[1],'
        f'"data_offsets":[{4 * i},{4 * i + 4}]}}'
        for i in range(n)
    ]
    body = ("{" + ",".join(parts) + "}").encode()
    body += b" " * (-(len(body) + 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(body)))
        f.write(body)
        f.write(b"\0" * (4 * n))
    return len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=1_150_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "many.safetensors"
        size = write_file(path, args.tensors)
        rows = {}
        for name, probe in PROBES.items():
            out = subprocess.run(
                [sys.executable, "-c", RUN.format(probe=probe), str(path)],
                capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
            rows[name] = {"seconds": float(out[0]), "tensors": int(out[1]), "rss_mb": float(out[2])}
    ref = rows["safetensors"]["seconds"]
    print(f"header {size / 1e6:.1f} MB, {args.tensors} tensors")
    for name, row in rows.items():
        print(
            f"{name:12s} {row['seconds']:7.2f} s  {row['rss_mb']:7.0f} MB peak  "
            f"{row['seconds'] / ref:5.2f}x the library"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
