#!/usr/bin/env bash
# GPU check, under 8 minutes on one CUDA GPU: training throughput of resnet18 on 32x32 batches, and the
# fast encoder trained on CIFAR-10 (real CIFAR-10 in $DATA/cifar-10-batches-py if present, else the
# shared JPEG set), printing time to 90% and 94% test accuracy.
#   bash benchmarks/gpu_check.sh            # on a CUDA machine
#   bash benchmarks/gpu_check.sh --tiny     # on the CPU: a seconds-long check that the script runs
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data}
PYTHON=${PYTHON:-python}
if [ "${1:-}" = "--tiny" ]; then
  "$PYTHON" benchmarks/throughput.py --device cpu --encoders fastnet-small --batch 16 --steps 1
  "$PYTHON" benchmarks/time_to_accuracy.py --tiny --device cpu --targets 0.5 0.9
  exit 0
fi
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run with --tiny on a CPU')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PYTHON" benchmarks/throughput.py --device cuda --encoders resnet18 fastnet --batch 512 --steps 20
if [ -d "$DATA/cifar-10-batches-py" ]; then
  set -- --data cifar10 --data-dir "$DATA"
else
  JPEG=$(mktemp -d)
  tar xzf ../shared/data/cifar10-jpeg.tar.gz -C "$JPEG"
  set -- --data imagefolder --data-dir "$JPEG"
fi
timeout 420 "$PYTHON" benchmarks/time_to_accuracy.py "$@" --device cuda --arch fastnet --epochs 40 \
  --batch-size 512 --lr 0.4 --targets 0.90 0.94
