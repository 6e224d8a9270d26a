"""`ddpm export`: a checkpoint's EMA weights as .safetensors, or as a diffusers model folder."""

from __future__ import annotations

import argparse

FORMATS = ("safetensors", "diffusers")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `ddpm export`."""
    p = sub.add_parser("export", help="export a checkpoint's EMA weights to .safetensors or a diffusers folder",
                       description="Write the EMA weights of a checkpoint to a .safetensors file (configs in its "
                       "metadata, and in a .json beside it), for sharing and for `ddpm sample --checkpoint`; or, with "
                       "--format diffusers, to a folder that diffusers.DDPMPipeline.from_pretrained loads (UNet2DModel "
                       "and DDPMScheduler). diffusers needs embedding_placement='after_conv1'; a model it cannot "
                       "represent is refused with the reason.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder: its newest checkpoint is exported")
    src.add_argument("--checkpoint", help="checkpoint file (RUN_DIR/checkpoints/step_*.pt)")
    p.add_argument("--format", choices=FORMATS, default="safetensors",
                   help="safetensors (one file, default) or diffusers (a model folder)")
    p.add_argument("--out", required=True, help="output .safetensors path, or folder for --format diffusers")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export and print where the file or folder went."""
    from ..checkpoint import export_ema, load_source

    state, path = load_source(args.checkpoint, args.run)
    if args.format == "diffusers":
        from ..interop import write_diffusers

        out = write_diffusers(state, args.out)
        print(f"ddpm: EMA weights of {path} -> {out} (diffusers: DDPMPipeline.from_pretrained({str(out)!r}))")
        return 0
    out = export_ema(state, args.out)
    print(f"ddpm: EMA weights of {path} -> {out} (configs in its metadata and in {out.with_suffix('.json')})")
    return 0
