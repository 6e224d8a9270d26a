"""`ddpm edit inpaint | img2img | invert | interpolate`: edit images with a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import CROP_MODES, SAMPLE_PRECISIONS
from ..editing import repaint_network_calls
from ..errors import UsageError
from ..samplers import SAMPLERS, get_sampler
from .args import (
    add_sampler_options,
    bounded,
    non_negative_float,
    non_negative_int,
    positive_int,
    sampler_options,
)

# RePaint's defaults: the middle row of docs/edit_table.md (label kept against network calls).
RESAMPLE, JUMP_LENGTH, COMPLETIONS = 5, 10, 4
# The DDIM round trip image -> x_T -> image measured as close in bf16 as in fp32 (docs/edit_precision.md),
# so inversion keeps precision "auto" like every other mode.
INVERSION_PRECISION = ("network precision (default: auto, bf16 where the device runs it natively: DDIM inversion's "
                       "round trip measured as close to the input in bf16 as in fp32, and either precision decodes "
                       "the other's x_T; docs/edit_precision.md)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `ddpm edit` and its modes."""
    p = sub.add_parser("edit", help="edit images with a trained model: inpaint, img2img, invert, interpolate",
                       description="Edit images with a trained model, no retraining. Inputs of any size and mode are "
                       "converted as training data is (channels, centre crop or pad, resize). Outputs are PNGs; "
                       "--seed reproduces them.")
    modes = p.add_subparsers(dest="mode", required=True, metavar="{inpaint,img2img,invert,interpolate}")

    def common(q: argparse.ArgumentParser, images: str,
               precision: str = "network precision (default: auto, bf16 where the device runs it natively)") -> None:
        src = q.add_mutually_exclusive_group(required=True)
        src.add_argument("--run", "--run-dir", dest="run", help="run folder: its newest checkpoint is used")
        src.add_argument("--checkpoint", help="checkpoint file, an exported .safetensors, or a diffusers model folder")
        q.add_argument("--image", action="append", required=True, help=images)
        q.add_argument("--out", required=True, help="output PNG")
        q.add_argument("--seed", type=non_negative_int, default=0, help="seed of every random draw (default: 0)")
        q.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
        q.add_argument("--precision", choices=SAMPLE_PRECISIONS, default="auto", help=precision)
        q.add_argument("--crop", choices=CROP_MODES, default="center", help="how a non-square input becomes square")
        q.add_argument("--class", dest="label", metavar="C", help="class-conditional models: edit as this class (an "
                       "index or a name); without it they edit unconditionally")
        q.add_argument("--guidance-scale", type=non_negative_float, default=None, metavar="W",
                       help="classifier-free guidance with --class: 0 = unconditional, 1 = plain conditional, > 1 = "
                       "guided (default: the run's guidance_scale)")

    calls = repaint_network_calls(200, JUMP_LENGTH, RESAMPLE)
    q = modes.add_parser("inpaint", help="fill the white part of a mask (RePaint)",
                         description="Fill the masked region (mask white = fill, black = keep); the kept pixels are "
                         "the input's exactly. RePaint: ancestral sampling over all T steps with the known pixels "
                         "re-noised at every step; --resample U goes back --jump-length J steps U - 1 times. The "
                         f"network calls are printed before it starts. Defaults (U = {RESAMPLE}, J = {JUMP_LENGTH}, "
                         f"{COMPLETIONS} completions): {calls} network calls on a batch of {COMPLETIONS} for the "
                         "demo's T = 200 (about half a minute on a 2-core AVX-512 CPU; docs/edit_precision.md), "
                         "which kept the label of 92% of band-erased digits; U = 10, J = 5 (1,955 calls) kept 95%, "
                         "U = 1 (200 calls) 84% (docs/edit_table.md).")
    common(q, "the image to complete")
    q.add_argument("--mask", required=True, help="mask image of the input's size; white (>= 128) = fill")
    q.add_argument("--num-images", type=positive_int, default=COMPLETIONS,
                   help=f"completions to draw, one batch (default: {COMPLETIONS})")
    q.add_argument("--jump-length", type=positive_int, default=JUMP_LENGTH, help=f"RePaint's J (default: {JUMP_LENGTH})")
    q.add_argument("--resample", type=positive_int, default=RESAMPLE,
                   help=f"RePaint's U (default: {RESAMPLE}; 1 = no resampling, T calls)")
    q.add_argument("--npz", help="also save the completions as .npz (arr_0: uint8 N,H,W,C)")

    q = modes.add_parser("img2img", help="turn an image into a sample close to it (SDEdit)",
                         description="Noise the input to t = strength * T, then denoise with any sampler: strength 0 "
                         "returns the input, 1 is a new sample.")
    common(q, "the image to start from")
    q.add_argument("--strength", type=bounded(float, 0.0, 1.0), required=True, help="0 .. 1: how much of the input is replaced by noise")
    q.add_argument("--num-images", type=positive_int, default=8, help="variations to draw (default: 8)")
    q.add_argument("--sampler", choices=sorted(SAMPLERS), default=None, help="sampler (default: the run's)")
    q.add_argument("--sample-steps", type=positive_int, default=None, help="network calls from t (default: the sampler's)")
    add_sampler_options(q)
    q.add_argument("--npz", help="also save the results as .npz (arr_0: uint8 N,H,W,C)")

    q = modes.add_parser("invert", help="the DDIM latent x_T of an image, and its reconstruction",
                         description="Run DDIM backwards from the image to x_T (saved with torch.save to --latent), "
                         "then decode it again into --out, to show what the latent holds.")
    common(q, "the image to invert", INVERSION_PRECISION)
    q.add_argument("--latent", required=True, help="where to save x_T (a .pt tensor file)")
    q.add_argument("--sample-steps", type=positive_int, default=50, help="DDIM steps each way (default: 50)")

    q = modes.add_parser("interpolate", help="a strip of frames between two images through their DDIM latents",
                         description="Invert both images, interpolate their latents along the sphere, decode each "
                         "frame with DDIM. The end frames are the two reconstructions.")
    common(q, "an end point (give --image twice)", INVERSION_PRECISION)
    q.add_argument("--frames", type=bounded(int, 2), default=8, help="frames in the strip, ends included (default: 8)")
    q.add_argument("--sample-steps", type=positive_int, default=50, help="DDIM steps each way (default: 50)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model and the inputs, say what the edit costs, edit, save."""
    import torch

    from ..edit_io import load_edit_inputs
    from ..editing import ddim_decode, ddim_invert, img2img, inpaint, interpolate, strength_start
    from ..generation import load_model, network
    from ..images import save_grid, save_npz
    from ..runtime import precision_name, resolve_device, resolve_precision
    from ..samplers import image_generators, resolve_steps

    wanted = 2 if args.mode == "interpolate" else 1
    if len(args.image) != wanted:
        raise UsageError(f"ddpm edit {args.mode} takes --image {wanted} time(s), got {len(args.image)}.")
    if args.guidance_scale is not None and args.label is None:
        raise UsageError("--guidance-scale steers a class-conditional edit: give --class too.")
    device = resolve_device(args.device)
    loaded = load_model(args.run, args.checkpoint, device)
    cfg, schedule = loaded.model_config, loaded.schedule
    label = None if args.label is None else loaded.class_index(args.label)  # refuses unconditional models
    w = 1.0 if label is None else (loaded.diffusion_config.guidance_scale if args.guidance_scale is None
                                   else args.guidance_scale)
    images, mask = load_edit_inputs(args.image, getattr(args, "mask", None), cfg.image_size, cfg.image_channels,
                                    args.crop)
    images = images.to(device)
    dtype = resolve_precision(args.precision, device)
    net = network(loaded.model, dtype, w)

    clip = loaded.diffusion_config.clip_x0
    n = getattr(args, "num_images", 1)
    gens = image_generators(args.seed, range(n), device)
    y = None if label is None else torch.full((n,), label, device=device, dtype=torch.long)
    how = f"precision {precision_name(dtype)}"
    if label is not None:
        how += f", class {args.label} at guidance {w:g}"
    elif cfg.num_classes:
        how += "; no --class, so this class-conditional model edits unconditionally"
    if args.mode == "inpaint":
        calls = repaint_network_calls(schedule.num_timesteps, args.jump_length, args.resample)
        print(f"ddpm: inpaint {n} completion(s) with RePaint (U = {args.resample}, J = {args.jump_length}, "
              f"T = {schedule.num_timesteps}): {calls} network calls on a batch of {n}, {how}", flush=True)
        out = inpaint(net, schedule, images.expand(n, -1, -1, -1), mask.to(device), gens, args.jump_length,
                      args.resample, loaded.diffusion_config.sample_variance, clip, y, progress=True)
    elif args.mode == "img2img":
        sampler, steps, clip, options = loaded.resolve(args.sampler, args.sample_steps, None, sampler_options(args))
        start = strength_start(schedule, args.strength)
        calls = 0 if start is None else get_sampler(sampler).calls(len(resolve_steps(sampler, schedule, steps,
                                                                                       args.spacing, start)))
        print(f"ddpm: img2img {n} variation(s) at strength {args.strength:g} with {sampler}: {calls} network calls "
              f"on a batch of {n}, {how}", flush=True)
        out = img2img(net, schedule, images.expand(n, -1, -1, -1), args.strength, gens, sampler, steps, y,
                      clip_x0=clip, progress=True, spacing=args.spacing, **options)
    elif args.mode == "invert":
        print(f"ddpm: invert with DDIM, {args.sample_steps} steps each way ({2 * args.sample_steps - 1} network "
              f"calls), {how}", flush=True)
        latent = ddim_invert(net, schedule, images, args.sample_steps, y=y, progress=True)
        Path(args.latent).parent.mkdir(parents=True, exist_ok=True)
        torch.save(latent.cpu(), args.latent)
        print(f"ddpm: latent x_T {args.latent} (shape {tuple(latent.shape)})")
        out = ddim_decode(net, schedule, latent, args.sample_steps, y=y)
    else:
        print(f"ddpm: interpolate {args.frames} frames with DDIM, {args.sample_steps} steps each way "
              f"({2 * args.sample_steps - 1} network calls), {how}", flush=True)
        out = interpolate(net, schedule, images[0], images[1], args.frames, args.sample_steps, progress=True, y=label)
    out = out.cpu()
    nrow = len(out) if args.mode == "interpolate" else None
    print(f"ddpm: {args.mode} -> {save_grid(out, args.out, nrow=nrow)}")
    if getattr(args, "npz", None):
        print(f"ddpm: samples {save_npz(out, args.npz, {'edit': args.mode, 'seed': args.seed})}")
    return 0
