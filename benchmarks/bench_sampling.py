"""Wall time for 64 images with DDIM, 50 steps, at 32x32: ours against diffusers' DDIMPipeline.

    .venv/bin/python benchmarks/bench_sampling.py          # needs `pip install -e '.[bench]'`

Both use the same U-Net configuration (bench_unet.SIZES["cpu"], equal parameters) and T = 1000
with the linear schedule; weights are random (speed does not depend on them). Ours runs in fp32
and with its default bf16 autocast; diffusers' pipeline runs in its default fp32. Alternating
runs, medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_unet import SIZES, build

from ddpm.generation import sample_images
from ddpm.schedule import NoiseSchedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from diffusers import DDIMPipeline, DDIMScheduler

    cfg = SIZES["cpu"]["config"]
    ours = build("ours", cfg).net.eval()
    theirs = build("theirs", cfg).net.eval()
    schedule = NoiseSchedule(1000, 1e-4, 0.02)
    pipe = DDIMPipeline(unet=theirs, scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear"))
    pipe.set_progress_bar_config(disable=True)

    runs = {
        "ours, fp32": lambda: sample_images(ours, schedule, args.images, sampler="ddim", num_steps=args.steps,
                                            batch_size=args.images),
        "ours, bf16 autocast (default)": lambda: sample_images(ours, schedule, args.images, sampler="ddim",
                                                               num_steps=args.steps, batch_size=args.images,
                                                               autocast_dtype=torch.bfloat16),
        "diffusers DDIMPipeline, fp32 (default)": lambda: pipe(batch_size=args.images, num_inference_steps=args.steps,
                                                               eta=0.0, output_type="np",
                                                               generator=torch.Generator().manual_seed(0)),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["diffusers DDIMPipeline, fp32 (default)"])
    print(f"`python benchmarks/bench_sampling.py`: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          "equal U-Nets (bench_unet.py's 32x32 size), random weights, alternating runs.\n")
    print(f"| {args.images} images, DDIM {args.steps} steps, 32x32 | seconds (median of {args.repeats}) | "
          "speed-up over diffusers |")
    print("|---|---|---|")
    for name, v in times.items():
        print(f"| {name} | {statistics.median(v):.2f} | {base / statistics.median(v):.2f}x |")


if __name__ == "__main__":
    main()
