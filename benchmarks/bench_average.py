"""Benchmark ``wa average`` against the machine's floor and a naive script, in one run.

SWA (Izmailov et al. 2018, arXiv 1803.05407) averages a trajectory of checkpoints; this script
measures what that costs with ``wa`` compared with

* ``floor``: import torch, read every input byte once, write and fsync one output-sized file;
* ``naive``: ``load_file`` each checkpoint, add into float32 accumulators, ``save_file``;
* ``wa``: ``python -m wa_cli average IN... -o OUT --force -q``.

Every run is a fresh subprocess under a fresh wrapper (``_measure.py``), so its peak RSS is exact
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Variants are interleaved, in a rotating order, for
``--repeats`` rounds; the table shows medians. Ratios from one run are the figures to compare:
absolute times move with the machine's load.

Synthetic trajectories are generated once and cached by dtype and size under ``--data-dir``
(default ``$WA_BENCH_DATA``, else ``bench_data/`` beside the repository, outside it):

    python benchmarks/bench_average.py --workload fp32-100mb
    python benchmarks/bench_average.py --workload bf16-1gb --count 2 --json > bf16-1gb-x2.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from safetensors import safe_open
from safetensors.torch import save_file

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MB = 2**20
# Bump when the tensor layout or values change: cached checkpoints with another version are rebuilt.
LAYOUT_VERSION = "1"
VARIANTS = ("floor", "naive", "wa")


@dataclass(frozen=True)
class Workload:
    dtype: torch.dtype
    bytes_each: int
    count: int


WORKLOADS = {
    "fp32-100mb": Workload(torch.float32, 100 * MB, 8),
    "bf16-1gb": Workload(torch.bfloat16, 1024 * MB, 8),
    # Opt-in: 30 GB of inputs, more than most machines' RAM; the disk bounds this one.
    "bf16-5gb-x6": Workload(torch.bfloat16, 5 * 1024 * MB, 6),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- synthetic trajectories -------------------------------------------------------------------


def layout(total_bytes: int, dtype: torch.dtype) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """A realistic tensor mix of about ``total_bytes``: ~60% in a few large matrices (≤ 256 MB
    each), the rest in conv blocks with BatchNorm (weight, bias, running stats, an int64
    ``num_batches_tracked``) and biased linear layers: many small tensors, as in real models."""
    item = torch.empty((), dtype=dtype).element_size()
    total = total_bytes // item
    width = 4096
    large_total = int(0.6 * total)
    n_large = max(2, math.ceil(large_total * item / (256 * MB)))
    rows = large_total // n_large // width
    specs = [(f"embed.{i}.weight", (rows, width), dtype) for i in range(n_large)]
    c = 512 if total_bytes >= 512 * MB else 256
    block = [
        ("conv.weight", (c, c, 3, 3)),
        ("bn.weight", (c,)),
        ("bn.bias", (c,)),
        ("bn.running_mean", (c,)),
        ("bn.running_var", (c,)),
        ("fc.weight", (2 * c, c)),
        ("fc.bias", (2 * c,)),
        ("norm.weight", (c,)),
    ]
    block_elems = sum(math.prod(shape) for _, shape in block)
    for b in range((total - n_large * rows * width) // block_elems):
        specs += [(f"blocks.{b}.{name}", shape, dtype) for name, shape in block]
        specs.append((f"blocks.{b}.bn.num_batches_tracked", (), torch.int64))
    return specs


class ValuePool:
    """Cheap pseudo-random tensors: slices of one random pool, base + 0.05 · noise.

    ``torch.randn`` runs at ~60M values/s here, too slow for 8 GB; slicing a 32M-value pool at
    seeded offsets costs one fused add per tensor. The base slice depends on the key only and the
    noise slice on (key, checkpoint), so checkpoints of one trajectory lie close together.
    """

    SIZE = 2**25

    def __init__(self, dtype: torch.dtype):
        g = torch.Generator().manual_seed(0)
        pool = torch.randn(self.SIZE, generator=g, dtype=torch.float32).to(dtype)
        self.pool = torch.cat([pool, pool])  # any slice [a, a + n], a, n ≤ SIZE, is in range

    def tensor(self, key: str, shape: tuple[int, ...], index: int) -> torch.Tensor:
        n = math.prod(shape)
        out = torch.empty(n, dtype=self.pool.dtype)
        base_rng, noise_rng = random.Random(key), random.Random(f"{key}/{index}")
        for start in range(0, n, self.SIZE):
            m = min(self.SIZE, n - start)
            a, b = base_rng.randrange(self.SIZE), noise_rng.randrange(self.SIZE)
            torch.add(
                self.pool[a : a + m], self.pool[b : b + m], alpha=0.05, out=out[start : start + m]
            )
        if key.endswith("running_var"):
            out.abs_()
        return out.view(shape)


def header_metadata(path: Path) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file, or None when it cannot be read."""
    try:
        with safe_open(path, framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # a truncated or foreign file: regenerate it
        return None


def ensure_trajectory(data_dir: Path, name: str, work: Workload, count: int) -> list[Path]:
    """Generate the first ``count`` checkpoints of a workload (cached), one file at a time."""
    folder = data_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    specs = layout(work.bytes_each, work.dtype)
    paths = [folder / f"ckpt_{i:03d}.safetensors" for i in range(count)]
    pool: ValuePool | None = None
    for i, path in enumerate(paths):
        meta = header_metadata(path) if path.exists() else None
        if meta is not None and meta.get("bench_layout") == LAYOUT_VERSION:
            continue
        pool = pool or ValuePool(work.dtype)
        start = time.perf_counter()
        step = 1000 * (i + 1)
        state = {
            key: torch.tensor(step, dtype=dt) if dt == torch.int64 else pool.tensor(key, shape, i)
            for key, shape, dt in specs
        }
        tmp = path.with_suffix(".tmp")
        save_file(
            state, tmp, metadata={"format": "pt", "step": str(step), "bench_layout": LAYOUT_VERSION}
        )
        os.replace(tmp, path)
        del state
        log(
            f"generated {path} ({path.stat().st_size / MB:.0f} MB, {len(specs)} tensors) "
            f"in {time.perf_counter() - start:.1f} s"
        )
    return paths


# --- measurement --------------------------------------------------------------------------------


def warm_cache(paths: list[Path]) -> float:
    """Read every input once so each variant starts from the same warm page cache."""
    start = time.perf_counter()
    buf = memoryview(bytearray(64 * MB))
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - start


def drop_page_cache() -> None:
    """Drop the page cache (needs root), so every run reads its inputs from disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as e:
        raise SystemExit(
            f"bench: cannot drop the page cache ({e}): run as root, or drop --cold"
        ) from e


def variant_command(variant: str, inputs: list[Path], out: Path, device: str = "cpu") -> list[str]:
    ins = [str(p) for p in inputs]
    if variant == "floor":
        return [
            sys.executable,
            str(BENCH_DIR / "_floor.py"),
            str(out),
            str(inputs[0].stat().st_size),
            *ins,
        ]
    if variant == "naive":
        return [sys.executable, str(BENCH_DIR / "_naive.py"), str(out), *ins]
    wa = [sys.executable, "-m", "wa_cli", "average", *ins, "-o", str(out), "--force", "-q"]
    return [*wa, "--device", device] if device != "cpu" else wa


def measure(cmd: list[str], threads: int | None = None) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "_measure.py"), "--", *cmd],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    record = json.loads(proc.stdout)
    if record["rc"] != 0:
        raise SystemExit(f"bench: {cmd[1]} failed (exit {record['rc']}):\n{record['stderr']}")
    return record


def run_rounds(
    inputs: list[Path],
    out_dir: Path,
    repeats: int,
    cold: bool,
    threads: int | None,
    device: str = "cpu",
) -> dict[str, list]:
    runs: dict[str, list] = {v: [] for v in VARIANTS}
    for r in range(repeats):
        order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]  # rotate: no variant always runs first
        for variant in order:
            # The floor writes raw bytes, not a safetensors file.
            out = out_dir / ("floor.bin" if variant == "floor" else f"{variant}.safetensors")
            out.unlink(missing_ok=True)
            os.sync()  # the previous run's unsynced writes must not land in this one's time
            if cold:
                drop_page_cache()
            record = measure(variant_command(variant, inputs, out, device), threads)
            runs[variant].append(record)
            log(
                f"round {r + 1}/{repeats} {variant:5s} {record['wall_s']:7.2f} s "
                f"{record['peak_rss_mb']:8.0f} MB"
            )
    return runs


def profile_wa(inputs: list[Path], out_dir: Path, threads: int | None, top: int = 25) -> str:
    """Run ``wa average`` once under cProfile; return the top functions by own time."""
    prof = out_dir / "wa_average.prof"
    out = out_dir / "wa.safetensors"
    cmd = variant_command("wa", inputs, out)
    measure([sys.executable, "-m", "cProfile", "-o", str(prof), *cmd[1:]], threads)
    code = (
        "import pstats, sys; "
        "pstats.Stats(sys.argv[1]).sort_stats('tottime').print_stats(int(sys.argv[2]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(prof), str(top)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


# --- correctness --------------------------------------------------------------------------------


def check_outputs(inputs: list[Path], wa_out: Path, naive_out: Path, dtype: torch.dtype) -> dict:
    """wa's output against a float64 oracle (a few tensors) and against the naive output (all).

    bf16: wa and naive both accumulate in float32, so ≥ 99.9% of elements must agree exactly.
    fp32: naive accumulates in float32 but wa in float64, so wa is compared with a float64 mean
    (rtol 1e-6) instead; the wa/naive agreement is reported, not required.
    """
    problems: list[str] = []
    with safe_open(wa_out, "pt") as w, safe_open(naive_out, "pt") as n:
        keys = set(w.keys())
        if keys != set(n.keys()):
            problems.append(f"key sets differ: {len(keys)} in wa vs {len(set(n.keys()))} in naive")
        equal = total = 0
        for key in sorted(keys & set(n.keys())):
            a, b = w.get_tensor(key), n.get_tensor(key)
            if a.dtype != b.dtype or a.shape != b.shape:
                problems.append(f"{key}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}")
                continue
            equal += int((a == b).sum())
            total += a.numel()
        with safe_open(inputs[-1], "pt") as last:
            int_keys = [k for k in keys if w.get_slice(k).get_dtype() == "I64"]
            for key in int_keys:
                if not torch.equal(w.get_tensor(key), last.get_tensor(key)):
                    problems.append(f"{key}: int64 buffer differs from the last input's")
        float_keys = sorted(k for k in keys if k not in int_keys)
        by_size = sorted(float_keys, key=lambda k: math.prod(w.get_slice(k).get_shape()))
        sample = sorted({by_size[0], by_size[len(by_size) // 2], by_size[-1], float_keys[0]})
        oracle_equal = oracle_total = 0
        for key in sample:
            rows = slice(0, 256)  # the first rows of a large matrix are enough for an oracle
            acc = None
            for path in inputs:
                with safe_open(path, "pt") as f:
                    x = f.get_slice(key)[rows].to(torch.float64)
                acc = x if acc is None else acc + x
            expected = (acc / len(inputs)).to(dtype)
            got = w.get_slice(key)[rows]
            oracle_equal += int((got == expected).sum())
            oracle_total += got.numel()
            if dtype == torch.float32:
                try:
                    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)
                except AssertionError as e:
                    problems.append(f"{key}: wa vs float64 mean: {str(e).splitlines()[0]}")
    agree = equal / max(total, 1)
    if dtype != torch.float32 and agree < 0.999:
        problems.append(f"wa and naive agree on {agree:.5%} of elements (need ≥ 99.9%)")
    if dtype != torch.float32 and oracle_equal / max(oracle_total, 1) < 0.999:
        problems.append(f"wa equals the float64 mean on {oracle_equal / oracle_total:.5%} only")
    return {
        "ok": not problems,
        "problems": problems,
        "wa_naive_equal_fraction": agree,
        "wa_oracle_equal_fraction": oracle_equal / max(oracle_total, 1),
        "oracle_keys": sample,
        "int64_keys_checked": len(int_keys),
    }


# --- report -------------------------------------------------------------------------------------


def summarize(runs: dict[str, list]) -> dict[str, dict]:
    out = {}
    for variant, records in runs.items():
        walls = [r["wall_s"] for r in records]
        out[variant] = {
            "median_s": statistics.median(walls),
            "min_s": min(walls),
            "wall_s": walls,
            "cpu_s": statistics.median(r["cpu_s"] for r in records),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in records),
        }
    floor = [json.loads(r["stdout"]) for r in runs["floor"]]
    out["floor"]["phases_s"] = {
        k: statistics.median(p[k] for p in floor)
        for k in ("import_torch_s", "read_s", "write_fsync_s")
    }
    return out


def render_table(result: dict) -> str:
    s = result["variants"]
    head = (
        f"{result['workload']}: {result['count']} x {result['input_mb_each']:.0f} MB "
        f"{result['dtype']}, {result['repeats']} rounds, {result['cache']} page cache, "
        f"threads {result['threads']}, wa on {result.get('device', 'cpu')}"
    )
    lines = [
        head,
        "",
        f"{'variant':8s} {'median s':>9s} {'min s':>7s} {'x floor':>8s} "
        f"{'x wa':>6s} {'CPU s':>7s} {'peak RSS MB':>12s}",
    ]
    for v in VARIANTS:
        r = s[v]
        lines.append(
            f"{v:8s} {r['median_s']:9.2f} {r['min_s']:7.2f} "
            f"{r['median_s'] / s['floor']['median_s']:8.2f} "
            f"{r['median_s'] / s['wa']['median_s']:6.2f} {r['cpu_s']:7.2f} {r['peak_rss_mb']:12.0f}"
        )
    p = s["floor"]["phases_s"]
    read_gb = result.get("input_bytes", 0) / 1e9
    lines += [
        "",
        f"floor phases (median s): import torch {p['import_torch_s']:.2f}, read inputs "
        f"{p['read_s']:.2f}, write+fsync output {p['write_fsync_s']:.2f}",
        f"rates: the host reads {read_gb / max(p['read_s'], 1e-9):.2f} GB/s (the floor's read "
        f"phase); wa {read_gb / s['wa']['median_s']:.2f} GB/s of input over its whole run",
        f"naive / wa: {s['naive']['median_s'] / s['wa']['median_s']:.2f}x time, "
        f"{s['naive']['peak_rss_mb'] / s['wa']['peak_rss_mb']:.2f}x peak RSS",
    ]
    c = result["check"]
    verdict = "OK" if c["ok"] else "FAILED: " + "; ".join(c["problems"])
    lines.append(
        f"check: {verdict} (wa = naive on {c['wa_naive_equal_fraction']:.4%} of elements; "
        f"wa = float64 mean on {c['wa_oracle_equal_fraction']:.4%} of sampled elements)"
    )
    return "\n".join(lines)


def machine_info() -> dict:
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "commit": commit,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="fp32-100mb")
    p.add_argument("--count", type=int, help="number of checkpoints (default: the workload's)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per variant (median reported)")
    default_dir = os.environ.get("WA_BENCH_DATA", str(REPO.parent / "bench_data"))
    p.add_argument("--data-dir", type=Path, default=Path(default_dir), help="cache and outputs")
    p.add_argument(
        "--threads",
        type=int,
        help="OMP/MKL threads for every variant (default: torch's own choice, one per core)",
    )
    p.add_argument("--cold", action="store_true", help="drop the page cache before each run")
    p.add_argument("--device", default="cpu", help="wa's --device (cuda: the GPU path)")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    p.add_argument("--profile", action="store_true", help="also run wa once under cProfile")
    p.add_argument("--generate-only", action="store_true", help="build the cached inputs, stop")
    args = p.parse_args(argv)
    if args.count is not None and args.count < 2:
        p.error("--count must be at least 2")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = WORKLOADS[args.workload]
    count = args.count or work.count
    inputs = ensure_trajectory(args.data_dir, args.workload, work, count)
    if args.generate_only:
        return 0
    out_dir = args.data_dir / "out" / f"{args.workload}-x{count}"
    out_dir.mkdir(parents=True, exist_ok=True)
    input_bytes = sum(p.stat().st_size for p in inputs)
    cache = "cold" if args.cold else "warm"
    if args.cold:
        drop_page_cache()
    elif input_bytes > 0.7 * psutil.virtual_memory().available:
        cache = "partial (inputs exceed free RAM)"
        log("inputs do not fit in the page cache: runs read from disk")
    else:
        log(f"warming the page cache: {input_bytes / MB:.0f} MB in {warm_cache(inputs):.1f} s")
    runs = run_rounds(inputs, out_dir, args.repeats, args.cold, args.threads, args.device)
    check = check_outputs(
        inputs, out_dir / "wa.safetensors", out_dir / "naive.safetensors", work.dtype
    )
    result = {
        "workload": args.workload,
        "count": count,
        "dtype": str(work.dtype).removeprefix("torch."),
        "input_mb_each": inputs[0].stat().st_size / MB,
        "repeats": args.repeats,
        "cache": cache,
        "threads": args.threads or "default",
        "device": args.device,
        "input_bytes": input_bytes,
        "machine": machine_info(),
        "variants": summarize(runs),
        "check": check,
    }
    if args.profile:
        result["wa_profile"] = profile_wa(inputs, out_dir, args.threads)
        log(result["wa_profile"])
    table = render_table(result)
    saved = out_dir / f"result-threads-{result['threads']}.json"
    saved.write_text(json.dumps(result, indent=2))
    log(f"saved {saved}")
    if args.json:
        log(table)
        print(json.dumps(result, indent=2))
    else:
        print(table)
    return 0 if check["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
