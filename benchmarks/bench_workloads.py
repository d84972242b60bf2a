"""Benchmark every command shape against its floor, side by side in one run.

Workloads (synthetic, generated once and cached under ``--data-dir``):

* ``many-small``: 4 x 20,000 bf16 tensors of 4,096 elements (an MoE-like layout): ``wa average``
  against the floor and the naive ``load_file`` script;
* ``graft``: 2 x ~434 MB bf16, 16 transformer layers: ``wa graft`` against the floor (both
  inputs read once, the output written once);
* ``entropy``: 1 x the same ~434 MB checkpoint: ``wa inspect-entropy`` against reading it once;
* ``ema``: 8 x 128 MB bf16: ``wa ema --decay 0.9`` against ``wa average`` of the same inputs;
* ``pt``: 4 x 256 MB bf16 saved with ``torch.save``: ``wa average`` of the ``.pt`` files against
  the floor and a naive ``torch.load`` script.

As in ``bench_average.py``: every run is a fresh subprocess under ``_measure.py`` (exact peak RSS),
variants interleave in a rotating order for ``--repeats`` rounds, the table shows medians and the
ratio to the floor. Compare ratios from one run; absolute times move with the machine's load.

    python benchmarks/bench_workloads.py                       # every workload
    python benchmarks/bench_workloads.py --workload many-small --workload entropy
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_average import (  # noqa: E402
    BENCH_DIR,
    MB,
    REPO,
    ValuePool,
    layout,
    log,
    machine_info,
    measure,
    warm_cache,
)

LAYOUT_VERSION = "w1"
Spec = tuple[str, tuple[int, ...], torch.dtype]


def many_small_specs() -> list[Spec]:
    return [(f"experts.{i:05d}.weight", (64, 64), torch.bfloat16) for i in range(20_000)]


def transformer_specs(layers: int = 16, d: int = 1024, ffn: int = 4096) -> list[Spec]:
    bf = torch.bfloat16
    specs: list[Spec] = [("embed.weight", (16384, d), bf)]
    for i in range(layers):
        p = f"layers.{i:02d}"
        specs += [(f"{p}.attn.{n}.weight", (d, d), bf) for n in ("q_proj", "k_proj", "v_proj")]
        specs += [
            (f"{p}.attn.o_proj.weight", (d, d), bf),
            (f"{p}.mlp.up_proj.weight", (ffn, d), bf),
            (f"{p}.mlp.down_proj.weight", (d, ffn), bf),
            (f"{p}.norm1.weight", (d,), bf),
            (f"{p}.norm2.weight", (d,), bf),
        ]
    return specs


def mixed_specs(megabytes: int) -> list[Spec]:
    return layout(megabytes * MB, torch.bfloat16)


@dataclass(frozen=True)
class Workload:
    name: str
    specs: str  # which spec function
    count: int
    suffix: str  # ".safetensors" or ".pt"
    variants: tuple[str, ...]


# Every workload also runs its floor without the interpreter's teardown ("...-no-teardown"):
# wa skips that teardown, so this is the floor for a tool that does as wa does.
WORKLOADS = {
    "many-small": Workload(
        "many-small",
        "many_small",
        4,
        ".safetensors",
        ("floor", "floor-no-teardown", "naive", "wa"),
    ),
    "graft": Workload(
        "graft", "transformer", 2, ".safetensors", ("floor", "floor-no-teardown", "wa-graft")
    ),
    "entropy": Workload(
        "entropy", "transformer", 1, ".safetensors", ("read", "read-no-teardown", "wa-entropy")
    ),
    "ema": Workload(
        "ema", "mixed128", 8, ".safetensors", ("floor", "floor-no-teardown", "wa", "wa-ema")
    ),
    "pt": Workload("pt", "mixed256", 4, ".pt", ("floor", "floor-no-teardown", "naive-pt", "wa")),
}
SPECS = {
    "many_small": many_small_specs,
    "transformer": transformer_specs,
    "mixed128": lambda: mixed_specs(128),
    "mixed256": lambda: mixed_specs(256),
}


def ensure_inputs(data_dir: Path, work: Workload) -> list[Path]:
    """The workload's checkpoints (cached: regenerated only when missing or of another layout)."""
    folder = data_dir / f"w-{work.specs}{work.suffix.replace('.', '-')}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"ckpt_{i:03d}{work.suffix}" for i in range(work.count)]
    stamp = folder / "layout.json"
    done = json.loads(stamp.read_text()) if stamp.exists() else {}
    specs = SPECS[work.specs]()
    pool: ValuePool | None = None
    for i, path in enumerate(paths):
        if path.exists() and done.get(path.name) == LAYOUT_VERSION:
            continue
        pool = pool or ValuePool(torch.bfloat16)
        start = time.perf_counter()
        state = {
            k: torch.tensor(1000 * (i + 1), dtype=dt) if dt == torch.int64 else pool.tensor(k, s, i)
            for k, s, dt in specs
        }
        tmp = path.with_name(path.name + ".tmp")
        if work.suffix == ".pt":
            torch.save(state, tmp)
        else:
            save_file(state, tmp, metadata={"format": "pt", "step": str(1000 * (i + 1))})
        os.replace(tmp, path)
        done[path.name] = LAYOUT_VERSION
        stamp.write_text(json.dumps(done))
        log(f"generated {path} ({path.stat().st_size / MB:.0f} MB) in "
            f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    return paths


def output_bytes(inputs: list[Path]) -> int:
    """What an averaged output holds: the float bytes of one input (its header aside)."""
    return inputs[0].stat().st_size


def command(variant: str, inputs: list[Path], out: Path, device: str = "cpu") -> list[str]:
    py, ins = sys.executable, [str(p) for p in inputs]
    wa = [py, "-m", "wa_cli"]
    on = ["--device", device] if device != "cpu" else []
    floor = [py, str(BENCH_DIR / "_floor.py")]
    if variant.endswith("-no-teardown"):
        floor.append("--no-teardown")
        variant = variant.removesuffix("-no-teardown")
    if variant == "floor":
        return [*floor, str(out), str(output_bytes(inputs)), *ins]
    if variant == "read":
        return [*floor, str(out), "0", *ins]
    if variant == "naive":
        return [py, str(BENCH_DIR / "_naive.py"), str(out), *ins]
    if variant == "naive-pt":
        return [py, str(BENCH_DIR / "_naive_pt.py"), str(out), *ins]
    if variant == "wa":
        return [*wa, "average", *ins, "-o", str(out), "--force", "-q", *on]
    if variant == "wa-ema":
        return [*wa, "ema", *ins, "--decay", "0.9", "-o", str(out), "--force", "-q", *on]
    if variant == "wa-graft":
        return [*wa, "graft", *ins, "-o", str(out), "--force", "-q", *on]
    if variant == "wa-entropy":
        return [*wa, "inspect-entropy", *ins, "--json"]
    raise ValueError(variant)


def run_workload(work: Workload, data_dir: Path, repeats: int, device: str = "cpu") -> dict:
    inputs = ensure_inputs(data_dir, work)
    out_dir = data_dir / "out" / f"w-{work.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"{work.name}: warming the page cache ({warm_cache(inputs):.1f} s)")
    runs: dict[str, list[dict]] = {v: [] for v in work.variants}
    for r in range(repeats):
        k = r % len(work.variants)
        for variant in work.variants[k:] + work.variants[:k]:
            out = out_dir / f"{variant}.out"
            out.unlink(missing_ok=True)
            os.sync()
            record = measure(command(variant, inputs, out, device))
            runs[variant].append(record)
            log(f"  round {r + 1}/{repeats} {variant:18s} {record['wall_s']:7.2f} s "
                f"{record['peak_rss_mb']:7.0f} MB")  # fmt: skip
    summary = {
        v: {
            "median_s": statistics.median(x["wall_s"] for x in rec),
            "wall_s": [x["wall_s"] for x in rec],
            "cpu_s": statistics.median(x["cpu_s"] for x in rec),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in rec),
        }
        for v, rec in runs.items()
    }
    return {
        "workload": work.name,
        "inputs": len(inputs),
        "input_mb_each": inputs[0].stat().st_size / MB,
        "variants": summary,
    }


