#!/usr/bin/env bash
# Issue 5 GPU figures in one command, on a CUDA machine (written for one NVIDIA H100):
#   bash scripts/gpu_torch.sh            # tests (CUDA ones included), then the benchmark
# Writes reports/torch_gpu/{README.md,results.csv}; extra arguments go to bench_torch.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_torch.sh: no CUDA device visible')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -m pytest -q tests/test_torch_api.py tests/test_torch_inspect.py tests/test_torch_cuda.py
python scripts/bench_torch.py --device cuda "$@"
