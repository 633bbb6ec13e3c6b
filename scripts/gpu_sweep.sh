#!/usr/bin/env bash
# The GPU sweep: torch on one CUDA device, every strategy, train and predict, depth to 512,
# batch to 4096, optimizers; report in reports/gpu/. Needs torch with CUDA; nvidia-ml-py
# (pip install 'ckpt-toolkit[gpu]') adds the NVML device-used meter.
#
#   scripts/gpu_sweep.sh                  # fresh sweep
#   scripts/gpu_sweep.sh --resume         # continue an interrupted one
#
# Rows: cuda_allocated (torch.cuda.max_memory_allocated, reset per region) is the peak
# compared with ckpt.predict_memory; cuda_reserved and nvml_used are reported beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
$PYTHON -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_sweep: no CUDA device (torch.cuda.is_available() is False)')"
if [[ "${1:-}" == "--resume" ]]; then mode=--resume; else mode=--fresh; fi
exec $PYTHON -m profiling sweep --preset gpu --out reports/gpu --timeout 600 --threads 4 "$mode"
