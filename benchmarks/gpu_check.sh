#!/usr/bin/env bash
# The CUDA path in one short run, for a session that has an NVIDIA GPU (issue 15): the `gpu`
# tests, then bf16-1gb (4 inputs) and many-small with `wa --device cuda` beside the CPU floor.
# About 5 minutes on a warm machine with torch (CUDA build) and the test extra installed; the
# inputs are generated under $WA_BENCH_DATA (default bench_data/ beside the repository).
#
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.txt
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(0))"
python -m pytest -q -m gpu
python benchmarks/bench_average.py --workload bf16-1gb --count 4 --repeats 2 --device cuda
python benchmarks/bench_workloads.py --workload many-small --repeats 2 --device cuda
