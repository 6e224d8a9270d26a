"""Time to quality: train the demo under each recipe and report when its samples first reach
the quality of the `today` recipe (the 2020 demo), in steps and in training wall-clock.

    .venv/bin/python benchmarks/time_to_quality.py --out docs/time_to_quality.md \\
        --json docs/time_to_quality.json --figure docs/figures/time_to_quality.png
    # as a CPU without AMX/AVX-512 trains (fp32 on AVX2):
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/time_to_quality.py --precision fp32 ...
    # screening: short runs of a few recipes, one seed
    .venv/bin/python benchmarks/time_to_quality.py --recipes today,v-minsnr --seeds 0 --max-steps 1500 ...

Each run is `ddpm train --preset demo` with the 2020 demo's shape and schedule spelled out (TODAY below),
then the recipe's flags, and `--eval-every 250` (the EMA model
draws --eval-samples images with the default sampler; FD-digits, precision and recall go to its
metrics.jsonl). Runs land in --runs/<recipe>-s<seed> and resume, so an interrupted benchmark picks
up where it stopped; the tables are rewritten after every run. The target is the worst final
FD-digits and precision of the `today` recipe over its seeds (its seed spread): a recipe reaches it
at the first evaluation whose FD-digits is at or below the one and precision at or above the other. Wall-clock is training time (`train_s`), evaluations
excluded, so that the evaluation cost does not count against a recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# The demo preset as it was when this benchmark began (the 2020 recipe: base width 32, two ResNet blocks a
# level, constant learning rate, uniform weighting, linear schedule, 4,000 steps), every field the preset sets spelled out
# (tests/test_cli.py checks), so that every recipe stays what it was whatever the preset becomes. channels_last is left to
# its auto setting: it changes the speed of fp32 runs, not what they learn (tests/test_train.py).
TODAY = ["--base-dim", "32", "--norm-groups", "8", "--num-res-blocks", "2", "--transformer-layers", "1", "--lr-decay",
         "none", "--max-steps", "4000", "--loss-weighting", "uniform", "--snr-gamma", "5", "--beta-schedule", "linear",
         "--learning-rate", "1e-3", "--batch-size", "64", "--timesteps-diff", "200", "--warmup-steps", "200",
         "--ema-decay", "0.999", "--dim-multiply", "1,2,2", "--lowest-resolution-size", "4", "--dropout", "0",
         "--image-channels", "1"]
# Flags the recipes below build on: the demo model at half width, with one ResNet block a level, and a learning
# rate falling linearly to 0 at a run of n steps.
NARROW = ["--base-dim", "16", "--norm-groups", "4"]
ONE_BLOCK = [*NARROW, "--num-res-blocks", "1"]
# The demo's weighting since the fourth session of 2026-12-03.
MIN_SNR_20 = ["--loss-weighting", "min-snr", "--snr-gamma", "20"]
PATCH2 = ["--patch-size", "2", "--dim-multiply", "1,1", "--transformer-layers", "0", "--base-dim", "32",
          "--norm-groups", "8", "--num-res-blocks", "1"]


def decay(steps: int) -> list[str]:
    """--lr-decay linear over a run of `steps` steps."""
    return ["--lr-decay", "linear", "--max-steps", str(steps)]


# name -> extra `ddpm train` flags on top of --preset demo and TODAY (a later flag wins).
RECIPES: dict[str, list[str]] = {
    "today": [],
    "v": ["--prediction", "v"],
    "v-minsnr": ["--prediction", "v", "--loss-weighting", "min-snr"],
    "eps-minsnr": ["--loss-weighting", "min-snr"],
    "v-softminsnr": ["--prediction", "v", "--loss-weighting", "soft-min-snr"],
    "cosine-eps": ["--beta-schedule", "cosine"],
    "cosine-v-minsnr": ["--beta-schedule", "cosine", "--prediction", "v", "--loss-weighting", "min-snr"],
    "cosine-v-minsnr-ztsnr": ["--beta-schedule", "cosine", "--zero-terminal-snr", "--prediction", "v",
                              "--loss-weighting", "min-snr"],
    # The demo model at half width (~0.42M parameters): ~3x cheaper steps.
    "v-minsnr-narrow": ["--prediction", "v", "--loss-weighting", "min-snr", *NARROW],
    # Learning rate falling linearly to 0 at the run's end (--lr-decay linear), at shorter lengths.
    "decay-2k": decay(2000),
    "narrow-decay-3k": [*NARROW, *decay(3000)],
    "narrow-decay-4k": [*NARROW, *decay(4000)],
    # Toward the 10-minute fp32 AVX2 target from the narrow demo: a doubled peak learning rate at 3,000 steps,
    # and one ResNet block a level (two going up) at 4,000.
    "narrow-decay-3k-lr2x": [*NARROW, *decay(3000), "--learning-rate", "2e-3"],
    "narrow-1block-decay-4k": [*ONE_BLOCK, *decay(4000)],
    # The same at 5,000 steps: still ~2.9x cheaper than the 2020 demo, to win back the precision that 4,000 lose.
    "narrow-1block-decay-5k": [*ONE_BLOCK, *decay(5000)],
    # Cheaper still, toward the 10-minute AVX2 target (bench_demo_shapes.py: 1.22x and 1.39x the 1-block step):
    # the 8x8 level at 16 channels instead of 32, and that without its attention.
    "narrow-1block-112-decay-5k": [*ONE_BLOCK, "--dim-multiply", "1,1,2", *decay(5000)],
    "narrow-1block-112-noattn-decay-5k": [*ONE_BLOCK, "--dim-multiply", "1,1,2", "--transformer-layers", "",
                                          *decay(5000)],
    # Fewer steps for the demo's shape: v-prediction with min-SNR weighting on the one-block model at 4,000 steps
    # (eps at 4,000: precision 0.830 on average, short of 5,000's 0.852).
    "narrow-1block-v-minsnr-decay-4k": [*ONE_BLOCK, "--prediction", "v", "--loss-weighting", "min-snr", *decay(4000)],
    # v-prediction with uniform weighting: its loss weighs the noisiest steps more than eps and min-SNR do
    # (x0-error times SNR + 1, against SNR and min(SNR, 5)); to see whether min-SNR is what costs recall.
    "narrow-1block-v-decay-4k": [*ONE_BLOCK, "--prediction", "v", *decay(4000)],
    # eps with min-SNR: the same weighting of the x0 error as v + min-SNR (min(SNR, 5)), with the eps output whose
    # recall the v runs lose.
    "narrow-1block-eps-minsnr-decay-4k": [*ONE_BLOCK, "--loss-weighting", "min-snr", *decay(4000)],
    # The same with gamma 20: min-SNR-5 trades recall for precision (0.900 / 0.912 against eps's 0.920 / 0.929);
    # a higher gamma spares more of the low-noise steps, to look for a point that keeps both.
    "narrow-1block-eps-minsnr20-decay-4k": [*ONE_BLOCK, *MIN_SNR_20, *decay(4000)],
    # The demo since the fourth session of 2026-12-03 is the recipe above; toward the 10-minute AVX2 target, the
    # same at 3,000 steps.
    "narrow-1block-eps-minsnr20-decay-3k": [*ONE_BLOCK, *MIN_SNR_20, *decay(3000)],
    # Between the two (fifth session of 2026-12-03): 3,000 steps end at precision 0.819 / 0.820; their raw
    # (non-EMA) weights score 0.827 / 0.829, which looked like EMA lag (it was not: the raw weights score higher
    # at 4,000 steps too). With its warm-up the decay at step s is min(0.999, (1 + s) / (10 + s)), 0.997 at
    # 3,000 (a ~230-step half-life). 3,500 steps, and 3,000 with the decay capped at 0.995 from step ~1,800 on
    # (a ~140-step half-life). None of these, nor stratified t below, reached the 2020 demo's precision
    # (docs/time_to_quality.md, fifth session).
    "narrow-1block-eps-minsnr20-decay-3500": [*ONE_BLOCK, *MIN_SNR_20, *decay(3500)],
    "narrow-1block-eps-minsnr20-decay-3k-ema995": [*ONE_BLOCK, *MIN_SNR_20, *decay(3000), "--ema-decay", "0.995"],
    # And 3,000 steps with stratified timesteps (--timestep-sampling stratified): each batch spans the noise
    # levels evenly, so the loss's gradient varies less from step to step.
    "narrow-1block-eps-minsnr20-decay-3k-strat": [*ONE_BLOCK, *MIN_SNR_20, *decay(3000), "--timestep-sampling",
                                                  "stratified"],
    "narrow-1block-eps-minsnr20-decay-3500-strat": [*ONE_BLOCK, *MIN_SNR_20, *decay(3500), "--timestep-sampling",
                                                    "stratified"],
    # Adam's beta2 at 0.99 (first session of 2026-12-04; the 3k one ran: no gain, the 4k one is defined, not run):
    # the gradient norm falls ~25x over the demo (1.0 at step
    # 100, 0.04 at 4,000), and at beta2 0.999 the squared-gradient average remembers the large early gradients for
    # ~1,000 steps, holding the step size down through much of a short run; 0.99 forgets them in ~100.
    "narrow-1block-eps-minsnr20-decay-3k-b2-99": [*ONE_BLOCK, *MIN_SNR_20, *decay(3000), "--adam-beta2", "0.99"],
    "narrow-1block-eps-minsnr20-decay-4k-b2-99": [*ONE_BLOCK, *MIN_SNR_20, *decay(4000), "--adam-beta2", "0.99"],
    # 2x2 patches (--patch-size 2): the one-block model without its 16x16 level, at 8x8 and 4x4 with 32
    # channels each, attention at 8x8 and in the middle; 0.50x the FLOPs of a training step (0.30M parameters,
    # as many as the demo's 0.29M).
    "patch2-decay-5k": [*PATCH2, *decay(5000)],
    # Half the images per step (same 4,000 steps): a step ~1.9x cheaper on fp32 AVX2 at the same images/s.
    "batch32": ["--batch-size", "32"],
    # Never run before the second session of 2026-12-04: the cosine schedule on the demo's recipe, and min-SNR at
    # gamma 10 (between 5, which bought precision with recall, and the demo's 20) at 3,000 steps. Results: cosine
    # reaches the precision sooner but scored worse FD-digits (the sampler's spacing, it turned out: fixed in the third
    # session); gamma 10 no better than 20 (docs/time_to_quality.md).
    "narrow-1block-eps-minsnr20-cosine-decay-4k": [*ONE_BLOCK, *MIN_SNR_20, *decay(4000), "--beta-schedule", "cosine"],
    # The cosine run scored precision 0.828 at its step 3,000 (the demo: 0.798): the same at 3,000 steps.
    "narrow-1block-eps-minsnr20-cosine-decay-3k": [*ONE_BLOCK, *MIN_SNR_20, *decay(3000), "--beta-schedule", "cosine"],
    # And with uniform weighting (Nichol & Dhariwal's setting): whether min-SNR is what costs the cosine runs FD-digits.
    "narrow-1block-eps-cosine-decay-3k": [*ONE_BLOCK, *decay(3000), "--beta-schedule", "cosine"],
    # A doubled peak learning rate on the demo's recipe at 3,000 steps (2e-3 trained as well as 1.4e-3 at batch 128).
    # Result: precision 0.811 / 0.819, no better than 1e-3 (docs/time_to_quality.md).
    "narrow-1block-eps-minsnr20-decay-3k-lr2x": [*ONE_BLOCK, *MIN_SNR_20, *decay(3000), "--learning-rate", "2e-3"],
    "narrow-1block-eps-minsnr10-decay-3k": [*ONE_BLOCK, "--loss-weighting", "min-snr", "--snr-gamma", "10",
                                            *decay(3000)],
    # Cheaper images instead of fewer (second session of 2026-12-04): the demo without its 8x8 attention (the
    # bottleneck's stays), a 1.19x faster fp32 step as AVX2 (bench_demo_shapes.py); with widths [1,1,2] dropping it
    # cost nothing (third session of 2026-12-03, one seed). Result: precision as the demo's, recall ~0.007 lower
    # over seven runs (~0.005 in each of two sampling draws of six); not taken (docs/time_to_quality.md).
    "narrow-1block-eps-minsnr20-noattn-decay-4k": [*ONE_BLOCK, *MIN_SNR_20, *decay(4000), "--transformer-layers", ""],
    # Twice the batch for half the steps (second session of 2026-12-04): the same 256,000 images as the demo, in
    # 2,000 steps. A diffusion loss's gradient is noisy (each image draws its own t and noise), so a larger batch
    # should buy nearly a step's worth of progress per step, and the demo's step does ~1.1x more images/s at 128
    # (bench_demo_shapes.py, fp32 as AVX2). Peak lr scaled linearly (2e-3) and by the square root (1.4e-3); the
    # warm-up kept in images (100 steps). The EMA's warm-up, min(decay, (1 + s) / (10 + s)), keeps its half-life in
    # images by itself (0.9955 at step 2,000: 154 steps of 128, as 0.99775 at 4,000 is 308 of 64), so the
    # --ema-decay 0.998 given here never binds. Result: precision as the demo's,
    # recall 0.007 lower on average over six runs (docs/time_to_quality.md); not taken.
    "narrow-1block-eps-minsnr20-b128-2k": [*ONE_BLOCK, *MIN_SNR_20, *decay(2000), "--batch-size", "128",
                                           "--learning-rate", "2e-3", "--warmup-steps", "100", "--ema-decay", "0.998"],
    "narrow-1block-eps-minsnr20-b128-2k-lr14": [*ONE_BLOCK, *MIN_SNR_20, *decay(2000), "--batch-size", "128",
                                                "--learning-rate", "1.4e-3", "--warmup-steps", "100",
                                                "--ema-decay", "0.998"],
    # Between the two schedules (third session of 2026-12-04): cosine holds more signal than the demo's
    # linear betas at every mid t (log-SNR -0.06 against -2.54 at t = 100 of 200), reached the precision sooner
    # and drew worse FD-digits. Shifting cosine's log-SNR down by 1 or 2 (--schedule-shift, simple diffusion's
    # knob) puts it between them: -2 follows the linear schedule's log-SNR to t ~ 100, with more signal above.
    # Result: more noise brings back the linear schedule's slower precision; neither beats plain cosine.
    "narrow-1block-eps-minsnr20-cosine-shift-1-decay-3k": [*ONE_BLOCK, *MIN_SNR_20, *decay(3000), "--beta-schedule",
                                                          "cosine", "--schedule-shift", "-1"],
    "narrow-1block-eps-minsnr20-cosine-shift-2-decay-3k": [*ONE_BLOCK, *MIN_SNR_20, *decay(3000), "--beta-schedule",
                                                          "cosine", "--schedule-shift", "-2"],
    # The cosine schedule's FD-digits penalty was the default sampler's: its log-SNR spacing spread 9 of 20 steps
    # among t = 191..199, where the clipped last beta drops the log-SNR to -16.6; spaced from -10.5 since (third
    # session of 2026-12-04), the 3,000-step cosine runs beat the demo's precision at its FD-digits; recall over six
    # draws and eight runs 0.003 +- 0.002 lower: the demo for part of the fourth session. At 2,000 steps precision
    # falls short.
    "narrow-1block-eps-minsnr20-cosine-decay-2k": [*ONE_BLOCK, *MIN_SNR_20, *decay(2000), "--beta-schedule", "cosine"],
    # The demo without its 8x8 attention, re-scored over six draws (fourth session of 2026-12-04), lost less than
    # the two draws said: recall and precision 0.003 +- 0.002 each. Whether it stacks on the cosine demo. Result:
    # yes, within the rule set before scoring (recall 0.0037 below the linear demo's, 0.0007 below cosine with
    # attention; precision higher): the demo since the fourth session.
    "narrow-1block-eps-minsnr20-cosine-noattn-decay-3k": [*ONE_BLOCK, *MIN_SNR_20, *decay(3000), "--beta-schedule",
                                                          "cosine", "--transformer-layers", ""],
}
# The recipe `--preset demo` is (since the fourth session of 2026-12-04; tests/test_cli.py holds them equal).
DEMO_RECIPE = "narrow-1block-eps-minsnr20-cosine-noattn-decay-3k"


def eval_rows(run: Path) -> list[dict]:
    """The quality-evaluation rows of a run's metrics.jsonl (a truncated last line is skipped)."""
    rows = []
    path = run / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "fd_digits" in row:
                rows.append(row)
    return rows


