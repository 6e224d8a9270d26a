"""`ddpm train | sample | noise`: the command line. Each subcommand's --help is its manual."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

from .config import PRESETS, ConfigError, DiffusionConfig, ModelConfig

EPILOG = """examples:
  ddpm train --preset demo                          # ~11 min on a 2-core CPU, built-in digits
  ddpm train --dataset folder:~/images --preset seed --max-steps 100000
  ddpm sample --run runs/demo --num-images 64 --out grid.png --npz samples.npz
  ddpm noise --dataset digits --timesteps 0,66,132,200 --out forward.png
  ddpm train --preset demo --out runs/demo --resume --max-steps 8000   # continue a run
  ddpm export --run runs/demo --out demo.safetensors
  tensorboard --logdir runs/demo                    # watch a run (pip install tensorboard)
"""


def _field_help(cls: type) -> dict[str, str]:
    """Each dataclass field's comment (inline, or the comment lines just above it) as its help text."""
    helps: dict[str, str] = {}
    pending: list[str] = []
    block = ""  # a comment block above several fields (beta_start, beta_end) describes them all
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# "))
            continue
        m = re.match(r"^(\w+):[^=]+=.*?(?:#\s*(.*))?$", stripped)
        if m:
            if pending:
                block = " ".join(pending)
            helps[m.group(1)] = m.group(2) or block
            if m.group(2):
                block = ""
        else:
            block = ""
        pending = []
    return helps


def _parse_ints(text: str) -> tuple[int, ...]:
    text = text.strip().strip("[]()")
    return tuple(int(v) for v in text.split(",") if v.strip()) if text else ()


