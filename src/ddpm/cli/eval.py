"""`ddpm eval`: sample-quality metrics of a samples file against a dataset."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .args import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `ddpm eval`."""
    p = sub.add_parser("eval", help="sample-quality metrics of a samples file against a dataset",
                       description="Score samples (.npz with arr_0, or a folder of PNGs). For --dataset digits and 16x16 "
                       "grayscale samples (as the demo draws; others are not scored as digits): FD-digits (Fréchet distance, against a fixed half of the 1,797 digits, of the features of a "
                       "digits classifier that ships with the package, so that every machine scores alike), the classifier's confidence and class coverage, and, when the .npz has "
                       "arr_1 (class-conditional samples), how often each sample is the digit asked for. For any dataset: FID and KID "
                       "with Inception-v3 when torch-fidelity is installed (it fetches its weights on first use; offline, "
                       "a message says where to put them), against --dataset's images or against statistics made once "
                       "with `ddpm stats` (--ref); otherwise a message says what is missing.")
    p.add_argument("samples", help="samples .npz (arr_0: uint8 N,H,W,C) or folder of PNGs")
    p.add_argument("--dataset", default="digits", help="reference dataset (default: digits)")
    p.add_argument("--data-root", default=None, help="folder holding named datasets")
    p.add_argument("--max-reference", type=positive_int, default=50_000, help="reference images for FID (default: 50000)")
    p.add_argument("--ref", metavar="REF.npz", help="FID against these Inception statistics (from `ddpm stats`, or "
                   "EDM's fid.py ref) instead of reading --dataset's images; KID needs the images, so it is left out")
    p.add_argument("--json", help="also write the report to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute the metrics and print them as JSON."""
    from ..images import load_images, load_labels
    from ..metrics import class_accuracy, digits_mismatch, digits_score, inception_status

    samples = load_images(args.samples)
    labels = load_labels(args.samples)
    report: dict[str, Any] = {"samples": str(args.samples), "num_samples": len(samples), "dataset": args.dataset}
    if args.dataset.lower() == "digits":
        # The classifier would take any image (RGB averaged, resized): only digit-like samples get a score.
        not_digits = digits_mismatch(samples)
        if not_digits is None:
            report["digits"] = dataclasses.asdict(digits_score(samples))
            if labels is not None:  # class-conditional samples: were they the digit asked for?
                report["class_accuracy"] = class_accuracy(samples, labels)
        else:
            report["digits_unavailable"] = not_digits
    missing = inception_status()
    if missing is None:
        import numpy as np
        import torch

        from ..data import load_dataset
        from ..metrics import (
            feature_statistics,
            frechet_distance,
            inception_features,
            kernel_distance,
            load_reference_statistics,
        )

        if args.ref:
            mu, sigma, meta = load_reference_statistics(args.ref)
            shape = (meta.get("channels"), meta.get("image_size"))
            if None not in shape and shape != (samples.shape[1], samples.shape[-1]):
                raise UsageError(f"--ref {args.ref} holds statistics of {shape[0]}x{shape[1]}x{shape[1]} images, the "
                                 f"samples are {samples.shape[1]}x{samples.shape[-1]}x{samples.shape[-1]}: make them with "
                                 f"`ddpm stats ... --image-size {samples.shape[-1]} --channels {samples.shape[1]}`.")
            report["fid"] = frechet_distance(*feature_statistics(inception_features(samples)), mu, sigma)
            report["num_reference"] = meta.get("num_images")
            report["reference"] = str(args.ref)
        else:
            ref = load_dataset(args.dataset, samples.shape[-1], samples.shape[1], args.data_root)
            ref_x = torch.stack([ref[i] for i in range(min(len(ref), args.max_reference))])
            f_ref, f_fake = inception_features(ref_x), inception_features(samples)
            report["fid"] = frechet_distance(*feature_statistics(f_fake), *feature_statistics(f_ref))
            report["kid_mean"], report["kid_std"] = kernel_distance(f_fake, f_ref)
            report["num_reference"] = int(np.shape(f_ref)[0])
    else:
        report["fid"] = None
        report["fid_unavailable"] = missing
        if "digits" not in report:
            raise UsageError(f"no metric applies to {args.samples}: " + " ".join(filter(None, (
                report.get("digits_unavailable"), missing))))
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
