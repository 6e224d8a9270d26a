"""`ddpm edit inpaint | img2img | invert | interpolate`: edit images with a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from ..samplers import SAMPLERS
from .args import bounded, non_negative_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `ddpm edit` and its modes."""
    p = sub.add_parser("edit", help="edit images with a trained model: inpaint, img2img, invert, interpolate",
                       description="Edit images with a trained model, no retraining. Inputs of any size and mode are "
                       "converted as training data is (channels, centre crop or pad, resize). Outputs are PNGs; "
                       "--seed reproduces them.")
    modes = p.add_subparsers(dest="mode", required=True, metavar="{inpaint,img2img,invert,interpolate}")

    def common(q: argparse.ArgumentParser, images: str) -> None:
        src = q.add_mutually_exclusive_group(required=True)
        src.add_argument("--run", "--run-dir", dest="run", help="run folder: its newest checkpoint is used")
        src.add_argument("--checkpoint", help="checkpoint file or an exported .safetensors")
        q.add_argument("--image", action="append", required=True, help=images)
        q.add_argument("--out", required=True, help="output PNG")
        q.add_argument("--seed", type=non_negative_int, default=0, help="seed of every random draw (default: 0)")
        q.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
        q.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="network precision")
        q.add_argument("--crop", choices=("center", "pad"), default="center", help="how a non-square input becomes square")

    q = modes.add_parser("inpaint", help="fill the white part of a mask (RePaint)",
                         description="Fill the masked region (mask white = fill, black = keep); the kept pixels are "
                         "the input's exactly. RePaint: ancestral sampling over all T steps with the known pixels "
                         "re-noised at every step; --resample U goes back --jump-length J steps U - 1 times (default U = 10, J = 5: "
                         "95% of band-erased digits keep their label, against 84% with U = 1; docs/edit_table.md).")
    common(q, "the image to complete")
    q.add_argument("--mask", required=True, help="mask image of the input's size; white (>= 128) = fill")
    q.add_argument("--num-images", type=positive_int, default=8, help="completions to draw (default: 8)")
    q.add_argument("--jump-length", type=positive_int, default=5, help="RePaint's J (default: 5)")
    q.add_argument("--resample", type=positive_int, default=10,
                   help="RePaint's U (default: 10, which measured best on the digits; 1 = no resampling, ~10x faster)")
    q.add_argument("--npz", help="also save the completions as .npz (arr_0: uint8 N,H,W,C)")

    q = modes.add_parser("img2img", help="turn an image into a sample close to it (SDEdit)",
                         description="Noise the input to t = strength * T, then denoise with any sampler: strength 0 "
                         "returns the input, 1 is a new sample.")
    common(q, "the image to start from")
    q.add_argument("--strength", type=bounded(float, 0.0, 1.0), required=True, help="0 .. 1: how much of the input is replaced by noise")
    q.add_argument("--num-images", type=positive_int, default=8, help="variations to draw (default: 8)")
    q.add_argument("--sampler", choices=sorted(SAMPLERS), default=None, help="sampler (default: the run's)")
    q.add_argument("--sample-steps", type=positive_int, default=None, help="network calls from t (default: the sampler's)")
    q.add_argument("--npz", help="also save the results as .npz (arr_0: uint8 N,H,W,C)")

    q = modes.add_parser("invert", help="the DDIM latent x_T of an image, and its reconstruction",
                         description="Run DDIM backwards from the image to x_T (saved with torch.save to --latent), "
                         "then decode it again into --out, to show what the latent holds.")
    common(q, "the image to invert")
    q.add_argument("--latent", required=True, help="where to save x_T (a .pt tensor file)")
    q.add_argument("--sample-steps", type=positive_int, default=50, help="DDIM steps each way (default: 50)")

    q = modes.add_parser("interpolate", help="a strip of frames between two images through their DDIM latents",
                         description="Invert both images, interpolate their latents along the sphere, decode each "
                         "frame with DDIM. The end frames are the two reconstructions.")
    common(q, "an end point (give --image twice)")
    q.add_argument("--frames", type=bounded(int, 2), default=8, help="frames in the strip, ends included (default: 8)")
    q.add_argument("--sample-steps", type=positive_int, default=50, help="DDIM steps each way (default: 50)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model and the inputs, edit, save."""
    import torch

    from ..edit_io import load_edit_inputs
    from ..editing import ddim_decode, ddim_invert, img2img, inpaint, interpolate
    from ..generation import load_model, network
    from ..images import save_grid, save_npz
    from ..runtime import resolve_device, resolve_precision
    from ..samplers import image_generators

    wanted = 2 if args.mode == "interpolate" else 1
    if len(args.image) != wanted:
        raise UsageError(f"ddpm edit {args.mode} takes --image {wanted} time(s), got {len(args.image)}.")
    device = resolve_device(args.device)
    loaded = load_model(args.run, args.checkpoint, device)
    cfg = loaded.model_config
    images, mask = load_edit_inputs(args.image, getattr(args, "mask", None), cfg.image_size, cfg.image_channels,
                                    args.crop)
    images = images.to(device)
    net = network(loaded.model, resolve_precision(args.precision, device))

    clip = loaded.diffusion_config.clip_x0
    n = getattr(args, "num_images", 1)
    gens = image_generators(args.seed, range(n), device)
    if args.mode == "inpaint":
        out = inpaint(net, loaded.schedule, images.expand(n, -1, -1, -1), mask.to(device), gens, args.jump_length,
                      args.resample, loaded.diffusion_config.sample_variance, clip, progress=True)
    elif args.mode == "img2img":
        sampler, steps, clip, options = loaded.resolve(args.sampler, args.sample_steps, None, {})
        out = img2img(net, loaded.schedule, images.expand(n, -1, -1, -1), args.strength, gens, sampler, steps,
                      clip_x0=clip, progress=True, **options)
    elif args.mode == "invert":
        latent = ddim_invert(net, loaded.schedule, images, args.sample_steps, progress=True)
        Path(args.latent).parent.mkdir(parents=True, exist_ok=True)
        torch.save(latent.cpu(), args.latent)
        print(f"ddpm: latent x_T {args.latent} (shape {tuple(latent.shape)})")
        out = ddim_decode(net, loaded.schedule, latent, args.sample_steps)
    else:
        out = interpolate(net, loaded.schedule, images[0], images[1], args.frames, args.sample_steps, progress=True)
    out = out.cpu()
    nrow = len(out) if args.mode == "interpolate" else None
    print(f"ddpm: {args.mode} -> {save_grid(out, args.out, nrow=nrow)}")
    if getattr(args, "npz", None):
        print(f"ddpm: samples {save_npz(out, args.npz, {'edit': args.mode, 'seed': args.seed})}")
    return 0