def render(result: dict) -> str:
    s = result["variants"]
    base = s[next(iter(s))]["median_s"]  # the first variant is the floor (or the one read)
    strict = next((r["median_s"] for v, r in s.items() if v.endswith("-no-teardown")), base)
    lines = [
        f"{result['workload']}: {result['inputs']} x {result['input_mb_each']:.0f} MB",
        f"  {'variant':18s} {'median s':>9s} {'x floor':>8s} {'x no-teardown':>14s} "
        f"{'CPU s':>7s} {'peak RSS MB':>12s}",
    ]
    for v, r in s.items():
        lines.append(
            f"  {v:18s} {r['median_s']:9.2f} {r['median_s'] / base:8.2f} "
            f"{r['median_s'] / strict:14.2f} {r['cpu_s']:7.2f} {r['peak_rss_mb']:12.0f}"
        )
    if "wa-ema" in s and "wa" in s:
        lines.append(f"  wa-ema / wa: {s['wa-ema']['median_s'] / s['wa']['median_s']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    p.add_argument("--repeats", type=int, default=3)
    default_dir = os.environ.get("WA_BENCH_DATA", str(REPO.parent / "bench_data"))
    p.add_argument("--data-dir", type=Path, default=Path(default_dir))
    p.add_argument("--generate-only", action="store_true")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--device", default="cpu", help="--device for wa average/ema/graft (cuda)")
    args = p.parse_args(argv)
    names = args.workload or list(WORKLOADS)
    if args.generate_only:
        for n in names:
            ensure_inputs(args.data_dir, WORKLOADS[n])
        return 0
    results = []
    for n in names:
        result = run_workload(WORKLOADS[n], args.data_dir, args.repeats, args.device)
        results.append(result)
        print(render(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