def _add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: set[str]) -> None:
    """One --flag per config field, default None so that presets and dataclass defaults apply."""
    helps = _field_help(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-")
        text = f"{helps.get(f.name, '')} (default: {default})".replace("%", "%%")
        if isinstance(default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif isinstance(default, tuple):
            group.add_argument(flag, dest=f.name, type=_parse_ints, default=None, metavar="I,J,..", help=text)
        elif isinstance(default, int):
            group.add_argument(flag, dest=f.name, type=int, default=None, metavar="N", help=text)
        elif isinstance(default, float) or f.name in ("beta_start", "beta_end"):
            group.add_argument(flag, dest=f.name, type=float, default=None, metavar="X", help=text)
        else:
            group.add_argument(flag, dest=f.name, type=str, default=None, help=text)


def _configs_from_args(args: argparse.Namespace) -> tuple[DiffusionConfig, ModelConfig]:
    diff_kwargs: dict[str, Any] = {}
    model_kwargs: dict[str, Any] = {}
    if args.preset:
        diff_kwargs.update(PRESETS[args.preset][0])
        model_kwargs.update(PRESETS[args.preset][1])
    for cls, kwargs in ((DiffusionConfig, diff_kwargs), (ModelConfig, model_kwargs)):
        for f in dataclasses.fields(cls):
            value = getattr(args, f.name, None)
            if value is not None:
                kwargs[f.name] = value
    return DiffusionConfig(**diff_kwargs), ModelConfig(**model_kwargs)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train_diffusion

    diff_config, model_config = _configs_from_args(args)
    if args.dry_run:
        from .train import dry_run

        print(json.dumps(dry_run(diff_config, model_config), indent=2))
        return 0
    train_diffusion(diff_config, model_config)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import export_ema, load_source

    state, path = load_source(args.checkpoint, args.run)
    out = export_ema(state, args.out)
    print(f"ddpm: EMA weights of {path} -> {out} (configs in its metadata and in {out.with_suffix('.json')})")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from . import distributed
    from .checkpoint import load_source, model_from_state
    from .images import save_grid, save_npz, save_png_folder
    from .runtime import resolve_device, resolve_precision
    from .sampling import sample_images
    from .schedule import NoiseSchedule

    info, device = distributed.setup(resolve_device(args.device))
    try:
        state, path = load_source(args.checkpoint, args.run, device)
        model, diff_config, _, step = model_from_state(state, path, device)
        del state
        schedule = NoiseSchedule.from_config(diff_config).to(device)
        seed = args.seed
        variance = args.variance or diff_config.sample_variance
        clip = diff_config.clip_x0 if args.clip_x0 is None else args.clip_x0
        if info.is_main:
            print(f"ddpm: {args.num_images} images from {path} (step {step}) with {args.sampler}, "
                  f"{args.sample_steps if args.sampler == 'ddim' else schedule.num_timesteps} steps"
                  + (f", {info.world_size} processes" if info.enabled else ""))
        # Each process makes a contiguous share; image i depends only on (seed, i), so the result
        # equals the single-process one.
        share = distributed.shard(args.num_images, info)
        x = sample_images(model, schedule, args.num_images, seed=seed, sampler=args.sampler,
                          num_steps=args.sample_steps, variance=variance, clip_x0=clip, eta=args.eta,
                          batch_size=args.batch_size, autocast_dtype=resolve_precision(args.precision, device),
                          progress=info.is_main, indices=share)
        x = distributed.gather_to_main(x)
    finally:
        distributed.teardown()
    if not info.is_main:
        return 0
    out = Path(args.out) if args.out else (path.parent.parent / "samples" / f"sample_seed{seed}.png")
    print(f"ddpm: sample grid {save_grid(x[:args.grid_images], out)}")
    if args.npz:
        print(f"ddpm: samples {save_npz(x, args.npz)} (arr_0: uint8 {tuple(x.shape[i] for i in (0, 2, 3, 1))})")
    if args.png_dir:
        print(f"ddpm: {len(x)} PNGs in {save_png_folder(x, args.png_dir)}")
    if args.trajectory:
        print(f"ddpm: trajectory figure {_trajectory(model, schedule, args, device)}")
    return 0


def _trajectory(model, schedule, args: argparse.Namespace, device) -> Path:
    """Record x_t and x0_hat of image 0 of the seed at 8 evenly spaced steps, as a figure."""
    from .images import trajectory_figure
    from .runtime import autocast, resolve_precision
    from .sampling import ddim_sample, ddpm_sample, image_generators, randn

    T = schedule.num_timesteps
    shown = {round(T - 1 - k * (T - 1) / 7) for k in range(8)}
    frames = []

    def record(i, x_t, x0):
        if i in shown or (args.sampler == "ddim" and len(frames) < 8):
            frames.append((i + 1, x_t[0].cpu(), x0[0].cpu()))

    gens = image_generators(args.seed, [0], device)
    cfg = model.config
    x_T = randn((1, cfg.image_channels, cfg.image_size, cfg.image_size), gens, device)
    dtype = resolve_precision(args.precision, device)

    def net(x, t):
        with autocast(device, dtype):
            return model(x, t)

    if args.sampler == "ddpm":
        ddpm_sample(net, schedule, x_T, gens, variance=args.variance or "beta", callback=record)
    else:
        ddim_sample(net, schedule, x_T, gens, num_steps=min(args.sample_steps, 8), eta=args.eta, callback=record)
    out = Path(args.trajectory)
    return trajectory_figure(frames, out)


def cmd_eval(args: argparse.Namespace) -> int:
    from .images import load_images
    from .metrics import digits_score, inception_status

    samples = load_images(args.samples)
    report: dict[str, Any] = {"samples": str(args.samples), "num_samples": len(samples), "dataset": args.dataset}
    if args.dataset.lower() == "digits":
        score = digits_score(samples)
        report["digits"] = dataclasses.asdict(score)
    missing = inception_status()
    if missing is None:
        import numpy as np

        from .data import load_dataset
        from .metrics import (
            feature_statistics,
            frechet_distance,
            inception_features,
            kernel_distance,
        )

        ref = load_dataset(args.dataset, samples.shape[-1], samples.shape[1], args.data_root)
        ref_x = _first_images(ref, args.max_reference)
        f_ref, f_fake = inception_features(ref_x), inception_features(samples)
        report["fid"] = frechet_distance(*feature_statistics(f_fake), *feature_statistics(f_ref))
        report["kid_mean"], report["kid_std"] = kernel_distance(f_fake, f_ref)
        report["num_reference"] = int(np.shape(f_ref)[0])
    else:
        report["fid"] = None
        report["fid_unavailable"] = missing
        if args.dataset.lower() != "digits":
            raise ValueError(missing)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _first_images(dataset, limit: int):
    """The first `limit` images of a dataset as one tensor."""
    import torch

    return torch.stack([dataset[i] for i in range(min(len(dataset), limit))])


def cmd_noise(args: argparse.Namespace) -> int:
    import torch

    from .data import load_dataset
    from .images import forward_process_figure
    from .schedule import NoiseSchedule

    diff = DiffusionConfig(dataset_name=args.dataset, timesteps_diff=args.num_timesteps, data_root=args.data_root)
    timesteps = list(_parse_ints(args.timesteps))
    dataset = load_dataset(diff.dataset_name, args.image_size, args.channels, diff.data_root)
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(dataset), generator=gen)[: args.num_images].tolist()
    x0 = torch.stack([dataset[i] for i in idx])
    path = forward_process_figure(x0, NoiseSchedule.from_config(diff), timesteps, args.out, seed=args.seed)
    print(f"ddpm: forward-process figure {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `ddpm` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="ddpm",
        description="Denoising Diffusion Probabilistic Models (Ho et al., 2020): train, sample, export, and show the forward process.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sample,export,noise,eval}")

    p = sub.add_parser("train", help="train a model; writes a run folder (config, checkpoints, metrics, samples)",
                       description="Train a DDPM. Every DiffusionConfig and ModelConfig field is a flag; a preset "
                       "sets a starting point that explicit flags override. The run folder receives config.json, "
                       "forward.png, metrics.jsonl, checkpoints/, samples/ and loss.png.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named configuration: 'demo' (digits, "
                   "~11 min on 2 CPU cores) or 'seed' (the seed's 128x128 FFHQ model)")
    p.add_argument("--dataset", dest="dataset_name", help="alias of --dataset-name")
    p.add_argument("--out", dest="out_dir", help="alias of --out-dir")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config, parameter count, and the "
                   "measured seconds per step and peak memory of a few steps; write nothing and exit")
    _add_config_arguments(p, DiffusionConfig, skip={"extra"})
    _add_config_arguments(p, ModelConfig, skip=set())
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate images from a trained run or checkpoint",
                       description="Generate images with the EMA weights of a checkpoint. Image i depends only on "
                       "(seed, i), so a seed reproduces a grid whatever the batch size.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", "--run-dir", dest="run", help="run folder: its newest checkpoint is used (under torchrun, "
                     "spell it --run-dir: torchrun takes --run for its own --run-path)")
    src.add_argument("--checkpoint", help="checkpoint file (RUN_DIR/checkpoints/step_*.pt) or an exported .safetensors")
    p.add_argument("--num-images", type=int, default=64, help="how many images (default: 64)")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm",
                   help="ddpm: ancestral sampling over all T steps (Algorithm 2); ddim: --sample-steps steps")
    p.add_argument("--sample-steps", type=int, default=50, help="steps of the ddim sampler (default: 50)")
    p.add_argument("--eta", type=float, default=0.0, help="ddim noise: 0 = deterministic, 1 = DDPM-like (default: 0)")
    p.add_argument("--variance", choices=("beta", "beta_tilde"), default=None,
                   help="ddpm reverse variance (default: the run's sample_variance)")
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=None,
                   help="clip predicted x_0 to [-1, 1] (default: the run's clip_x0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=64, help="images per network call (default: 64)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', ...")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="network precision (default: auto)")
    p.add_argument("--out", help="grid PNG path (default: RUN_DIR/samples/sample_seed<S>.png)")
    p.add_argument("--npz", help="also save the images as .npz (arr_0: uint8 N,H,W,C), the guided-diffusion convention")
    p.add_argument("--png-dir", help="also save every image as PNG_DIR/NNNNNN.png")
    p.add_argument("--grid-images", type=int, default=256, help="at most this many images in the grid (default: 256)")
    p.add_argument("--trajectory", metavar="PNG", help="also save a figure of x_t and predicted x_0 of image 0 at 8 steps")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="sample-quality metrics of a samples file against a dataset",
                       description="Score samples (.npz with arr_0, or a folder of PNGs). For --dataset digits: "
                       "FD-digits (Fréchet distance of a project-trained digits classifier's features against all "
                       "1,797 digits), the classifier's confidence and class coverage. For any dataset: FID and KID "
                       "with Inception-v3 when torch-fidelity and its weights are on this machine (nothing is "
                       "downloaded); otherwise a message says what is missing.")
    p.add_argument("samples", help="samples .npz (arr_0: uint8 N,H,W,C) or folder of PNGs")
    p.add_argument("--dataset", default="digits", help="reference dataset (default: digits)")
    p.add_argument("--data-root", default=None, help="folder holding named datasets")
    p.add_argument("--max-reference", type=int, default=50_000, help="reference images for FID (default: 50000)")
    p.add_argument("--json", help="also write the report to this file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export a checkpoint's EMA weights to .safetensors (configs included)",
                       description="Write the EMA weights of a checkpoint to a .safetensors file (configs in its "
                       "metadata, and in a .json beside it), for sharing and for `ddpm sample --checkpoint`.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder: its newest checkpoint is exported")
    src.add_argument("--checkpoint", help="checkpoint file (RUN_DIR/checkpoints/step_*.pt)")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("noise", help="figure of images noised by the forward process at several t",
                       description="Draw x_t ~ q(x_t | x_0) for a few dataset images at the given timesteps "
                       "(0 = the clean image, T = x_T) with the default schedule for --num-timesteps.")
    p.add_argument("--dataset", default="digits", help="dataset name, as for train (default: digits)")
    p.add_argument("--data-root", default=None, help="folder holding named datasets (default: $DDPM_DATA_ROOT or ./data)")
    p.add_argument("--timesteps", default="0,66,132,200", help="comma-separated t values (default: 0,66,132,200)")
    p.add_argument("--num-timesteps", type=int, default=200, help="T of the schedule (default: 200, the seed's)")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels (default: 32)")
    p.add_argument("--channels", type=int, default=1, choices=(1, 3), help="image channels (default: 1)")
    p.add_argument("--num-images", type=int, default=3, help="rows of the figure (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="chooses the images and the noise (default: 0)")
    p.add_argument("--out", default="forward.png", help="output PNG (default: forward.png)")
    p.set_defaults(func=cmd_noise)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ddpm` console script."""
    from .checkpoint import CheckpointError
    from .data import DatasetNotFoundError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetNotFoundError, CheckpointError, ValueError) as err:
        print(f"ddpm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
