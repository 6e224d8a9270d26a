"""`ddpm sample`: generate images with a trained run or checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import SAMPLE_PRECISIONS
from ..errors import UsageError
from ..samplers import DEFAULT_SAMPLER, SAMPLERS, VARIANCES
from .args import (
    add_sampler_options,
    non_negative_float,
    non_negative_int,
    positive_int,
    sampler_options,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `ddpm sample`."""
    samplers = "; ".join(f"{s.name}: {s.summary}" for s in SAMPLERS.values())
    defaults = ", ".join(f"{s.name} {s.default_steps or 'T'}" for s in SAMPLERS.values())
    p = sub.add_parser("sample", help="generate images from a trained run or checkpoint",
                       description="Generate images with the EMA weights of a checkpoint. Image i depends only on "
                       "(seed, i), so a seed reproduces a grid whatever the batch size. The number of network "
                       "calls per image is printed and stored in the .npz's metadata.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", "--run-dir", dest="run", help="run folder: its newest checkpoint is used (under torchrun, "
                     "spell it --run-dir: torchrun takes --run for its own --run-path)")
    src.add_argument("--checkpoint", help="checkpoint file (RUN_DIR/checkpoints/step_*.pt), an exported .safetensors, "
                     "or a diffusers model folder (e.g. google/ddpm-cifar10-32, downloaded)")
    p.add_argument("--num-images", type=positive_int, default=64, help="how many images (default: 64)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None,
                   help=f"{samplers} (default: the run's `sampler`, {DEFAULT_SAMPLER} unless it was trained with another)")
    p.add_argument("--sample-steps", type=positive_int, default=None, metavar="K",
                   help=f"network calls per image, for every sampler (ddpm: respaced); default: the run's "
                   f"`sample_steps` with its sampler, else {defaults}")
    add_sampler_options(p)
    p.add_argument("--variance", choices=VARIANCES, default=None,
                   help="ddpm only: reverse variance (default: the run's sample_variance)")
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=None,
                   help="clip predicted x_0 to [-1, 1] (default: the run's clip_x0)")
    p.add_argument("--class", dest="classes", action="append", metavar="C", type=lambda v: [v],
                   help="class-conditional models: draw this class (an index or a name)")
    p.add_argument("--classes", dest="classes", action="append", metavar="C,D,..", type=lambda v: v.split(","),
                   help="class-conditional models: one grid row per class (--num-images split over them)")
    p.add_argument("--guidance-scale", type=non_negative_float, default=None, metavar="W",
                   help="classifier-free guidance: 0 = unconditional, 1 = plain conditional, > 1 = guided "
                   "(default: the run's guidance_scale)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per network call (default: 64)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', ...")
    p.add_argument("--precision", choices=SAMPLE_PRECISIONS, default="auto", help="network precision (default: auto)")
    p.add_argument("--out", help="grid PNG path (default: RUN_DIR/samples/sample_seed<S>.png for a run or one of its "
                   "checkpoints, else <file>_seed<S>.png beside the checkpoint)")
    p.add_argument("--npz", help="also save the images as .npz (arr_0: uint8 N,H,W,C), the guided-diffusion convention")
    p.add_argument("--png-dir", help="also save every image as PNG_DIR/NNNNNN.png")
    p.add_argument("--grid-images", type=positive_int, default=256, help="at most this many images in the grid (default: 256)")
    p.add_argument("--trajectory", metavar="PNG", help="also save a figure of x_t and predicted x_0 of image 0 at 8 steps")
    p.set_defaults(func=run)


def default_grid_path(run: str | None, checkpoint: str | None, seed: int) -> Path:
    """Where the grid goes without --out: the run's samples/ folder, else beside the checkpoint file."""
    from ..run_dir import RunDir

    run_dir = RunDir(run) if run else RunDir.of_checkpoint(checkpoint)
    if run_dir is not None:
        return run_dir.samples_dir / f"sample_seed{seed}.png"
    path = Path(checkpoint)
    return path.parent / f"{path.stem}_seed{seed}.png"


def run(args: argparse.Namespace) -> int:
    """Sample, then write the grid (and the .npz, PNGs and trajectory asked for)."""
    from ..generation import generate, trajectory
    from ..images import save_grid, save_npz, save_png_folder, trajectory_figure

    if args.guidance_scale is not None and args.classes is None:
        raise UsageError("--guidance-scale steers class-conditional sampling: give --class or --classes too.")
    result = generate(args.run, args.checkpoint, args.num_images, seed=args.seed, sampler=args.sampler,
                      num_steps=args.sample_steps, spacing=args.spacing, clip_x0=args.clip_x0,
                      batch_size=args.batch_size, device=args.device, precision=args.precision,
                      announce=lambda text: print(f"ddpm: {text}"), variance=args.variance, **sampler_options(args),
                      classes=[c for group in args.classes or [] for c in group], guidance_scale=args.guidance_scale)
    if not result.is_main:
        return 0
    x, loaded = result.images, result.loaded
    out = Path(args.out) if args.out else default_grid_path(args.run, args.checkpoint, args.seed)
    print(f"ddpm: sample grid {save_grid(x[:args.grid_images], out, nrow=result.per_row)}")
    if args.npz:
        meta = {"checkpoint": str(loaded.path), "step": loaded.step, "sampler": result.sampler,
                "network_calls": result.network_calls, "timesteps": result.timesteps, "seed": args.seed,
                "num_images": len(x)}
        if result.labels is not None:
            meta.update(guidance_scale=args.guidance_scale if args.guidance_scale is not None
                        else loaded.diffusion_config.guidance_scale, class_names=loaded.class_names)
        print(f"ddpm: samples {save_npz(x, args.npz, meta, result.labels)} (arr_0: uint8 {x.shape}"
              + (", arr_1: the classes asked for)" if result.labels is not None else ")"))
    if args.png_dir:
        print(f"ddpm: {len(x)} PNGs in {save_png_folder(x, args.png_dir)}")
    if args.trajectory:
        # The resolved step count: with the sampler named, the run's own sample_steps would no longer apply.
        frames = trajectory(loaded, result.sampler, args.seed, result.network_calls, args.spacing, args.clip_x0,
                            args.precision, variance=args.variance, **sampler_options(args))
        print(f"ddpm: trajectory figure {trajectory_figure(frames, args.trajectory)}")
    return 0
