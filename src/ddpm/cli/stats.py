"""`ddpm stats`: a dataset's Inception-v3 feature statistics, computed once for `ddpm eval --ref`."""

from __future__ import annotations

import argparse

from .args import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `ddpm stats`."""
    p = sub.add_parser("stats", help="a dataset's Inception feature mean and covariance, for FID with `ddpm eval --ref`",
                       description="Compute the mean and covariance of a dataset's Inception-v3 pool features once and "
                       "write them as .npz (keys mu and sigma: the reference-file convention of EDM's `fid.py ref` and "
                       "guided-diffusion's reference batches). `ddpm eval SAMPLES --ref REF.npz` then scores samples "
                       "against it without reading the dataset again. For a paper-comparable FID, score 50,000 samples "
                       "(`ddpm sample --num-images 50000 --npz ...`, through torchrun on several GPUs) against the full "
                       "training set's statistics.")
    p.add_argument("dataset", help="dataset name (digits, cifar10, mnist, ffhq, folder:PATH; see README, Datasets)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--image-size", type=positive_int, default=32,
                   help="the side of the samples it will score: images are resized to it first (default: 32)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="the samples' channels, 1 or 3 (default: 3)")
    p.add_argument("--data-root", default=None, help="folder holding named datasets")
    p.add_argument("--max-images", type=positive_int, default=50_000, help="use at most this many images (default: 50000)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute the statistics and say where they went."""
    import torch

    from .. import metrics
    from ..data import load_dataset
    from ..errors import UsageError

    missing = metrics.inception_status()
    if missing is not None:
        raise UsageError(missing)
    size, channels = args.image_size, args.channels
    data = load_dataset(args.dataset, size, channels, args.data_root)
    n = min(len(data), args.max_images)
    images = torch.stack([data[i] for i in range(n)])
    out = metrics.save_reference_statistics(args.out, metrics.inception_features(images), dataset=args.dataset,
                                            image_size=size, channels=channels)
    print(f"ddpm: Inception statistics of {n} images of {args.dataset} ({channels}x{size}x{size}) -> {out}")
    return 0
