"""`ddpm noise`: the forward-process figure."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .args import bounded, int_list, non_negative_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `ddpm noise`."""
    p = sub.add_parser("noise", help="figure of images noised by the forward process at several t",
                       description="Draw x_t ~ q(x_t | x_0) for a few dataset images at the given timesteps "
                       "(0 = the clean image, T = x_T) with the default schedule for --num-timesteps.")
    p.add_argument("--dataset", default="digits", help="dataset name, as for train (default: digits)")
    p.add_argument("--data-root", default=None, help="folder holding named datasets (default: $DDPM_DATA_ROOT or ./data)")
    p.add_argument("--timesteps", type=int_list("--timesteps"), default=(0, 66, 132, 200),
                   help="comma-separated t values (default: 0,66,132,200)")
    p.add_argument("--num-timesteps", type=bounded(int, 2), default=200, help="T of the schedule (default: 200, the seed's)")
    p.add_argument("--image-size", type=bounded(int, 1, 4096), default=32, help="image side in pixels (default: 32)")
    p.add_argument("--channels", type=int, default=1, choices=(1, 3), help="image channels (default: 1)")
    p.add_argument("--num-images", type=positive_int, default=3, help="rows of the figure (default: 3)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="chooses the images and the noise (default: 0)")
    p.add_argument("--out", default="forward.png", help="output PNG (default: forward.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draw the figure and print where it went."""
    import torch

    from ..config import DiffusionConfig
    from ..data import load_dataset
    from ..images import forward_process_figure
    from ..schedule import NoiseSchedule

    bad = [t for t in args.timesteps if not 0 <= t <= args.num_timesteps]
    if bad or not args.timesteps:
        raise UsageError(f"--timesteps {','.join(map(str, args.timesteps))}: each t must lie in 0 .. {args.num_timesteps} "
                         f"(0 = the clean image, {args.num_timesteps} = x_T); {bad or 'none given'} does not.")
    diff = DiffusionConfig(dataset_name=args.dataset, timesteps_diff=args.num_timesteps, data_root=args.data_root)
    dataset = load_dataset(diff.dataset_name, args.image_size, args.channels, diff.data_root)
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(dataset), generator=gen)[: args.num_images].tolist()
    x0 = torch.stack([dataset[i] for i in idx])
    path = forward_process_figure(x0, NoiseSchedule.from_config(diff), list(args.timesteps), args.out, seed=args.seed)
    print(f"ddpm: forward-process figure {path}")
    return 0
