"""Generate images with a trained model: load a run or checkpoint, sample in batches and shards, gather.

The one path that `ddpm sample`, the training grids, the benchmarks and editing use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .config import DiffusionConfig, ModelConfig
from .errors import UsageError
from .images import to_uint8
from .runtime import autocast, resolve_device, resolve_precision
from .samplers import (
    DEFAULT_SAMPLER,
    get_sampler,
    image_generators,
    randn,
    resolve_steps,
    run_sampler,
)
from .schedule import NoiseSchedule
from .unet import UNet


@dataclass
class LoadedModel:
    """A trained model ready to sample: EMA weights in eval mode, its configs and schedule."""

    model: UNet
    diffusion_config: DiffusionConfig
    model_config: ModelConfig
    schedule: NoiseSchedule
    step: int  # the training step of the weights
    path: Path  # the checkpoint or export they came from
    class_names: list[str] = field(default_factory=list)  # of a class-conditional model, by index

    def class_index(self, name_or_index: str | int) -> int:
        """The class index a user means by a name ("7", "cat") or an index; errors list the choices."""
        n = self.model_config.num_classes
        if n == 0:
            raise UsageError(f"{self.path} is an unconditional model: it cannot be asked for a class. Train with "
                             "--class-conditional (ModelConfig.num_classes) to sample by class.")
        names = self.class_names or [str(i) for i in range(n)]
        text = str(name_or_index)
        if text in names:
            return names.index(text)
        if text.lstrip("-").isdigit() and 0 <= int(text) < n:
            return int(text)
        raise UsageError(f"class {text!r} is not one of this model's {n} classes: indices 0 .. {n - 1} or names "
                         f"{', '.join(names[:20])}{', ...' if n > 20 else ''}.")

    def resolve(self, sampler: str | None, num_steps: int | None, clip_x0: bool | None,
                options: dict[str, Any]) -> tuple[str, int | None, bool, dict[str, Any]]:
        """(sampler, num_steps, clip_x0, options) with every None replaced by the run's own setting."""
        cfg = self.diffusion_config
        if sampler is None:
            sampler = cfg.sampler
            num_steps = num_steps if num_steps is not None else (cfg.sample_steps or None)
        options = dict(options)
        if "variance" in get_sampler(sampler).options and options.get("variance") is None:
            options["variance"] = cfg.sample_variance
        return sampler, num_steps, cfg.clip_x0 if clip_x0 is None else clip_x0, options


def load_model(run: str | Path | None = None, checkpoint: str | Path | None = None,
               device: torch.device | str = "cpu") -> LoadedModel:
    """The EMA model of a checkpoint, an export or a diffusers model folder, or of a run folder's newest
    checkpoint that loads."""
    from .checkpoint import load_source, model_from_state

    state, path = load_source(checkpoint, run, device)
    model, diff_config, model_config, step = model_from_state(state, path, device)
    schedule = NoiseSchedule.from_config(diff_config).to(device)
    return LoadedModel(model, diff_config, model_config, schedule, step, Path(path), list(state.get("class_names", [])))


def rows_of_classes(num_images: int, classes: Sequence[int]) -> tuple[torch.Tensor, int]:
    """(labels, images per row) for a grid with one row per class: ceil(num_images / classes) each."""
    per_row = max(1, -(-num_images // max(len(classes), 1)))
    return torch.tensor([c for c in classes for _ in range(per_row)], dtype=torch.long), per_row


def network(model: torch.nn.Module, autocast_dtype: torch.dtype | None = None, guidance_scale: float = 1.0):
    """What the samplers call: the model's output f(x, t[, y]) (eps, v or x0) under autocast, with
    classifier-free guidance."""
    device = next(model.parameters()).device
    eps = guided(model, guidance_scale)

    def net(x: torch.Tensor, t: torch.Tensor, *label: torch.Tensor) -> torch.Tensor:
        with autocast(device, autocast_dtype):
            return eps(x, t, *label)

    return net


def guided(model: torch.nn.Module, guidance_scale: float):
    """f(x, t, y) with classifier-free guidance (Ho & Salimans 2022): f_u + w (f_c - f_u).

    Written for eps in the paper; for a v or x0 model it is the same guidance, since for a given x_t
    each of them is an affine function of eps.

    w = 1 is the conditional model alone and w = 0 the unconditional one (one pass each); any other
    w runs both as one batched forward of twice the batch.
    """
    null = model.config.num_classes

    def eps(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None or guidance_scale == 1.0:
            return model(x, t, y)
        if guidance_scale == 0.0:
            return model(x, t, torch.full_like(y, null))
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null)]))
        cond, uncond = both.float().chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    return eps


