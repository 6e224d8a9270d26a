"""`ddpm convert`: a diffusers model folder (e.g. google/ddpm-cifar10-32) as our .safetensors export."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `ddpm convert`."""
    p = sub.add_parser("convert", help="convert a diffusers model folder (UNet2DModel + DDPMScheduler) to .safetensors",
                       description="Map a diffusers model folder (unet/config.json, unet/diffusion_pytorch_model."
                       "safetensors, scheduler/scheduler_config.json; as `huggingface-cli download google/ddpm-cifar10-32` "
                       "fetches it) onto ddpm's U-Net and schedule, and write it as `ddpm export` does. A setting "
                       "ddpm cannot represent exactly is refused by name. `ddpm sample --checkpoint FOLDER` also "
                       "reads the folder directly.")
    p.add_argument("folder", help="diffusers model folder")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert and print where the file went."""
    from ..checkpoint import export_ema, load_source

    state, path = load_source(args.folder, None)
    out = export_ema(state, args.out)
    print(f"ddpm: diffusers model {path} -> {out} (configs in its metadata and in {out.with_suffix('.json')})")
    return 0