def train(recipe: str, seed: int, args: argparse.Namespace) -> Path:
    """Train (or resume) one recipe and seed; returns its run folder."""
    run = Path(args.runs) / f"{recipe}-s{seed}"
    cmd = [sys.executable, "-m", "ddpm", "train", "--preset", "demo", "--out", str(run), "--resume", "--seed", str(seed),
           "--eval-every", str(args.eval_every), "--eval-samples", str(args.eval_samples), "--precision", args.precision,
           "--num-sample-images", "64", "--no-tensorboard", *TODAY, *RECIPES[recipe]]
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    print(f"  {recipe} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    return run


def summarize(results: dict[str, dict[int, list[dict]]]) -> tuple[float | None, list[dict]]:
    """The target FD-digits and one summary row per recipe (means over its seeds)."""
    finals = [rows[-1] for rows in results.get("today", {}).values() if rows]
    target = max(r["fd_digits"] for r in finals) if finals else None
    # FD-digits alone reaches the target early with blurry, off-class digits (precision 0.67 at step
    # 1,250 against 0.82 at the end): a recipe must also match today's worst final precision.
    target_precision = min(r["precision"] for r in finals) if finals else None
    table = []
    for recipe, by_seed in results.items():
        reached, final = [], []
        for rows in by_seed.values():
            if not rows:
                continue
            final.append(rows[-1])
            hit = next((r for r in rows if target is not None and r["fd_digits"] <= target
                        and r["precision"] >= target_precision), None)
            reached.append(hit)

        def mean(key: str, rows: list[dict]) -> float | None:
            vals = [r[key] for r in rows if r is not None and key in r]
            return sum(vals) / len(vals) if vals and len(vals) == len(rows) else None

        table.append({
            "recipe": recipe, "seeds": len(final), "reached": sum(r is not None for r in reached),
            "steps_to_target": mean("step", reached), "minutes_to_target": None if (secs := mean("train_s", reached)) is None else secs / 60,
            "final_step": mean("step", final), "final_fd": mean("fd_digits", final),
            "final_fd_spread": (min(r["fd_digits"] for r in final), max(r["fd_digits"] for r in final)) if final else None,
            "final_precision": mean("precision", final), "final_recall": mean("recall", final),
        })
    return (target, target_precision), table


def write(results: dict[str, dict[int, list[dict]]], args: argparse.Namespace, command: str) -> None:
    (target, target_precision), table = summarize(results)

    def fmt(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    lines = [
        "# Time to quality: the demo under each training recipe",
        "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}; CPU capability "
        f"{os.environ.get('ATEN_CPU_CAPABILITY', 'native')}, oneDNN ISA {os.environ.get('ONEDNN_MAX_CPU_ISA', 'native')}, "
        f"precision {args.precision}; {args.eval_samples} samples per evaluation, every {args.eval_every} steps).",
        "",
        f"Target: FD-digits <= {fmt(target, '.2f')} and precision >= {fmt(target_precision, '.3f')}, the worst final "
        "scores of `today` over its seeds. "
        "Minutes are training wall-clock, evaluations excluded; means over the seeds that reached the target "
        "('-' where not all did).",
        "",
        "| recipe | seeds reaching target | steps to target | minutes to target | final step | final FD-digits (min..max) | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        spread = r["final_fd_spread"]
        lines.append(
            f"| {r['recipe']} | {r['reached']}/{r['seeds']} | {fmt(r['steps_to_target'], '.0f')} | {fmt(r['minutes_to_target'])} "
            f"| {fmt(r['final_step'], '.0f')} | {fmt(r['final_fd'], '.2f')} ({fmt(spread and spread[0], '.2f')}..{fmt(spread and spread[1], '.2f')}) "
            f"| {fmt(r['final_precision'], '.3f')} | {fmt(r['final_recall'], '.3f')} |")
    lines.append("")
    lines.append(f"Recipes (flags on top of `--preset demo {' '.join(TODAY)}`): " + "; ".join(
        f"`{name}`: `{' '.join(RECIPES[name]) or '(none)'}`" for name in results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"target": target, "target_precision": target_precision, "table": table, "rows": results}, indent=1) + "\n")
    if args.figure:
        from ddpm.images import pyplot, save_figure

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for i, (recipe, by_seed) in enumerate(results.items()):
            for j, (seed, rows) in enumerate(by_seed.items()):
                xs = [r["step"] for r in rows] if args.figure_x == "steps" else [r["train_s"] / 60 for r in rows]
                ax.plot(xs, [r["fd_digits"] for r in rows], color=f"C{i}", ls=("-", "--", ":")[j % 3],
                        label=f"{recipe} seed {seed}", alpha=0.85, marker=".")
        if target is not None:
            ax.axhline(target, color="k", ls="--", lw=0.8, label="target")
        ax.set_yscale("log")
        ax.set_xlabel("training steps" if args.figure_x == "steps" else "training wall-clock (min)")
        ax.set_ylabel("FD-digits (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save_figure(fig, args.figure)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    parser.add_argument("--max-steps", type=int, default=0, help="train each run this long (0 = each recipe's own length; TODAY's is 4000)")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--runs", default="runs/ttq", help="folder of the benchmark's run folders")
    parser.add_argument("--out", help="markdown table")
    parser.add_argument("--json", help="every evaluation row, by recipe and seed")
    parser.add_argument("--figure", help="FD-digits against training wall-clock, one line per run")
    parser.add_argument("--figure-x", choices=("minutes", "steps"), default="minutes",
                        help="the figure's x axis (steps where the runs shared the machine)")
    parser.add_argument("--no-train", action="store_true", help="only summarize the runs already in --runs")
    parser.add_argument("--prior", help="a --json file of earlier runs: their rows stand in for runs not in --runs "
                        "(run folders are git-ignored; the committed JSON keeps every evaluation)")
    args = parser.parse_args()
    unknown = [r for r in args.recipes.split(",") if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    command = "python benchmarks/time_to_quality.py " + " ".join(sys.argv[1:])
    results: dict[str, dict[int, list[dict]]] = {}
    prior: dict[str, list[dict]] = {}
    if args.prior:
        saved = json.loads(Path(args.prior).read_text())
        if "rows" in saved:  # this script's --json: rows by recipe, then seed
            saved = {f"{recipe}-s{seed}": rows for recipe, by_seed in saved["rows"].items() for seed, rows in by_seed.items()}
        prior = saved
    recipes = args.recipes.split(",")
    if "today" in recipes:  # the target comes from `today`: train it first
        recipes.remove("today")
        recipes.insert(0, "today")
    for recipe in recipes:
        for seed in [int(s) for s in args.seeds.split(",")]:
            run = Path(args.runs) / f"{recipe}-s{seed}"
            if not args.no_train:
                train(recipe, seed, args)
            rows = eval_rows(run) or prior.get(run.name, [])
            if rows:
                results.setdefault(recipe, {})[seed] = rows
                write(results, args, command)


if __name__ == "__main__":
    main()
