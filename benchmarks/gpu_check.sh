#!/usr/bin/env bash
# Everything this project checks and times on a CUDA GPU, in as few calls as possible (a lent GPU
# is short-lived: plan for about 12 minutes of it in all).
#
#   OUT=/tmp/gpu_out bash benchmarks/gpu_check.sh                    # every part, in this order
#   OUT=/tmp/gpu_out bash benchmarks/gpu_check.sh compile demo       # only some parts
#
# Parts (each under its own time limit, so one that hangs costs only its share; logs in $OUT):
#   tests    pytest -m gpu: CUDA vs float64 CPU, fp32/bf16/fp16 training and resume, NCCL collectives,
#            channels_last and torch.compile training like the plain model                (~80 s)
#   bench    bench_unet.py at 32x32 and 128x128, batch 64: ours vs diffusers, fp32 and bf16  (~40 s)
#   levers   bench_levers.py at 128x128: precisions, channels_last, cudnn.benchmark; bf16 at
#            batch 16 and 256 (is the step bound by the CPU launching kernels?); AdamW kernels (~70 s)
#   graph    the seed model's whole step captured as one CUDA graph, and GroupNorm kept in bf16 under
#            autocast, against plain bf16, at batch 16 and 64 (issue 14, items 2 and 5)        (~60 s)
#   steploop bench_loop.py: the training loop against the bare step at the seed size, batch 16
#            and 64 (the device-side clip / skip / EMA of the trainer)                      (~90 s)
#   compile  torch.compile (default, and reduce-overhead = CUDA graphs) at the seed size, batch 16
#            and 64, one mode per call, with a fresh inductor cache; then batch 16 again in a new
#            process with the cache kept (the compile time a resumed run pays)      (~400-700 s)
#   loop     the real training loop at the seed size on a synthetic 128x128 folder        (~40 s)
#   demo     the digits demo (1,000 steps) on the GPU, then DDIM-50 sampling of 64 images  (~70 s)
# The first H200 run of this script (2026-11-28) is in docs/benchmarks_h200.md. For issue 14, two
# calls (one command may run 10 minutes): `tests graph steploop` (~5 min), then `compile`.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/benchmarks:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 DDPM_CACHE=/tmp/ddpm-cache
PY=${PYTHON:-python3}
T=${GPU_CHECK_TIMEOUT_SCALE:-1}  # multiply every part's time limit
PARTS=${*:-tests graph steploop compile bench levers loop demo}
step() { echo; echo "=== $1 ($(date +%T))"; }
lim() { echo $(( $1 * T )); }
levers() { timeout "$(lim "$1")" $PY benchmarks/bench_levers.py --device cuda "${@:2}"; }

part_tests() {
    timeout "$(lim 180)" $PY -m pytest -q -m gpu -p no:cacheprovider tests/
}

part_bench() {
    timeout "$(lim 150)" $PY benchmarks/bench_unet.py --device cuda --train-batch 64 --repeats 10 \
        --out "$OUT/bench_unet_h200.md"
}

part_levers() {
    levers 90 --size seed --batch 64 --repeats 8 --out "$OUT/levers_seed_b64.md" \
        --variants "fp32,fp32 + tf32,bf16,bf16 + channels_last,bf16 + cudnn_benchmark,bf16 + bf16_groupnorm"
    for b in 16 256; do
        levers 45 --size seed --batch "$b" --repeats 5 --variants "bf16" --out "$OUT/levers_seed_b$b.md"
    done
    levers 45 --size seed --optimizer --repeats 10 | tee "$OUT/optimizer_seed.md"  # default vs foreach vs fused AdamW
}

part_graph() {
    for b in 16 64; do
        levers 60 --size seed --batch "$b" --repeats 10 --out "$OUT/graph_seed_b$b.md" \
            --variants "bf16,bf16 + bf16_groupnorm,bf16 + cuda_graph,bf16 + bf16_groupnorm + cuda_graph"
    done
}

part_steploop() {
    for b in 16 64; do
        timeout "$(lim 60)" $PY benchmarks/bench_loop.py --device cuda --preset seed --batch-size "$b" --steps 100 \
            --out "$OUT/loop_seed_b$b.md" 2>"$OUT/loop_seed_b$b.err"
    done
}

part_compile() {
    # One compile mode per call, so a compilation that outlasts its limit costs only its own row.
    export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
    rm -rf "$TORCHINDUCTOR_CACHE_DIR"
    for b in 16 64; do
        for mode in compile compile_reduce_overhead; do
            levers 150 --size seed --batch "$b" --repeats 10 --out "$OUT/${mode}_seed_b$b.md" --variants "bf16,bf16 + $mode"
        done
    done
    echo "--- batch 16 again, new process, inductor cache kept ($(du -sh "$TORCHINDUCTOR_CACHE_DIR" | cut -f1)):"
    levers 120 --size seed --batch 16 --repeats 10 --out "$OUT/compile_seed_b16_warm.md" \
        --variants "bf16 + compile,bf16 + compile_reduce_overhead"
}

part_loop() {
    $PY -c "from pathlib import Path; import bench_loop; bench_loop.image_folder(Path('/tmp/faces'), 128, 512)"
    timeout "$(lim 100)" $PY -m ddpm train --preset seed --dataset folder:/tmp/faces --batch-size 64 --max-steps 150 \
        --warmup-steps 10 --log-every-steps 25 --checkpoint-every-steps 0 --num-sample-images 0 --no-tensorboard \
        --out /tmp/seed_loop
    cp /tmp/seed_loop/metrics.jsonl "$OUT/seed_loop_metrics.jsonl"
}

part_demo() {
    SECONDS=0
    timeout "$(lim 120)" $PY -m ddpm train --preset demo --max-steps 1000 --out /tmp/demo --no-tensorboard
    echo "demo (1,000 steps) wall seconds: $SECONDS"
    cp /tmp/demo/metrics.jsonl "$OUT/demo_metrics_h200.jsonl"
    SECONDS=0
    timeout "$(lim 60)" $PY -m ddpm sample --run /tmp/demo --sampler ddim --sample-steps 50 --num-images 64 \
        --out "$OUT/demo_samples_h200_ddim50.png"
    echo "DDIM-50 x 64 images wall seconds (process start included): $SECONDS"
}

for part in $PARTS; do
    declare -F "part_$part" >/dev/null || { echo "gpu_check.sh: no part '$part'; parts: tests graph steploop compile bench levers loop demo"; exit 2; }
done
{
step environment
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"
for part in $PARTS; do
    step "$part"
    "part_$part"
done
step done
} 2>&1 | tee "$OUT/gpu_check_$(date +%H%M%S).log"
