"""What the training loop costs on top of the bare model step, measured step by step in one process.

    .venv/bin/python benchmarks/bench_loop.py                           # the demo preset, 300 steps
    .venv/bin/python benchmarks/bench_loop.py --preset wide --steps 100 # 32x32x3, widths 64/128/128/128
    python benchmarks/bench_loop.py --device cuda --preset seed --batch-size 64

The real `train_diffusion` loop runs (no checkpoints or grids in between, metrics.jsonl written to
a temporary folder), and before each of its steps the benchmark runs one bare step of a second,
identical U-Net: bf16 autocast forward, MSE against fixed random noise, backward, fused AdamW
(bench_unet.train_step), on a fixed random batch. Every loop step is thus paired with a bare step
taken moments before, so machine noise hits both alike. Three times per step:

- bare:    the bare step;
- trainer: Trainer.train_step() (data, random draws, loss, backward, loss statistics, gradient
           norm and clipping, non-finite check, AdamW, EMA);
- loop:    from the end of one train_step() to the end of the next, minus the bare step put in
           between: train_step() plus the loop's own bookkeeping (progress bar, logging, signals).

Reported: medians per step and the loop / bare ratio (the issue's target is >= 0.95), then the
trainer's extras timed alone (median of 50 calls each) to say where a gap comes from. On a GPU
every time is taken between synchronisations, so neither side overlaps its queueing with the
previous step's kernels: the ratio compares the work each step does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from bench_unet import synced_time, train_step

from ddpm.config import PRESETS, DiffusionConfig, ModelConfig
from ddpm.runtime import use_channels_last
from ddpm.training import loop as loop_module
from ddpm.training.trainer import Trainer, adamw, ema_update
from ddpm.unet import UNet

# The wider model the issue compares with diffusers: 32x32x3, widths 64/128/128/128, attention at
# 16x16 and in the bottleneck, the official embedding placement (8.95M parameters).
WIDE = (dict(dataset_name="folder:", batch_size=16, learning_rate=2e-4, timesteps_diff=1000),
        dict(lowest_resolution_size=4, dim_multiply=(1, 2, 2, 2), transformer_layers=(1,), base_dim=64,
             image_channels=3, dropout=0.0, embedding_placement="after_conv1"))


def image_folder(root: Path, size: int, n: int = 256) -> str:
    """n smooth random RGB images (PNG) for the presets without built-in data (also gpu_check.sh's),
    as a dataset name."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for i in range(n):
        a, b, c = rng.uniform(-1, 1, (3, 3))
        img = np.stack([np.clip(127 + 120 * (a[k] * xx + b[k] * yy + c[k] * xx * yy), 0, 255) for k in range(3)], -1)
        Image.fromarray(img.astype(np.uint8)).save(root / f"{i:04d}.png")
    return f"folder:{root}"


def configs(preset: str, tmp: Path, args: argparse.Namespace) -> tuple[DiffusionConfig, ModelConfig]:
    diff, model = WIDE if preset == "wide" else PRESETS[preset]
    mcfg = ModelConfig(**model)
    diff = dict(diff)
    if not diff["dataset_name"].startswith("digits"):
        diff["dataset_name"] = image_folder(tmp / "images", mcfg.image_size)
        diff["cache_dir"] = str(tmp / "cache")
    if args.batch_size:
        diff["batch_size"] = args.batch_size
    cfg = DiffusionConfig(**{**diff, "max_steps": args.warmup + args.steps, "log_every_steps": 50,
                             "checkpoint_every_steps": 0, "num_sample_images": 0, "tensorboard": False,
                             "device": args.device, "precision": args.precision, "out_dir": str(tmp / "run")})
    return cfg, mcfg


def measure(cfg: DiffusionConfig, mcfg: ModelConfig, warmup: int) -> dict:
    """Run train_diffusion with a bare step before each of its steps; per-step times in ms."""
    device = torch.device("cuda" if cfg.device == "cuda" else "cpu")
    dtype = None if cfg.precision == "fp32" else torch.bfloat16
    torch.manual_seed(0)
    bare_model = UNet(mcfg).to(device)
    if use_channels_last(cfg.channels_last, device, dtype, mcfg.image_size):  # the layout the Trainer picks
        bare_model = bare_model.to(memory_format=torch.channels_last)
    bare_opt = adamw(bare_model.parameters(), cfg.learning_rate, cfg.weight_decay, device)
    shape = (cfg.batch_size, mcfg.image_channels, mcfg.image_size, mcfg.image_size)
    x, noise = torch.randn(shape, device=device), torch.randn(shape, device=device)
    t = torch.randint(0, cfg.timesteps_diff, (cfg.batch_size,), device=device)
    times: dict[str, list[float]] = {"bare": [], "trainer": [], "loop": []}
    last_end: list[float] = []

    class Timed(Trainer):
        def train_step(self):  # noqa: D102 - the benchmark's wrapper
            t0 = synced_time(device)
            train_step(bare_model, bare_opt, x, t, noise, dtype)
            t1 = synced_time(device)
            out = super().train_step()
            t2 = synced_time(device)
            if last_end and self.step > warmup:
                times["bare"].append(t1 - t0)
                times["trainer"].append(t2 - t1)
                times["loop"].append((t0 - last_end[0]) + (t2 - t1))  # bookkeeping before the bare step + the step
            last_end[:] = [t2]
            holder["trainer"] = self
            return out

    holder: dict = {}
    real, loop_module.Trainer = loop_module.Trainer, Timed
    try:
        run = loop_module.train_diffusion(cfg, mcfg)
    finally:
        loop_module.Trainer = real
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    means = {k: 1000 * statistics.fmean(v) for k, v in times.items()}
    return {"median_ms": ms, "mean_ms": means, "steps": len(times["bare"]),
            "logged_images_per_s": [round(r["images_per_s"], 1) for r in rows],
            "parts_ms": parts(holder["trainer"], device)}


def parts(trainer: Trainer, device: torch.device) -> dict[str, float]:
    """The trainer's extras over the bare step, each timed alone (median ms of 50 calls)."""
    def timed(fn, n: int = 50) -> float:
        fn()
        out = []
        for _ in range(n):
            t0 = synced_time(device)
            fn()
            out.append(synced_time(device) - t0)
        return 1000 * statistics.median(out)

    params = [p for p in trainer.model.parameters() if p.grad is not None]
    grads = [p.grad for p in params]
    B, g = trainer.cfg.batch_size, trainer.generator
    shape = (B, trainer.mcfg.image_channels, trainer.mcfg.image_size, trainer.mcfg.image_size)
    t = torch.randint(0, 100, (B,), device=device)
    per_image = torch.rand(B, device=device)
    buckets = torch.zeros(4, device=device)
    return {
        "data batch (index, to float)": timed(trainer._next_batch),
        "random draws (t, noise)": timed(lambda: (torch.randint(0, 100, (B,), device=device, generator=g),
                                                 torch.randn(shape, device=device, generator=g))),
        "gradient norm": timed(lambda: torch.nn.utils.get_total_norm(grads)),
        "EMA update": timed(lambda: ema_update(trainer.ema, trainer.model, 0.999)),
        "loss statistics": timed(lambda: (buckets.index_add_(0, t % 4, per_image),
                                          buckets.index_add_(0, t % 4, torch.ones_like(per_image)))),
    }


def markdown(result: dict, preset: str, command: str, cfg: DiffusionConfig, mcfg: ModelConfig) -> str:
    ms, mean = result["median_ms"], result["mean_ms"]
    lines = [f"Command: `{command}`  ",
             f"Preset {preset}: {mcfg.image_size}x{mcfg.image_size}x{mcfg.image_channels}, batch {cfg.batch_size}, "
             f"{cfg.device} ({cfg.precision}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
             f"{result['steps']} paired steps after warm-up.", "",
             "| per step | median ms | mean ms | images/s (median) | / bare |", "|---|---|---|---|---|"]
    for k in ("bare", "trainer", "loop"):
        lines.append(f"| {k} | {ms[k]:.1f} | {mean[k]:.1f} | {cfg.batch_size / ms[k] * 1000:.0f} | "
                     f"{ms['bare'] / ms[k]:.3f} |")
    lines += ["", "The trainer's extras, each timed alone:", "", "| part | ms | % of the bare step |", "|---|---|---|"]
    for k, v in result["parts_ms"].items():
        lines.append(f"| {k} | {v:.2f} | {100 * v / ms['bare']:.1f}% |")
    lines += ["", f"images/s of the loop's own log lines (metrics.jsonl): {result['logged_images_per_s']}", ""]
    return "\n".join(lines)


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", choices=["demo", "wide", "seed"])
    parser.add_argument("--steps", type=int, default=300, help="measured steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=0, help="override the preset's batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--out", default="", help="write the table here (markdown) and the numbers beside it (.json)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg, mcfg = configs(args.preset, Path(tmp), args)
        result = measure(cfg, mcfg, args.warmup)
    text = markdown(result, args.preset, "python benchmarks/bench_loop.py " + " ".join(sys.argv[1:]), cfg, mcfg)
    print(text)
    if args.out:
        Path(args.out).write_text("# The training loop against the bare model step\n\n" + text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
