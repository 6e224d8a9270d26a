"""Samplers x steps against the digits metric and wall time per image, for a trained digits run.

    make demo && .venv/bin/python benchmarks/sampler_table.py --run runs/demo --num-images 500

Prints a markdown table (the one in docs/results.md) and writes it with --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ddpm.checkpoint import load_source, model_from_state
from ddpm.generate import sample_images
from ddpm.images import save_grid
from ddpm.metrics import digits_score, train_digits_classifier
from ddpm.runtime import resolve_precision
from ddpm.schedule import NoiseSchedule

CONFIGS = [  # (sampler, steps, variance or eta)
    ("ddpm", None, "beta"),
    ("ddpm", None, "beta_tilde"),
    ("ddim", 10, 0.0),
    ("ddim", 20, 0.0),
    ("ddim", 50, 0.0),
    ("ddim", 100, 0.0),
    ("ddim", 50, 1.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder of a digits model")
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument("--grids", help="folder for one 64-image grid per configuration")
    args = parser.parse_args()

    state, path = load_source(None, args.run)
    model, dcfg, _, step = model_from_state(state, path)
    schedule = NoiseSchedule.from_config(dcfg)
    dtype = resolve_precision(args.precision, torch.device("cpu"))
    classifier, accuracy = train_digits_classifier()
    T = schedule.num_timesteps
    rows = [f"Checkpoint `{path}` (step {step}), {args.num_images} images per row, seed 0, "
            f"{'bf16 autocast' if dtype else 'fp32'}, torch threads {torch.get_num_threads()}; digits classifier "
            f"held-out accuracy {accuracy:.3f}.", "",
            "| sampler | steps | variance / eta | FD-digits | KD-digits x1000 | confidence | classes covered | ms per image |",
            "|---|---|---|---|---|---|---|---|"]
    for sampler, steps, knob in CONFIGS:
        kwargs = dict(sampler=sampler, num_steps=steps, autocast_dtype=dtype, batch_size=250)
        if sampler == "ddpm":
            kwargs["variance"] = knob
        else:
            kwargs["eta"] = knob
        t0 = time.perf_counter()
        x = sample_images(model, schedule, args.num_images, seed=0, **kwargs)
        ms = 1000 * (time.perf_counter() - t0) / args.num_images
        s = digits_score(x, classifier, accuracy)
        label = "beta_tilde" if knob == "beta_tilde" else ("beta" if knob == "beta" else f"eta={knob:g}")
        rows.append(f"| {sampler.upper()} | {steps or T} | {label} | {s.fd_digits:.2f} | {s.kd_digits:.2f} | "
                    f"{s.confidence:.3f} | {s.coverage}/10 | {ms:.1f} |")
        print(rows[-1], flush=True)
        if args.grids:
            save_grid(x[:64], Path(args.grids) / f"{sampler}_{steps or T}_{label}.png")
    # Reference: real digits scored the same way (the floor the samples can reach).
    from ddpm.data import load_digits_dataset

    real = load_digits_dataset(model.config.image_size, model.config.image_channels).images
    idx = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[: args.num_images]
    s = digits_score(real[idx], classifier, accuracy)
    rows.append(f"| real digits (same N) | - | - | {s.fd_digits:.2f} | {s.kd_digits:.2f} | {s.confidence:.3f} | "
                f"{s.coverage}/10 | - |")
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