def sample_images(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    num_images: int,
    seed: int = 0,
    sampler: str = DEFAULT_SAMPLER,
    num_steps: int | None = None,
    spacing: str | None = None,
    clip_x0: bool = True,
    batch_size: int = 64,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    indices: Sequence[int] | None = None,
    y: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    **options: Any,
) -> torch.Tensor:
    """Generate num_images images in batches; image i depends only on (seed, i).

    Args:
        model: a UNet (its config gives the image shape); runs on its own device.
        sampler: a name from ddpm.samplers.SAMPLERS; num_steps its network calls (None = its default).
        spacing: where the timesteps lie, one of SPACINGS (None = the sampler's default).
        autocast_dtype: run the network under autocast to this dtype (e.g. torch.bfloat16).
        indices: which images of the run to make (default 0 .. num_images-1), e.g. one process's share.
        y: (num_images,) class labels of a class-conditional model, or None.
        guidance_scale: classifier-free guidance w with labels (1 = conditional, 0 = unconditional).
        options: sampler settings (variance for ddpm, eta for ddim).
    Returns:
        (len(indices), C, S, S) float32 images on the CPU, in [-1, 1].
    """
    get_sampler(sampler)  # fail on a bad name before any work
    if num_images < 0:
        raise ValueError(f"num_images={num_images} must be >= 0.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    param = next(model.parameters())
    device = param.device
    cfg = model.config
    shape = (cfg.image_channels, cfg.image_size, cfg.image_size)

    if y is not None and len(y) != num_images:
        raise ValueError(f"{len(y)} class labels for {num_images} images.")
    net = network(model, autocast_dtype, guidance_scale)
    was_training = model.training
    model.eval()
    out = []
    try:
        wanted = list(range(num_images)) if indices is None else list(indices)
        for start in tqdm(range(0, len(wanted), batch_size), desc="batches", disable=not progress or len(wanted) <= batch_size):
            idx = wanted[start:start + batch_size]
            gens = image_generators(seed, idx, device)
            x_T = randn((len(idx), *shape), gens, device)
            y_b = None if y is None else y[torch.as_tensor(idx)].to(device)
            x = run_sampler(sampler, net, schedule, x_T, gens, num_steps=num_steps, spacing=spacing,
                            clip_x0=clip_x0, y=y_b, progress=progress, **options)
            out.append(x.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, *shape)


@dataclass
class Generated:
    """What generate() made: the images (on the main process; None elsewhere) and how."""

    images: np.ndarray | None  # (N, H, W, C) uint8 in 0..255, as a samples .npz stores them
    loaded: LoadedModel
    sampler: str
    timesteps: list[float]  # the noise levels visited (ints, or between timesteps for karras/exponential)
    is_main: bool
    world_size: int
    labels: torch.Tensor | None = None  # the class asked for, per image (class-conditional models)
    per_row: int | None = None  # images per grid row when each row is one class

    @property
    def network_calls(self) -> int:
        """Network evaluations per image (a batched forward counts once; Heun makes two a step)."""
        return get_sampler(self.sampler).calls(len(self.timesteps))


def generate(
    run: str | Path | None = None,
    checkpoint: str | Path | None = None,
    num_images: int = 64,
    seed: int = 0,
    sampler: str | None = None,
    num_steps: int | None = None,
    spacing: str | None = None,
    clip_x0: bool | None = None,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    announce: Any = None,
    classes: Sequence[str | int] | None = None,
    guidance_scale: float | None = None,
    **options: Any,
) -> Generated:
    """Load a model and sample num_images images, split over the processes torchrun started (if any).

    Each process makes a contiguous share; image i depends only on (seed, i), so the gathered
    result equals the single-process one. Each share is converted to uint8 where it was made and
    sent to the main process alone (distributed.gather_to_main): the images are returned there, as
    (N, H, W, C) uint8, and None elsewhere. Settings left None take the run's own (its sampler and
    sample_steps, clip_x0, the ddpm variance, guidance_scale). classes (names or indices) asks a
    class-conditional model for those classes, one row of the grid each (one class: all images).
    announce(text) is called on the main process before sampling starts.
    """
    if sampler is not None:
        get_sampler(sampler)  # a bad name fails before the model loads
    info, dev = distributed.setup(resolve_device(device))
    try:
        loaded = load_model(run, checkpoint, dev)
        sampler, num_steps, clip, options = loaded.resolve(sampler, num_steps, clip_x0, options)
        ts = resolve_steps(sampler, loaded.schedule, num_steps, spacing)
        calls = get_sampler(sampler).calls(len(ts))
        y, per_row = None, None
        if classes:
            wanted = [loaded.class_index(c) for c in classes]
            y, per_row = rows_of_classes(num_images, wanted) if len(wanted) > 1 else (torch.full((num_images,), wanted[0]), None)
            num_images = len(y)
        w = loaded.diffusion_config.guidance_scale if guidance_scale is None else guidance_scale
        if announce is not None and info.is_main:
            announce(f"{num_images} images from {loaded.path} (step {loaded.step}) with {sampler}, "
                     f"{calls} network calls" + (f", {info.world_size} processes" if info.enabled else "")
                     + (f", classes {sorted(set(y.tolist()))} at guidance {w:g}" if y is not None else ""))
        share = distributed.shard(num_images, info)
        x = sample_images(loaded.model, loaded.schedule, num_images, seed=seed, sampler=sampler, num_steps=calls,
                          spacing=spacing, clip_x0=clip, batch_size=batch_size,
                          autocast_dtype=resolve_precision(precision, dev), progress=progress and info.is_main,
                          indices=share, y=y, guidance_scale=w, **options)
        # uint8 before gathering: 4x less to send and to hold, and what every writer stores anyway.
        images = distributed.gather_to_main(torch.from_numpy(to_uint8(x)), num_images)
    finally:
        distributed.teardown(info)
    return Generated(None if images is None else images.numpy(), loaded, sampler, ts, info.is_main,
                     info.world_size, y, per_row)


def trajectory(
    loaded: LoadedModel,
    sampler: str | None = None,
    seed: int = 0,
    num_steps: int | None = None,
    spacing: str | None = None,
    clip_x0: bool | None = None,
    precision: str = "auto",
    num_frames: int = 8,
    **options: Any,
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """x_t and the predicted x_0 of image 0 of `seed`, at num_frames evenly spread steps of a run.

    The same sampler, settings and image as sample_images with that seed (the run's own clipping
    and variance where not given). Returns [(paper step t (1 .. T), x_t, x0_hat)], each (C, H, W).
    """
    model, schedule = loaded.model, loaded.schedule
    device = next(model.parameters()).device
    sampler, num_steps, clip, options = loaded.resolve(sampler, num_steps, clip_x0, options)
    ts = resolve_steps(sampler, schedule, num_steps, spacing)
    shown = {round(k * (len(ts) - 1) / max(num_frames - 1, 1)) for k in range(num_frames)}
    frames: list[tuple[float, torch.Tensor, torch.Tensor]] = []

    def record(step) -> None:
        if step.index in shown:
            frames.append((step.t + 1, step.x[0].cpu(), step.x0[0].cpu()))

    net = network(model, resolve_precision(precision, device))

    gens = image_generators(seed, [0], device)
    cfg = loaded.model_config
    x_T = randn((1, cfg.image_channels, cfg.image_size, cfg.image_size), gens, device)
    run_sampler(sampler, net, schedule, x_T, gens, num_steps=get_sampler(sampler).calls(len(ts)), spacing=spacing,
                clip_x0=clip, hook=record, **options)
    return frames
