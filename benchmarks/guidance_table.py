"""Classifier-free guidance on the class-conditional digits demo: accuracy against quality and diversity.

    ddpm train --preset demo --class-conditional --out runs/demo-cond
    .venv/bin/python benchmarks/guidance_table.py --run runs/demo-cond --num-images 1000 \\
        --out docs/guidance_table.md --figure docs/figures/demo_cond_rows.png

For each guidance scale w: num-images samples, the same number of each digit, scored for how
often the digits classifier reads the digit asked for, and pooled FD-digits / precision / recall
against the reference digits. The figure has one row per digit at the run's own guidance_scale.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ddpm.generation import load_model, rows_of_classes, sample_images
from ddpm.images import save_grid
from ddpm.metrics import class_accuracy, digits_score, train_digits_classifier
from ddpm.runtime import resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder of a class-conditional digits model")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--scales", default="0,1,2,3,5", help="comma-separated guidance scales")
    parser.add_argument("--sampler", default=None, help="sampler (default: the run's)")
    parser.add_argument("--sample-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument("--figure", help="a grid with one row per digit at the run's guidance")
    args = parser.parse_args()

    loaded = load_model(args.run)
    sampler, steps, clip, options = loaded.resolve(args.sampler, args.sample_steps, None, {})
    classifier, accuracy = train_digits_classifier()
    y, _ = rows_of_classes(args.num_images, range(loaded.model_config.num_classes))
    dtype = resolve_precision("auto", torch.device("cpu"))
    rows = [f"Checkpoint `{loaded.path}` (step {loaded.step}), {len(y)} images per row ({len(y) // 10} of each "
            f"digit), {sampler} with {steps or 'its default'} calls, seed {args.seed}, {'bf16' if dtype else 'fp32'}.",
            "", "| guidance w | digit asked for (classifier) | worst digit | FD-digits | precision | recall | seconds |",
            "|---|---|---|---|---|---|---|"]
    for w in [float(v) for v in args.scales.split(",")]:
        t0 = time.perf_counter()
        x = sample_images(loaded.model, loaded.schedule, len(y), seed=args.seed, sampler=sampler, num_steps=steps,
                          clip_x0=clip, batch_size=250, autocast_dtype=dtype, y=y, guidance_scale=w, **options)
        seconds = time.perf_counter() - t0
        acc = class_accuracy(x, y, classifier)
        worst = min(acc["per_class"].items(), key=lambda kv: kv[1])
        s = digits_score(x, classifier, accuracy)
        rows.append(f"| {w:g} | {acc['overall']:.3f} | {worst[0]}: {worst[1]:.2f} | {s.fd_digits:.2f} | "
                    f"{s.precision:.3f} | {s.recall:.3f} | {seconds:.0f} |")
        print(rows[-1], flush=True)
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.figure:
        y_fig, per_row = rows_of_classes(100, range(loaded.model_config.num_classes))
        x = sample_images(loaded.model, loaded.schedule, len(y_fig), seed=args.seed, sampler=sampler, num_steps=steps,
                          clip_x0=clip, batch_size=250, autocast_dtype=dtype, y=y_fig,
                          guidance_scale=loaded.diffusion_config.guidance_scale, **options)
        print(f"figure {save_grid(x, args.figure, nrow=per_row)}")


if __name__ == "__main__":
    main()
