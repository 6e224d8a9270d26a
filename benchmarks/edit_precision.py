"""Editing precision and cost on a trained digits model: the DDIM inversion round trip in fp32 and
bf16, and the seconds a `ddpm edit inpaint` network call takes, for docs/edit_precision.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edit_precision.py --run runs/demo --num-images 32 \\
        --out docs/edit_precision.md

Round trip: held-out digits -> ddim_invert -> x_T -> ddim_decode, as `ddpm edit invert` and the end
frames of `ddpm edit interpolate` run it, with the network under autocast to each precision. The
error is measured on the [-1, 1] range against the input; "label kept" is how often the digits
classifier reads the reconstruction as the input's digit. bf16 autocast is only real on a CPU
with AVX512-BF16/AMX (or a CUDA GPU); elsewhere it is emulated and slow, and the numbers still hold.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from ddpm.editing import ddim_decode, ddim_invert, repaint_network_calls
from ddpm.generation import load_model, network
from ddpm.metrics import heldout_digits, train_digits_classifier

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def round_trip_rows(loaded, x: torch.Tensor, y: torch.Tensor, steps_list: list[int]) -> list[str]:
    """One markdown row per (steps, precision): the round trip's error, the latent's drift, label kept."""
    classifier, _ = train_digits_classifier()
    rows, latents = [], {}
    for steps in steps_list:
        for name, dtype in PRECISIONS.items():
            net = network(loaded.model, dtype)
            t0 = time.perf_counter()
            z = ddim_invert(net, loaded.schedule, x, steps)
            rec = ddim_decode(net, loaded.schedule, z, steps)
            seconds = time.perf_counter() - t0
            latents[steps, name] = z
            err = (rec - x).abs()
            with torch.no_grad():
                kept = (classifier(rec.clamp(-1, 1)).argmax(1) == y).float().mean().item()
            drift = (z - latents[steps, "fp32"]).abs().mean().item()
            # Is a saved latent tied to its precision? Decode it with the other one.
            other = network(loaded.model, PRECISIONS["bf16" if name == "fp32" else "fp32"])
            crossed = (ddim_decode(other, loaded.schedule, z, steps) - x).abs().mean().item()
            rows.append(f"| {steps} | {name} | {err.mean():.4f} | {err.amax(dim=(1, 2, 3)).mean():.3f} | "
                        f"{z.std():.3f} | {drift:.4f} | {crossed:.4f} | {kept:.3f} | {seconds:.0f} |")
            print(rows[-1], flush=True)
    return rows


def call_seconds(loaded, batch: int, dtype: torch.dtype | None, repeats: int = 20) -> float:
    """Median seconds of one network call on a batch of `batch` images (after two warm-up calls)."""
    cfg = loaded.model_config
    x = torch.randn(batch, cfg.image_channels, cfg.image_size, cfg.image_size)
    t = torch.full((batch,), loaded.schedule.num_timesteps // 2)
    net = network(loaded.model, dtype)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            net(x, t)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a trained digits run (16x16 grayscale), e.g. runs/demo")
    parser.add_argument("--num-images", type=int, default=32, help="held-out digits to invert (default: 32)")
    parser.add_argument("--steps", default="20,50,200", help="DDIM steps each way (default: 20,50,200; \"\": only the call times)")
    parser.add_argument("--out", help="write the markdown page here")
    args = parser.parse_args()
    loaded = load_model(args.run)
    size = loaded.model_config.image_size
    x, y = heldout_digits()
    x, y = x[: args.num_images], y[: args.num_images]
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    cpu = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, " \
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s)"
    lines = [f"Checkpoint `{loaded.path}` (step {loaded.step}), {len(x)} held-out digits, T = "
             f"{loaded.schedule.num_timesteps}; {cpu}.", "",
             "| DDIM steps each way | precision | mean abs error | max abs error (mean over images) | "
             "std of x_T | mean abs x_T - fp32's | mean abs error, x_T decoded in the other precision | label kept | "
             "seconds |", "|---|---|---|---|---|---|---|---|---|"]
    lines += round_trip_rows(loaded, x, y, [int(s) for s in args.steps.split(",") if s])
    lines += ["", "Seconds per network call (median of 20), and what the `ddpm edit inpaint` defaults cost at T = "
              f"{loaded.schedule.num_timesteps}:", "",
              "| batch | precision | seconds per call | RePaint U = 5, J = 10 | U = 10, J = 5 | U = 1 |",
              "|---|---|---|---|---|---|"]
    T = loaded.schedule.num_timesteps
    for batch in (4, 8):
        for name, dtype in PRECISIONS.items():
            s = call_seconds(loaded, batch, dtype)
            costs = [repaint_network_calls(T, j, u) * s for u, j in ((5, 10), (10, 5), (1, 10))]
            lines.append(f"| {batch} | {name} | {s:.4f} | " + " | ".join(f"{c:.0f} s" for c in costs) + " |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
