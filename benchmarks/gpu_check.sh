#!/usr/bin/env bash
# GPU check, under 8 minutes on one CUDA GPU: training throughput of resnet18, fastnet and fastnet-wide on
# 32x32 batches (fp32, bf16 + channels_last, and compiled), then the GPU fast encoder (fastnet-wide, fixed
# cosine head) trained on CIFAR-10 (real CIFAR-10 in $DATA/cifar-10-batches-py if present, else the shared
# JPEG set), printing time to 90% and 94% test accuracy.
#   bash benchmarks/gpu_check.sh            # on a CUDA machine
#   bash benchmarks/gpu_check.sh --tiny     # on the CPU: a seconds-long check that the script runs
# Environment: PYTHON (default python), DATA (default data), JPEG_TAR (default ../shared/data/cifar10-jpeg.tar.gz),
# JPEG_DIR (the JPEG set already extracted), EPOCHS (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data}
PYTHON=${PYTHON:-python}
JPEG_TAR=${JPEG_TAR:-../shared/data/cifar10-jpeg.tar.gz}
EPOCHS=${EPOCHS:-30}
if [ "${1:-}" = "--tiny" ]; then
  "$PYTHON" benchmarks/throughput.py --device cpu --encoders fastnet-small --batch 16 --steps 1
  "$PYTHON" benchmarks/time_to_accuracy.py --tiny --device cpu --targets 0.5 0.9
  exit 0
fi
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run with --tiny on a CPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" benchmarks/throughput.py --device cuda --encoders resnet18 fastnet fastnet-wide --batch 512 --steps 20 --compile
if [ -d "$DATA/cifar-10-batches-py" ]; then
  set -- --data cifar10 --data-dir "$DATA"
elif [ -d "${JPEG_DIR:-}" ]; then
  set -- --data imagefolder --data-dir "$JPEG_DIR"
else
  JPEG=$(mktemp -d)
  tar xzf "$JPEG_TAR" -C "$JPEG"
  set -- --data imagefolder --data-dir "$JPEG"
fi
# ResNet-9-like recipe: batch 512, peak lr 0.4 after a 4-epoch warm-up, label smoothing 0.2; fixed cosine head, S = 16;
# plus the airbench tricks validated for the CPU recipe: frozen whitening stem, alternating flip, flip-shift TTA.
timeout 300 "$PYTHON" benchmarks/time_to_accuracy.py "$@" --device cuda --arch fastnet-wide --epochs "$EPOCHS" \
  --batch-size 512 --lr 0.4 --set train.warmup_epochs=4 --set train.label_smoothing=0.2 \
  --set model.whiten=frozen --set data.alternating_flip=true --set train.tta=flip-shift --targets 0.90 0.94
