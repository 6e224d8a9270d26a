"""`ddpm export`: a checkpoint's EMA weights as .safetensors."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `ddpm export`."""
    p = sub.add_parser("export", help="export a checkpoint's EMA weights to .safetensors (configs included)",
                       description="Write the EMA weights of a checkpoint to a .safetensors file (configs in its "
                       "metadata, and in a .json beside it), for sharing and for `ddpm sample --checkpoint`.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder: its newest checkpoint is exported")
    src.add_argument("--checkpoint", help="checkpoint file (RUN_DIR/checkpoints/step_*.pt)")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export and print where the file went."""
    from ..checkpoint import export_ema, load_source

    state, path = load_source(args.checkpoint, args.run)
    out = export_ema(state, args.out)
    print(f"ddpm: EMA weights of {path} -> {out} (configs in its metadata and in {out.with_suffix('.json')})")
    return 0
