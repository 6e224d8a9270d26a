#!/usr/bin/env bash
# Everything this project checks and times on a CUDA GPU, in one call (a lent GPU is short-lived).
#
#   OUT=/tmp/gpu_out bash benchmarks/gpu_check.sh      # logs and tables land in $OUT
#
# 1. the GPU tests (pytest -m gpu): CUDA vs float64 CPU, fp32/bf16/fp16 training and resume,
#    channels_last and torch.compile, our collectives over NCCL;
# 2. bench_unet.py at 32x32 and 128x128, batch 64: ours vs diffusers' UNet2DModel, fp32 and bf16;
# 3. bench_levers.py at 128x128: fp32, tf32, bf16, channels_last (and torch.compile, last);
# 4. the real training loop at the seed size on a synthetic 128x128 folder: images/s in the loop;
# 5. the digits demo end to end on the GPU, then DDIM-50 sampling of 64 images.
# Each step has its own time limit, so one that hangs costs only its share.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/benchmarks:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 DDPM_CACHE=/tmp/ddpm-cache
PY=${PYTHON:-python3}
T=${GPU_CHECK_TIMEOUT_SCALE:-1}  # multiply every step's time limit
step() { echo; echo "=== $1 ($(date +%T))"; }
lim() { echo $(( $1 * T )); }
{
step environment
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"

step "GPU tests"
timeout "$(lim 180)" $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py

step "our U-Net vs diffusers"
timeout "$(lim 150)" $PY benchmarks/bench_unet.py --device cuda --train-batch 64 --repeats 10 --out "$OUT/bench_unet_h200.md"

step "levers at 128x128"
timeout "$(lim 90)" $PY benchmarks/bench_levers.py --size seed --device cuda --batch 64 --repeats 10 --out "$OUT/levers_h200.md"

step "training loop at the seed size (synthetic 128x128 folder)"
$PY - <<'PYEOF'
import numpy as np
from pathlib import Path
from PIL import Image
root = Path("/tmp/faces"); root.mkdir(exist_ok=True)
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:128, 0:128] / 127.0
for i in range(512):  # smooth colour gradients: cheap to make, not noise
    a, b, c = rng.uniform(-1, 1, (3, 3))
    img = np.stack([np.clip(127 + 120 * (a[k] * xx + b[k] * yy + c[k] * xx * yy), 0, 255) for k in range(3)], -1)
    Image.fromarray(img.astype(np.uint8)).save(root / f"{i:04d}.png")
PYEOF
timeout "$(lim 100)" $PY -m ddpm train --preset seed --dataset folder:/tmp/faces --batch-size 64 --max-steps 150 \
    --warmup-steps 10 --log-every-steps 25 --checkpoint-every-steps 0 --num-sample-images 0 --no-tensorboard \
    --out /tmp/seed_loop
cp /tmp/seed_loop/metrics.jsonl "$OUT/seed_loop_metrics.jsonl"

step "digits demo end to end"
SECONDS=0
timeout "$(lim 120)" $PY -m ddpm train --preset demo --out /tmp/demo --no-tensorboard
echo "demo wall seconds: $SECONDS"
cp /tmp/demo/metrics.jsonl "$OUT/demo_metrics_h200.jsonl"
SECONDS=0
timeout "$(lim 60)" $PY -m ddpm sample --run /tmp/demo --sampler ddim --sample-steps 50 --num-images 64 \
    --out "$OUT/demo_samples_h200_ddim50.png"
echo "DDIM-50 x 64 images wall seconds (process start included): $SECONDS"

step "torch.compile at 128x128"
timeout "$(lim 120)" $PY benchmarks/bench_levers.py --size seed --device cuda --batch 64 --repeats 10 \
    --variants "bf16,bf16 + channels_last,bf16 + compile,bf16 + channels_last + compile" --out "$OUT/compile_h200.md"
step done
} 2>&1 | tee "$OUT/gpu_check.log"
