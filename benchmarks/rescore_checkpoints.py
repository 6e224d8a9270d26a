"""Rescore the time-to-quality runs' checkpoints with many samples, beside the real held-out digits.

The benchmark's in-training evaluations draw 500 samples; at that N FD-digits of *real* held-out
digits ranges 6-12 from one subset to the next, so it cannot rank recipes whose samples score 8-15.
This draws --samples images from every kept checkpoint (same seed for all, default sampler) and
scores them. The first row is the 899 real held-out digits (all there are: FD-digits is biased up at
small N, so compare it roughly); each row also gives the spread of 500-subsets of its own images,
the noise of an in-training evaluation. Rows accumulate in --json across calls (sorted by name).
With --sampler other than the default, each key gets ":SAMPLER" appended, so that compare_draws.py can
set one sampler against another on the same checkpoints.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rescore_checkpoints.py --runs runs/ttq \
        --out docs/time_to_quality_rescored.md --json docs/time_to_quality_rescored.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ddpm.generation import load_model, sample_images
from ddpm.metrics import digits_score, heldout_digits, train_digits_classifier
from ddpm.run_dir import CHECKPOINT_PATTERN, RunDir
from ddpm.samplers import DEFAULT_SAMPLER, SAMPLERS

COLUMNS = ("fd_digits", "kd_digits", "precision", "recall")


def score(x: torch.Tensor, clf, acc: float) -> dict:
    """FD/KD-digits, precision and recall of (N, 1, 16, 16) images in [-1, 1]."""
    s = digits_score(x, clf, acc)
    return {k: float(getattr(s, k)) for k in COLUMNS} | {"n": len(x)}


def subset_spread(x: torch.Tensor, clf, acc: float, n: int = 500, reps: int = 8) -> dict:
    """Min and max of each metric over `reps` random n-subsets of x: the noise of an n-sample score."""
    gen = torch.Generator().manual_seed(0)
    rows = [score(x[torch.randperm(len(x), generator=gen)[:n]], clf, acc) for _ in range(reps)]
    return {k: (min(r[k] for r in rows), max(r[k] for r in rows)) for k in COLUMNS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/ttq", help="folder of the benchmark's run folders")
    parser.add_argument("--samples", type=int, default=2000, help="images drawn per checkpoint")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", help="comma-separated RUN@STEP keys to score (default: every kept checkpoint)")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default=DEFAULT_SAMPLER,
                        help=f"sampler, at its default calls and spacing (default: {DEFAULT_SAMPLER})")
    parser.add_argument("--out", help="markdown table")
    parser.add_argument("--json", help="rows as JSON (kept and extended across calls)")
    args = parser.parse_args()
    clf, acc = train_digits_classifier()
    done = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).is_file() else {}
    real, _ = heldout_digits()
    rows = {"real held-out": score(real, clf, acc) | {"spread500": subset_spread(real, clf, acc)}}
    only = args.only.split(",") if args.only else None
    kept = [ckpt for run in sorted(Path(args.runs).iterdir()) if run.is_dir() for ckpt in RunDir(run).checkpoints()]
    for ckpt in kept:
        name = f"{ckpt.parents[1].name}@{int(CHECKPOINT_PATTERN.match(ckpt.name)[1])}"
        if only is not None and name not in only:
            continue
        key = name if args.sampler == DEFAULT_SAMPLER else f"{name}:{args.sampler}"
        if key in done and done[key]["n"] == args.samples and done[key].get("seed") == args.seed:
            rows[key] = done[key]
            continue
        m = load_model(checkpoint=ckpt)
        x = sample_images(m.model, m.schedule, args.samples, seed=args.seed, sampler=args.sampler, batch_size=250)
        rows[key] = score(x, clf, acc) | {"spread500": subset_spread(x, clf, acc), "seed": args.seed}
        print(key, {k: round(v, 3) for k, v in rows[key].items() if k in COLUMNS}, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({**done, **rows}, indent=1))
    missing = set(only or ()) - {key.split(":")[0] for key in rows}
    if missing:
        raise SystemExit(f"--only: no kept checkpoint for {sorted(missing)} under {args.runs}")
    rows = {"real held-out": rows.pop("real held-out"), **dict(sorted({**done, **rows}.items()))}
    if args.out:
        lines = ["| images | N | FD-digits | KD-digits x1000 | precision | recall | FD-digits of 500-subsets | precision of 500-subsets |",
                 "|---|---|---|---|---|---|---|---|"]
        for key, r in rows.items():
            fd, p = r["spread500"]["fd_digits"], r["spread500"]["precision"]
            lines.append(f"| {key} | {r['n']} | {r['fd_digits']:.2f} | {r['kd_digits']:.2f} | {r['precision']:.3f} | "
                         f"{r['recall']:.3f} | {fd[0]:.1f}-{fd[1]:.1f} | {p[0]:.3f}-{p[1]:.3f} |")
        Path(args.out).write_text("\n".join(lines) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
