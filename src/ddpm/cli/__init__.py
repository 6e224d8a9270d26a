"""`ddpm train | sample | edit | eval | stats | export | convert | noise`: the command line, one module per subcommand.

Each module registers its parser and runs one library call; `ddpm <command> --help` is its manual.
"""

from __future__ import annotations

import argparse
import sys

from . import convert, edit, export, noise, sample, stats, train
from . import eval as eval_cmd

EPILOG = """examples:
  ddpm train --preset demo                          # built-in digits: 3-7 min on a 2-core bf16 CPU, 4-8 on AVX2
  ddpm train --dataset folder:~/images --preset seed --max-steps 100000
  ddpm sample --run runs/demo --num-images 64 --out grid.png --npz samples.npz
  ddpm sample --run runs/demo --sampler dpmpp-2m --sample-steps 10 --out grid_fast.png
  ddpm edit inpaint --run runs/demo --image digit.png --mask band.png --out filled.png
  ddpm noise --dataset digits --timesteps 0,66,132,200 --out forward.png
  ddpm train --preset demo --out runs/demo --resume --max-steps 6000   # continue a run (the decaying lr jumps back up)
  ddpm export --run runs/demo --out demo.safetensors
  ddpm convert ddpm-cifar10-32 --out cifar10.safetensors  # a diffusers model folder (google/ddpm-*)
  ddpm stats cifar10 --out cifar10_ref.npz                # Inception statistics once, then:
  ddpm eval samples.npz --ref cifar10_ref.npz             # FID against them
  tensorboard --logdir runs/demo                    # watch a run (pip install tensorboard)
"""

COMMANDS = (train, sample, edit, eval_cmd, stats, export, convert, noise)


def build_parser() -> argparse.ArgumentParser:
    """The `ddpm` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="ddpm",
        description="Denoising Diffusion Probabilistic Models (Ho et al., 2020): train, sample, export, convert, and show the forward process.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sample,edit,eval,stats,export,convert,noise}")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ddpm` console script: the project's errors are one line and exit code 2.

    Only the project's own error types are a user's mistake; any other exception (a plain
    ValueError included) is a bug and keeps its traceback.
    """
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..data import DatasetNotFoundError
    from ..errors import UsageError
    from ..run_dir import RunDirBusy
    from ..runtime import require_torch

    try:
        require_torch()
    except ImportError as err:  # not a usage error: the environment lacks what every command needs
        print(f"ddpm: error: {err}", file=sys.stderr)
        return 1
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetNotFoundError, CheckpointError, RunDirBusy, UsageError) as err:
        print(f"ddpm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
