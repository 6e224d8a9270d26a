"""How much of a checkpoint's score is the sampling draw, and what its EMA adds: one checkpoint scored
with several sampling seeds, from its EMA weights and from its raw (online) weights.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/score_noise.py \\
        runs/ttq/narrow-1block-eps-minsnr20-decay-4k-s0/checkpoints/step_00004000.pt \\
        runs/ttq/narrow-1block-eps-minsnr20-decay-3k-s0/checkpoints/step_00003000.pt \\
        runs/ttq/narrow-1block-eps-minsnr20-decay-3k-s1/checkpoints/step_00003000.pt --out docs/score_noise.md

Each row draws --samples images with the default sampler (as benchmarks/rescore_checkpoints.py, whose
seed 7 is the first here) and scores them with ddpm eval's digits metrics. Raw weights are scored at the
first seed only (--no-raw: not at all). With two seeds or more, a second table gives each checkpoint's
mean, standard deviation and range over its draws.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from rescore_checkpoints import score  # benchmarks/ is the script's folder, so on sys.path

from ddpm.checkpoint import load_checkpoint, model_from_state
from ddpm.generation import sample_images
from ddpm.metrics import train_digits_classifier
from ddpm.schedule import NoiseSchedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files (RUN/checkpoints/step_*.pt)")
    parser.add_argument("--samples", type=int, default=2000, help="images drawn per row")
    parser.add_argument("--seeds", default="7,8,9", help="comma-separated sampling seeds")
    parser.add_argument("--no-raw", action="store_true", help="score the EMA weights only")
    parser.add_argument("--out", help="markdown table")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    clf, acc = train_digits_classifier()
    draws: dict[str, list[dict]] = {}
    lines = ["| checkpoint | weights | sampling seed | FD-digits | precision | recall |", "|---|---|---|---|---|---|"]
    for path in args.checkpoints:
        state = load_checkpoint(Path(path), "cpu")
        name = f"{Path(path).parents[1].name}@{int(state['step'])}"
        for weights, row_seeds in (("EMA", seeds), ("raw", [] if args.no_raw else seeds[:1])):
            # model_from_state loads the "ema" entry: point it at the raw weights for the second pass.
            model, diff_config, _, _ = model_from_state({**state, "ema": state["ema" if weights == "EMA" else "model"]}, path)
            schedule = NoiseSchedule.from_config(diff_config)
            for seed in row_seeds:
                r = score(sample_images(model, schedule, args.samples, seed=seed, batch_size=250), clf, acc)
                lines.append(f"| {name} | {weights} | {seed} | {r['fd_digits']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} |")
                print(lines[-1], flush=True)
                if weights == "EMA":
                    draws.setdefault(name, []).append(r)
    if len(seeds) > 1:
        lines += ["", f"Over the {len(seeds)} draws of {args.samples} (EMA): mean, standard deviation (range).", "",
                  "| checkpoint | FD-digits | precision | recall |", "|---|---|---|---|"]
        for name, rows in draws.items():
            cells = []
            for key, digits in (("fd_digits", 2), ("precision", 3), ("recall", 3)):
                v = [r[key] for r in rows]
                cells.append(f"{statistics.mean(v):.{digits}f} +- {statistics.stdev(v):.{digits}f} "
                             f"({min(v):.{digits}f}-{max(v):.{digits}f})")
            lines.append(f"| {name} | {' | '.join(cells)} |")
        print("\n".join(lines[-len(draws) - 4:]), flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
