"""The demo's training step for a few model shapes, side by side (what a smaller demo model would save).

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_demo_shapes.py --precision fp32
    .venv/bin/python benchmarks/bench_demo_shapes.py --precision bf16

Each variant is a real Trainer (the demo preset with the shape's ModelConfig overrides) taking its own
train_step(); variants alternate step by step so machine noise hits all alike. Reported: parameters,
the median step time after warm-up, images/s and the speed-up over the demo model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ddpm.config import PRESETS, DiffusionConfig, ModelConfig
from ddpm.training.trainer import Trainer

VARIANTS = {
    "demo": {},
    "narrow (base 16)": dict(base_dim=16, norm_groups=4),
    "base 24": dict(base_dim=24, norm_groups=8),
    "1 ResNet block a level": dict(num_res_blocks=1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (after 5 warm-up steps)")
    args = parser.parse_args()
    diff, model = PRESETS["demo"]
    tmp = Path(tempfile.mkdtemp())
    trainers = {}
    for name, overrides in VARIANTS.items():
        cfg = DiffusionConfig(**{**diff, "precision": args.precision, "num_sample_images": 0, "tensorboard": False,
                                 "out_dir": str(tmp / name.replace(" ", "_")), "max_steps": 10**6})
        trainers[name] = Trainer(cfg, ModelConfig(**{**model, **overrides}))
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for i in range(args.steps + 5):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.train_step()
            if i >= 5:
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["demo"])
    batch = diff["batch_size"]
    print(f"| model | parameters | step ({args.precision}) | images/s | speed-up |\n|---|---|---|---|---|")
    for name, trainer in trainers.items():
        step = statistics.median(times[name])
        params = sum(p.numel() for p in trainer.model.parameters()) / 1e6
        print(f"| {name} | {params:.2f}M | {step * 1000:.0f} ms | {batch / step:.0f} | {base / step:.2f}x |")


if __name__ == "__main__":
    main()
