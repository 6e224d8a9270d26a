"""The demo's training step for a few model shapes, side by side (what the smaller demo model saves).

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_demo_shapes.py --precision fp32
    .venv/bin/python benchmarks/bench_demo_shapes.py --precision bf16

Each variant is a real Trainer (the demo preset at the 2020 demo's width, then the variant's overrides) taking its own
train_step(); variants alternate step by step so machine noise hits all alike. Reported: parameters,
the median step time after warm-up, images/s and the speed-up over the first variant (by default the 2020 demo).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ddpm.config import PRESETS, DiffusionConfig, ModelConfig
from ddpm.training.trainer import Trainer

# The demo model until 2026-12-03 (1.68M parameters), the baseline every variant changes one thing of,
# so that the tables in docs/time_to_quality.md stay reproducible whatever the demo preset becomes.
DEMO_2020 = dict(base_dim=32, norm_groups=8, num_res_blocks=2, transformer_layers=(1,))
# NCHW = channels_last off, as every demo trained before channels_last became automatic for fp32 CPUs.
NCHW = dict(channels_last=False)
# The demo model at half width, and with one ResNet block a level.
NARROW = dict(base_dim=16, norm_groups=4)
ONE_BLOCK = dict(NARROW, num_res_blocks=1)
PATCH2 = dict(patch_size=2, dim_multiply=(1, 1), transformer_layers=(0,), base_dim=32, norm_groups=8, num_res_blocks=1)
# name: (ModelConfig overrides, DiffusionConfig overrides) on top of the demo preset and DEMO_2020.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "2020 demo": ({}, NCHW),
    "narrow (base 16; the demo since 2026-12-03)": (NARROW, NCHW),
    "base 24": (dict(base_dim=24, norm_groups=8), NCHW),
    "1 ResNet block a level": (dict(num_res_blocks=1), NCHW),
    "narrow with 1 ResNet block a level": (ONE_BLOCK, NCHW),
    "batch 32": ({}, dict(batch_size=32, **NCHW)),
    "batch 48": ({}, dict(batch_size=48, **NCHW)),
    # channels_last auto (None): NHWC in fp32 on a CPU, NCHW in bf16.
    "narrow + channels_last auto": (NARROW, {}),
    "narrow with 1 ResNet block a level + channels_last auto": (ONE_BLOCK, {}),
    "narrow 1-block with widths 1 1 2 + channels_last auto": (dict(ONE_BLOCK, dim_multiply=(1, 1, 2)), {}),
    "narrow 1-block without 8x8 attention + channels_last auto": (dict(ONE_BLOCK, transformer_layers=()), {}),
    "narrow 1-block with widths 1 1 2 without 8x8 attention + channels_last auto": (
        dict(ONE_BLOCK, dim_multiply=(1, 1, 2), transformer_layers=()), {}),
    "base 12 1-block + channels_last auto": (dict(base_dim=12, norm_groups=4, num_res_blocks=1), {}),
    # 2x2 patches (pixel unshuffle): the 1-block model without its 16x16 level, at 8x8 and 4x4, 32 channels each.
    "patch 2 1-block at 8x8 and 4x4 + channels_last auto": (PATCH2, {}),
    "patch 2 1-block at 8x8 4x4 2x2 + channels_last auto": (
        dict(PATCH2, dim_multiply=(1, 1, 1), lowest_resolution_size=2), {}),
    # "Demo model" below is the 0.29M demo with 8x8 attention (the demo until the fourth session of 2026-12-04;
    # the names stay, docs quote them): "narrow 1-block without 8x8 attention ..." is the demo's shape since.
    # The demo model (narrow, 1 block) in each precision, whatever --precision says: which one `auto`
    # should pick on a CPU with AVX512-BF16 but no AMX (AMD Zen 4), where bf16 is native but has no matrix unit.
    "demo model in fp32 (NHWC as auto)": (ONE_BLOCK, dict(precision="fp32")),
    "demo model in fp32 NCHW": (ONE_BLOCK, dict(precision="fp32", channels_last=False)),
    "demo model in bf16 (NCHW as auto)": (ONE_BLOCK, dict(precision="bf16")),
    "demo model in bf16 NHWC": (ONE_BLOCK, dict(precision="bf16", channels_last=True)),
    # The demo model at other batch sizes, fp32 as the AVX2 target: whether images/s grows with the batch
    # (a per-step cost spread over more images), which would make fewer, larger steps cheaper in wall-clock.
    "demo model in fp32 batch 32": (ONE_BLOCK, dict(precision="fp32", batch_size=32)),
    "demo model in fp32 batch 128": (ONE_BLOCK, dict(precision="fp32", batch_size=128)),
    "demo model in fp32 batch 256": (ONE_BLOCK, dict(precision="fp32", batch_size=256)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="precision of the variants that do not set their own")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (after 5 warm-up steps)")
    parser.add_argument("--variants", help=f"comma-separated, first = the baseline (default: all of {', '.join(VARIANTS)})")
    args = parser.parse_args()
    diff, model = PRESETS["demo"]
    tmp = Path(tempfile.mkdtemp())
    trainers = {}
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    for name in names:
        model_overrides, diff_overrides = VARIANTS[name]
        cfg = DiffusionConfig(**{**diff, "precision": args.precision, **diff_overrides, "num_sample_images": 0,
                                 "tensorboard": False, "out_dir": str(tmp / name.replace(" ", "_")),
                                 "max_steps": 10**6})
        trainers[name] = Trainer(cfg, ModelConfig(**{**model, **DEMO_2020, **model_overrides}))
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for i in range(args.steps + 5):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.train_step()
            if i >= 5:
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times[names[0]])
    print(f"| variant | parameters | batch | precision | step | images/s | step speed-up over {names[0]} |\n"
          "|---|---|---|---|---|---|---|")
    for name, trainer in trainers.items():
        step = statistics.median(times[name])
        params = sum(p.numel() for p in trainer.model.parameters()) / 1e6
        batch = trainer.cfg.batch_size
        print(f"| {name} | {params:.2f}M | {batch} | {trainer.cfg.precision} | {step * 1000:.0f} ms | {batch / step:.0f} "
              f"| {base / step:.2f}x |")


if __name__ == "__main__":
    main()
