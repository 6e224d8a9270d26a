"""Quality during training (`--eval-every N --eval-samples K`): the EMA model draws K samples with
the run's sampler, `ddpm eval`'s metrics score them, and quality.png plots them against steps and
training wall-clock, which is what time to quality means.

Digits runs (the built-in digits or MNIST, drawn as 16x16 grayscale like the demo: what `ddpm
eval` scores with FD-digits) get FD-digits, precision and recall (no download); other data gets
Inception FID against K images of the training set where Inception is installed; otherwise
evaluation is skipped with one message.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

DIGIT_DATASETS = ("digits", "mnist")  # dataset names whose samples the digits metric scores
# The metric --keep-best and the benchmarks rank by, for each kind of run (lower is better).
QUALITY_METRICS = ("fd_digits", "fid")


def quality_metric(dataset_name: str, image_channels: int, image_size: int) -> tuple[str | None, str | None]:
    """(metric name, None) for the quality this run can be scored by, or (None, why not)."""
    from .metrics import CLASSIFIER_SIZE, inception_status

    if dataset_name.lower() in DIGIT_DATASETS and image_channels == 1 and image_size == CLASSIFIER_SIZE:
        return "fd_digits", None

    missing = inception_status()
    if missing is None:
        return "fid", None
    return None, f"quality evaluation skipped: {missing}"


class QualityEvaluator:
    """Scores samples of one run; the digits classifier or the real Inception features are built once."""

    def __init__(self, metric: str, real_images: torch.Tensor | None = None) -> None:
        """Args: metric: "fd_digits" or "fid"; real_images: (N, C, H, W) in [-1, 1], for FID."""
        if metric not in QUALITY_METRICS:
            raise ValueError(f"metric={metric!r}; choose one of {QUALITY_METRICS}.")
        self.metric = metric
        if metric == "fd_digits":
            from .metrics import train_digits_classifier

            self.classifier, self.accuracy = train_digits_classifier()
        else:
            from .metrics import feature_statistics, inception_features

            if real_images is None:
                raise ValueError("FID during training needs real images to compare with.")
            self.real_stats = feature_statistics(inception_features(real_images))

    def __call__(self, samples: torch.Tensor) -> dict[str, float]:
        """The metrics of (K, C, H, W) samples in [-1, 1]: {fd_digits, precision, recall} or {fid}."""
        if self.metric == "fd_digits":
            from .metrics import digits_score

            s = digits_score(samples.float().cpu(), self.classifier, self.accuracy)
            return {"fd_digits": s.fd_digits, "precision": s.precision, "recall": s.recall}
        from .metrics import feature_statistics, frechet_distance, inception_features

        return {"fid": frechet_distance(*feature_statistics(inception_features(samples.float().cpu())), *self.real_stats)}


def best_row(rows: Sequence[dict[str, Any]], metric: str, setting: str | None = None) -> dict[str, Any] | None:
    """The evaluation row with the lowest `metric` (ties: the earliest), or None; with `setting`,
    only among rows evaluated the same way (sampler, calls, images, guidance: scores of different
    settings are not comparable)."""
    scored = [r for r in rows if isinstance(r.get(metric), (int, float)) and np.isfinite(r[metric])
              and (setting is None or r.get("eval_setting") == setting)]
    return min(scored, key=lambda r: (r[metric], r["step"])) if scored else None


def quality_figure(rows: Sequence[dict[str, Any]], metric: str, path: str | Path) -> Path:
    """quality.png: `metric` against training step and against training wall-clock (minutes)."""
    from .images import pyplot, save_figure

    rows = [r for r in rows if metric in r]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, key, label in ((axes[0], "step", "step"), (axes[1], "train_s", "training wall-clock (min)")):
        xs = [r[key] / (60.0 if key == "train_s" else 1.0) for r in rows if key in r]
        ax.plot(xs, [r[metric] for r in rows if key in r], marker="o")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric} (lower is better)")
    axes[0].set_yscale("log")
    return save_figure(fig, path)
