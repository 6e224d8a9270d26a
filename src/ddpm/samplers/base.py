"""What every sampler shares: noise with per-image seeds, timestep lists, the denoising step, hooks.

A sampler is a free function (model, schedule, x_T, generator, timesteps, ...) that calls only
model(x_t, t) (model(x_t, t, y) with class labels). It walks an explicit, descending list of
timesteps: sampling from x_T starts at T-1, editing (img2img) starts lower. After every step a
hook may look at the step and replace x (inpainting keeps the known pixels that way).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..config import SPACINGS
from ..errors import UsageError
from ..schedule import NoiseSchedule, _gather
from .noise import BrownianNoise, image_seeds
from .sigmas import SigmaTable, continuous_timesteps, lowest_spaced_log_snr

Generators = torch.Generator | Sequence[torch.Generator] | None
Model = Callable[..., torch.Tensor]  # f_theta(x_t, t[, y]): eps, v or x0, as schedule.prediction says



@dataclass
class Step:
    """One step of a sampler, as a hook sees it.

    index: 0-based position in the timestep list; t: the timestep of x (0 .. T-1; fractional between
    the model's own timesteps for karras/exponential spacing);
    t_next: the timestep of x_next (-1 = the clean image x_0); x: x_t; x0: the (clipped) predicted
    x_0; x_next: what the sampler computed for t_next.
    """

    index: int
    t: float
    t_next: float
    x: torch.Tensor
    x0: torch.Tensor
    x_next: torch.Tensor


# Called after every step; returns a replacement for step.x_next, or None to keep it.
Hook = Callable[[Step], torch.Tensor | None]


def randn(shape: Sequence[int], generator: Generators, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise of shape (B, ...); with a list of generators, row i comes from generator i."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]} images.")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=device) for g in generator])


def image_generators(seed: int, indices: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per image index, seeded from (seed, index), so image i is the same in any batch."""
    return [torch.Generator(device=device).manual_seed(seed * 1_000_003 + i) for i in indices]


def timestep_list(schedule: NoiseSchedule, num_steps: int, spacing: str = "uniform",
                  start: int | None = None) -> list[float]:
    """num_steps distinct timesteps from `start` (default T-1) down to 0, descending.

    spacing "uniform" spreads them evenly in t (DDIM's choice); "logsnr" spreads them evenly in
    log-SNR = log(alphā / (1 - alphā)), which puts more of them near t = 0, where the image
    changes most per unit of t (DPM-Solver's choice), from no lower than MIN_SPACED_LOG_SNR
    (the first step is `start` all the same). Both round to the model's own timesteps
    (ints). "karras" (Karras et al. 2022, rho = 7) and "exponential" (log-SNR again, unrounded)
    give fractional timesteps between the model's own (samplers/sigmas.py).
    """
    T = schedule.num_timesteps
    start = T - 1 if start is None else int(start)
    if not 0 <= start < T:
        raise ValueError(f"start timestep {start} must lie in 0 .. {T - 1}.")
    if not 1 <= num_steps <= start + 1:
        raise UsageError(f"sample steps={num_steps} must lie in 1 .. {start + 1} (the training T is {T}).")
    if spacing not in SPACINGS:
        raise UsageError(f"spacing={spacing!r}; choose one of {SPACINGS}.")
    if num_steps == 1:
        return [start]
    if spacing in ("karras", "exponential"):
        return continuous_timesteps(SigmaTable(schedule), num_steps, spacing, start)
    if spacing == "uniform":
        ts = torch.linspace(start, 0, num_steps, dtype=torch.float64).round().long().tolist()
    elif float(schedule.alphas_cumprod[start]) <= 0.0:
        # Zero terminal SNR: log-SNR is -inf at `start`, so spread the other steps below it.
        return [start] + timestep_list(schedule, num_steps - 1, spacing, start - 1)
    else:
        abar = schedule.alphas_cumprod[: start + 1].cpu()
        lam = (abar.log() - torch.log1p(-abar)).numpy()  # decreasing in t
        lowest = lowest_spaced_log_snr(float(lam[start]))  # ts[0] is `start` either way (below)
        targets = torch.linspace(lowest, float(lam[0]), num_steps, dtype=torch.float64).numpy()
        # Continuous t for each target by interpolating lambda(t) (np.interp wants increasing x).
        import numpy as np

        t_cont = np.interp(targets, lam[::-1], np.arange(start, -1, -1, dtype=np.float64))
        ts = [int(round(v)) for v in t_cont]
    ts[0], ts[-1] = start, 0
    return _strictly_decreasing(ts)


def _strictly_decreasing(ts: list[int]) -> list[int]:
    """Rounded timesteps made distinct again (rounding can merge neighbours), ends kept in place:
    x is at ts[0]'s noise level, and the last step lands on 0."""
    for i in range(len(ts) - 2, 0, -1):
        ts[i] = max(ts[i], ts[i + 1] + 1)
    for i in range(1, len(ts)):
        ts[i] = min(ts[i], ts[i - 1] - 1)
    return ts


def integer_timesteps(ts: Sequence[float]) -> list[int]:
    """A descending timestep list rounded to the model's own timesteps, still distinct and as long
    (for samplers that step between table entries only: ddpm)."""
    return _strictly_decreasing([int(round(t)) for t in ts])


def walk(timesteps: Sequence[float], desc: str, progress: bool) -> Iterator[tuple[int, float, float]]:
    """(index, t, t_next) along a descending timestep list, t_next = -1 after the last (the clean
    image), with a progress bar; an empty list is an error (every sampler makes at least one call)."""
    ts = list(timesteps)
    if not ts:
        raise ValueError(f"{desc} needs at least one timestep.")
    for j, t in enumerate(tqdm(ts, desc=f"sampling ({desc})", disable=not progress, leave=False)):
        yield j, t, ts[j + 1] if j + 1 < len(ts) else -1


def brownian_noise(table: SigmaTable, x: torch.Tensor, generator: Generators) -> BrownianNoise:
    """Each image's Brownian motion over the model's sigma range (seeded from its generator)."""
    top = table.num_timesteps - 1
    while math.isinf(table.sigma(top)):
        top -= 1
    return BrownianNoise(image_seeds(generator, x.shape[0]), x.shape[1:], table.sigma(0), table.sigma(top), x.device)


def check_non_negative(**values: float) -> None:
    """Each named sampler setting (eta, s_noise, s_churn, ...) must be a finite number >= 0."""
    for name, value in values.items():
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{name}={value} must be a finite number >= 0.")


def denoise(
    model: Model,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    i: float,
    t_model: float,
    clip_x0: bool,
    y: torch.Tensor | None = None,
    need_eps: bool = False,
    abar: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step every sampler starts with: the network's output as (x0, eps), x0 clipped.

    The output is read as the schedule's prediction type (schedule.split: eps, v or x0), so every
    sampler, guidance and editing work unchanged for each.

    Args:
        i: the index of x's timestep in schedule; or, with abar given, a noise level between two
            of its timesteps.
        t_model: the network's timestep for it (schedule.timesteps[i], or the fractional timestep;
            a Python number, so that the loop never waits on the device to read it).
        need_eps: recompute eps from the clipped x0, so that (x0, eps) stay consistent with x
            (DDIM needs that; ancestral sampling only uses x0).
        abar: alphā at x's noise level, where i is not one of the schedule's own indices.
    Returns:
        (x0_hat, eps_hat) in float32.
    """
    b = x.shape[0]
    if abar is None:
        t_idx = torch.full((b,), int(i), device=x.device, dtype=torch.long)
        a = _gather(schedule.sqrt_alphas_cumprod, t_idx, x)
        s = _gather(schedule.sqrt_one_minus_alphas_cumprod, t_idx, x)
    else:
        a, s = math.sqrt(abar), math.sqrt(1.0 - abar)
    is_int = float(t_model).is_integer()
    t_in = torch.full((b,), int(t_model) if is_int else float(t_model), device=x.device,
                      dtype=torch.long if is_int else torch.float32)
    out = (model(x, t_in) if y is None else model(x, t_in, y)).float()
    x0, eps = schedule.split(x, t_idx, out) if abar is None else schedule.split_at(x, abar, out)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        if need_eps:
            eps = (x - a * x0) / s
    return x0, eps


def denoise_t(model: Model, schedule: NoiseSchedule, table: SigmaTable, x: torch.Tensor, t: float, clip_x0: bool,
              y: torch.Tensor | None = None, need_eps: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """denoise() at timestep t of the training schedule, a table entry or between two (table: its SigmaTable)."""
    if float(t).is_integer():
        return denoise(model, schedule, x, int(t), table.model_time(t), clip_x0, y, need_eps)
    return denoise(model, schedule, x, t, table.model_time(t), clip_x0, y, need_eps, abar=table.alpha_bar(t))


def run_hook(hook: Hook | None, index: int, t: float, t_next: float, x: torch.Tensor, x0: torch.Tensor,
             x_next: torch.Tensor) -> torch.Tensor:
    """x_next, or the hook's replacement for it."""
    if hook is None:
        return x_next
    out = hook(Step(index, t, t_next, x, x0, x_next))
    return x_next if out is None else out


def log_snr(abar: float) -> float:
    """lambda = log(alpha / sigma) = 0.5 log(alphā / (1 - alphā)); +inf at alphā = 1 (clean data),
    -inf at alphā = 0 (pure noise: a zero-terminal-SNR schedule's x_T)."""
    if abar <= 0.0:
        return -math.inf
    return math.inf if abar >= 1.0 else 0.5 * (math.log(abar) - math.log1p(-abar))
