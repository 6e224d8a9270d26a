"""Images/s of the data loader alone, from the memory-mapped cache, at 128x128x3.

    .venv/bin/python benchmarks/bench_loader.py --images 20000 --workers 0,2

Builds a synthetic cache file of random uint8 images (the same .npy layout the folder cache
writes), then times the DataLoader the training loop uses (batch sampler over the memory map,
uint8 batches, collate pass-through), including the uint8 -> float conversion. It compares the rate
with an estimate of the seed model's training rate on an H200 (see --mfu), from FLOPs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ddpm import ModelConfig
from ddpm.data import ArrayImages, BatchStream, collate_batch, to_float
from ddpm.unet import UNet

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's dense bf16 tensor-core peak for H100/H200 SXM


def seed_model_train_flops_per_image() -> float:
    """3 x the forward FLOPs of the seed's 128x128 model (backward costs about twice the forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = UNet(ModelConfig())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 128, 128), torch.tensor([10]))
    return 3.0 * counter.get_total_flops()


def loader_rate(images: np.ndarray, batch: int, workers: int, batches: int) -> float:
    ds = ArrayImages(images)
    stream = BatchStream(len(ds), batch, seed=0)
    loader = DataLoader(ds, batch_sampler=stream, num_workers=workers, collate_fn=collate_batch,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    it = iter(loader)
    to_float(next(it))  # start-up (worker spawn) not timed
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(batches):
            x = to_float(next(it))
        times.append(time.perf_counter() - t0)
    assert x.shape == (batch, 3, 128, 128)
    return batch * batches / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000, help="images in the synthetic cache")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30, help="batches per timed pass")
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--mfu", type=float, default=0.5, help="assumed model FLOPs utilisation on the H200")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.npy"
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(args.images, 128, 128, 3))
        rng = np.random.default_rng(0)
        for i in range(0, args.images, 1000):
            arr[i:i + 1000] = rng.integers(0, 256, arr[i:i + 1000].shape, dtype=np.uint8)
        arr.flush()
        del arr
        images = np.load(path, mmap_mode="r")
        rows = []
        for w in (int(v) for v in args.workers.split(",")):
            rate = loader_rate(images, args.batch, w, args.batches)
            rows.append((w, rate))
            print(f"workers={w}: {rate:,.0f} images/s", flush=True)

    flops = seed_model_train_flops_per_image()
    gpu_rate = args.mfu * H200_BF16_DENSE_TFLOPS * 1e12 / flops
    print(f"\nseed model: {flops / 1e9:.1f} GFLOP per training image (3 x forward, torch.utils.flop_counter); "
          f"H200 at {args.mfu:.0%} of {H200_BF16_DENSE_TFLOPS:.0f} TFLOP/s bf16 -> ~{gpu_rate:,.0f} images/s")
    print(f"\n| loader workers | images/s (128x128x3, batch {args.batch}) | x the estimated H200 training rate |")
    print("|---|---|---|")
    for w, rate in rows:
        print(f"| {w} | {rate:,.0f} | {rate / gpu_rate:.1f}x |")


if __name__ == "__main__":
    main()
