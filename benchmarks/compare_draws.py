"""Compare groups of checkpoints over several sampling draws: the means that decide close calls.

One draw of 2000 samples moves a checkpoint's recall by about +-0.01 and its FD-digits by about +-1-2
(docs/score_noise.md), as much as the gaps between recipes. This reads the rows that
benchmarks/rescore_checkpoints.py wrote (one JSON per sampling seed), averages each checkpoint over its
draws, then each group over its checkpoints, and gives the standard error of each group mean (from
the spread of its checkpoints' means, so the training seeds' noise is in it) and of the difference
from the first group.

    .venv/bin/python benchmarks/compare_draws.py docs/time_to_quality_draws/*.json \\
        --group "demo=demo-bf16-s?@4000,demo-fp32-avx2-s?@4000" --group "cosine 3k=cosine-3k-*@3000" \\
        --out docs/time_to_quality_draws/summary.md
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import statistics
from pathlib import Path

METRICS = (("precision", 3), ("recall", 3), ("fd_digits", 2))


def checkpoint_means(paths: list[str]) -> tuple[dict[str, dict[str, float]], dict[str, set[int]]]:
    """Each checkpoint's mean of every metric over its draws, and which draws (sampling seeds) it had.
    Two files that score one checkpoint at one seed differently (a sampler changed between them) are
    refused, naming both: pass the one that holds the scores meant."""
    scores: dict[tuple[str, int], dict] = {}
    source: dict[tuple[str, int], str] = {}
    for path in paths:
        for key, row in json.loads(Path(path).read_text()).items():
            if "seed" not in row:  # the real held-out row has none
                continue
            at = (key, int(row["seed"]))
            if at in scores and any(abs(scores[at][m] - row[m]) > 1e-9 for m, _ in METRICS):
                raise SystemExit(f"{key} at sampling seed {at[1]} scores differently in {source[at]} and {path}; "
                                 "pass only the file whose scores you mean")
            scores[at], source[at] = row, path
    draws: dict[str, set[int]] = {}
    for key, seed in scores:
        draws.setdefault(key, set()).add(seed)
    means = {key: {m: statistics.mean(scores[(key, s)][m] for s in seeds) for m, _ in METRICS}
             for key, seeds in draws.items()}
    return means, draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="rescore_checkpoints.py --json files, one or more per draw")
    parser.add_argument("--group", action="append", required=True,
                        help="NAME=PATTERN[,PATTERN...]: RUN@STEP keys (fnmatch); the first group is the reference")
    parser.add_argument("--out", help="markdown table")
    args = parser.parse_args()
    means, draws = checkpoint_means(args.json)
    groups: dict[str, list[str]] = {}
    for spec in args.group:
        name, eq, patterns = spec.partition("=")
        if not eq or not name or name in groups:
            raise SystemExit(f"--group {spec!r}: write NAME=PATTERN[,PATTERN...] with a name not used before")
        keys = sorted(k for k in means if any(fnmatch.fnmatch(k, p) for p in patterns.split(",")))
        if len(keys) < 2:
            raise SystemExit(f"--group {spec!r}: {len(keys)} checkpoint(s) match; a group needs two or more")
        groups[name] = keys

    lines = ["| checkpoint | draws | " + " | ".join(m for m, _ in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for keys in groups.values():
        for k in keys:
            lines.append(f"| {k} | {len(draws[k])} | " + " | ".join(f"{means[k][m]:.{d}f}" for m, d in METRICS) + " |")
    lines += ["", "| group | checkpoints | " + " | ".join(f"{m}: mean +- s.e." for m, _ in METRICS) + " |",
              "|---|---|" + "---|" * len(METRICS)]
    stats = {}
    for name, keys in groups.items():
        stats[name] = {m: (statistics.mean(means[k][m] for k in keys),
                           statistics.stdev(means[k][m] for k in keys) / math.sqrt(len(keys))) for m, _ in METRICS}
        lines.append(f"| {name} | {len(keys)} | "
                     + " | ".join(f"{stats[name][m][0]:.{d}f} +- {stats[name][m][1]:.{d}f}" for m, d in METRICS) + " |")
    reference = next(iter(groups))
    for name in list(groups)[1:]:
        cells = []
        for m, d in METRICS:
            diff = stats[name][m][0] - stats[reference][m][0]
            se = math.hypot(stats[name][m][1], stats[reference][m][1])
            cells.append(f"{diff:+.{d}f} +- {se:.{d}f}")
        lines.append(f"| {name} minus {reference} | | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
