"""`ddpm train`: train a model into a run folder."""

from __future__ import annotations

import argparse
import json

from ..config import PRESETS, DiffusionConfig, ModelConfig
from ..errors import UsageError
from .args import add_config_arguments, configs_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `ddpm train`."""
    p = sub.add_parser("train", help="train a model; writes a run folder (config, checkpoints, metrics, samples)",
                       description="Train a DDPM. Every DiffusionConfig and ModelConfig field is a flag; a preset "
                       "sets a starting point that explicit flags override; give --preset, --dataset or both. The run folder receives config.json, "
                       "forward.png, metrics.jsonl, checkpoints/, samples/ and loss.png.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named configuration: 'demo' (digits, "
                   "3-8 min on 2 CPU cores) or 'seed' (the seed's 128x128 FFHQ model)")
    p.add_argument("--dataset", dest="dataset_name", help="alias of --dataset-name")
    p.add_argument("--out", dest="out_dir", help="alias of --out-dir")
    p.add_argument("--class-conditional", action="store_true",
                   help="train a class-conditional model on the dataset's labels (num_classes = its class count; "
                   "for a folder add --labels subfolders)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config, parameter count, and the "
                   "measured seconds per step and peak memory of a few steps; write nothing and exit")
    add_config_arguments(p, DiffusionConfig, skip=frozenset({"extra"}))
    add_config_arguments(p, ModelConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train (or, with --dry-run, measure a few steps and print the report)."""
    from ..training import dry_run, train_diffusion

    if args.preset is None and args.dataset_name is None:
        # The dataclass defaults are the seed's 128x128 U-Net for 800k steps, on the built-in 8x8
        # digits: hours per thousand steps on a CPU for a task that needs a model 40x smaller.
        raise UsageError("ddpm train needs --preset demo (the built-in digits, 3-8 min on 2 CPU cores), "
                         "--preset seed (the seed's 128x128 model, for FFHQ) or --dataset NAME (digits, FFHQ, "
                         "CIFAR10, MNIST or folder:PATH; with --preset or the model flags for its size); "
                         "with neither it would train the seed's 128x128 model on the 8x8 digits for 800k steps.")
    diff_config, model_config = configs_from_args(args)
    # The trainer reads the classes from the data, after local rank 0 has decoded it (not here, on every rank).
    if args.dry_run:
        print(json.dumps(dry_run(diff_config, model_config, class_conditional=args.class_conditional), indent=2))
        return 0
    train_diffusion(diff_config, model_config, class_conditional=args.class_conditional)
    return 0
