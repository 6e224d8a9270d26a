"""Editing with a trained model, no retraining: inpainting, image-to-image, inversion, interpolation.

- inpaint: RePaint (Lugmayr et al. 2022): ancestral sampling where, after every step, the known
  pixels are replaced by the input noised to the same level; optional resampling (jump back J
  steps, U times) lets the filled region agree with the known one.
- img2img: SDEdit (Meng et al. 2022): noise the input to t = strength * T, then denoise with any
  sampler from there.
- invert / interpolate: DDIM inversion (Song et al. 2021, Sec. 5): run the deterministic sampler
  backwards from an image to its x_T; spherical interpolation between two such latents, decoded.

Like the samplers, these take (model, schedule, ...) and call only model(x_t, t[, y]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .config import SAMPLE_VARIANCES
from .samplers import Generators, Model, randn, run_sampler, timestep_list
from .samplers.base import denoise
from .samplers.ddim import ddim_sample
from .schedule import NoiseSchedule, _gather


def repaint_levels(num_timesteps: int, jump_length: int, resample: int) -> list[int]:
    """RePaint's walk over noise levels L = T .. 0 (x_L has L steps of noise; 0 = the clean image).

    Every jump_length levels on the way down (at T - J, T - 2J, ...) it goes back up jump_length
    levels, resample - 1 times, so each stretch is denoised resample times; the bottom stretch, of
    1 .. J levels, is denoised once. resample = 1 is plain ancestral sampling. Any T works: the
    jump points count down from T, so a jump never climbs above T.
    """
    if jump_length < 1 or resample < 1:
        raise ValueError(f"jump_length={jump_length} and resample={resample} must both be >= 1.")
    jumps = {level: resample - 1 for level in range(num_timesteps - jump_length, 0, -jump_length)}
    level, levels = num_timesteps, [num_timesteps]
    while level > 0:
        level -= 1
        levels.append(level)
        if jumps.get(level, 0) > 0:
            jumps[level] -= 1
            for _ in range(jump_length):
                level += 1
                levels.append(level)
    return levels


@torch.inference_mode()
def inpaint(
    model: Model,
    schedule: NoiseSchedule,
    x_known: torch.Tensor,
    mask: torch.Tensor,
    generator: Generators = None,
    jump_length: int = 5,
    resample: int = 10,
    variance: str = "beta",
    clip_x0: bool = True,
    y: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Fill the masked pixels of x_known (RePaint).

    Args:
        x_known: (B, C, H, W) images in [-1, 1].
        mask: (B or 1, 1 or C, H, W), 1 = fill, 0 = keep.
        jump_length, resample: RePaint's J and U (see repaint_levels). The default U = 10, J = 5
            kept the digit's label in 95% of band-erased digits against 84% for U = 1 (plain
            replacement), at ~10x the T network calls (docs/edit_table.md).
        variance: the ancestral step's variance, "beta" or "beta_tilde".
    Returns:
        (B, C, H, W): x_known where mask = 0, exactly; the model's completion where mask = 1.
    """
    if variance not in SAMPLE_VARIANCES:
        raise ValueError(f"variance={variance!r}; choose one of {SAMPLE_VARIANCES}.")
    x0 = x_known.float()
    m = mask.to(x0.device, x0.dtype).expand_as(x0)
    sigma2 = schedule.betas if variance == "beta" else schedule.posterior_variance
    levels = repaint_levels(schedule.num_timesteps, jump_length, resample)
    b = x0.shape[0]
    x = randn(x0.shape, generator, x0.device)
    pairs = list(zip(levels, levels[1:], strict=False))
    for now, nxt in tqdm(pairs, desc="inpainting (RePaint)", disable=not progress, leave=False):
        if nxt > now:  # back up one level: x_{L+1} ~ q(x_{L+1} | x_L)
            t = torch.full((b,), now, device=x.device, dtype=torch.long)
            x = schedule.q_step(x, t, randn(x.shape, generator, x.device))
            continue
        i = now - 1  # schedule index of level `now`
        t = torch.full((b,), i, device=x.device, dtype=torch.long)
        x0_hat, _ = denoise(model, schedule, x, i, i, clip_x0, y)
        unknown = schedule.q_posterior_mean(x0_hat, x, t)
        if i > 0:
            unknown = unknown + _gather(sigma2, t, x).sqrt() * randn(x.shape, generator, x.device)
            known = schedule.q_sample(x0, t - 1, randn(x.shape, generator, x.device))
        else:
            known = x0
        x = m * unknown + (1 - m) * known
    return m * x + (1 - m) * x0  # the known pixels, bit for bit


def strength_start(schedule: NoiseSchedule, strength: float) -> int | None:
    """The schedule index img2img starts from for a strength in [0, 1] (None: strength 0, no change)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength} must lie in [0, 1] (0 = the input unchanged, 1 = a new sample).")
    level = round(strength * schedule.num_timesteps)
    return None if level == 0 else level - 1


@torch.inference_mode()
def img2img(
    model: Model,
    schedule: NoiseSchedule,
    x_input: torch.Tensor,
    strength: float,
    generator: Generators = None,
    sampler: str = "ddpm",
    num_steps: int | None = None,
    y: torch.Tensor | None = None,
    progress: bool = False,
    spacing: str | None = None,
    **options,
) -> torch.Tensor:
    """SDEdit: x_t ~ q(x_t | x_input) at t = strength * T, then any sampler from t down to x_0.

    strength 0 returns the input unchanged; strength 1 starts from pure noise, which is exactly
    sampling (the same draws as sample_images with the same generators). num_steps counts the
    network calls from t (None: the sampler's default, at most t + 1); spacing (one of SPACINGS;
    None: the sampler's default) places them.
    """
    start = strength_start(schedule, strength)
    if start is None:
        return x_input.float().clone()
    noise = randn(x_input.shape, generator, x_input.device)
    if start == schedule.num_timesteps - 1:
        x_t = noise
    else:
        t = torch.full((x_input.shape[0],), start, device=x_input.device, dtype=torch.long)
        x_t = schedule.q_sample(x_input.float(), t, noise)
    return run_sampler(sampler, model, schedule, x_t, generator, num_steps=num_steps, spacing=spacing, start=start,
                       y=y, progress=progress, **options)


@torch.inference_mode()
def ddim_invert(
    model: Model,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    num_steps: int = 50,
    clip_x0: bool = False,
    y: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM inversion: the x_T from which ddim_decode(num_steps) returns about x0.

    The DDIM step run backwards over the same timesteps, ascending: at each one, eps and x0_hat
    at the current level carried to the next, x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next) eps.
    The clean image stands in for x at the first timestep (alphā there is ~1).
    """
    ts = timestep_list(schedule, num_steps)[::-1]
    abar = schedule.alphas_cumprod.tolist()
    x = x0.float()
    for j, i in enumerate(tqdm(ts[:-1], desc="inverting (DDIM)", disable=not progress, leave=False)):
        x0_hat, eps = denoise(model, schedule, x, i, i, clip_x0, y, need_eps=True)
        a_next = abar[ts[j + 1]]
        x = math.sqrt(a_next) * x0_hat + math.sqrt(1 - a_next) * eps
    return x


def ddim_decode(model: Model, schedule: NoiseSchedule, x_T: torch.Tensor, num_steps: int = 50,
                clip_x0: bool = False, y: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """DDIM (eta = 0) from x_T over the timesteps ddim_invert used."""
    return ddim_sample(model, schedule, x_T, None, timestep_list(schedule, num_steps), 0.0, clip_x0, y, None, progress)


def slerp(z0: torch.Tensor, z1: torch.Tensor, alphas: Sequence[float]) -> torch.Tensor:
    """Spherical interpolation between two latents (each (C, H, W)) at each alpha: (K, C, H, W).

    Gaussian latents live near a sphere; a straight line between two of them passes through
    improbably small norms, the arc does not. alpha = 0 and 1 return z0 and z1 exactly.
    """
    a, b = z0.double().flatten(), z1.double().flatten()
    theta = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))
    frames = []
    for alpha in alphas:
        if alpha == 0:
            frames.append(z0.double())
        elif alpha == 1:
            frames.append(z1.double())
        elif theta.abs() < 1e-6:  # parallel: the arc is the line
            frames.append((1 - alpha) * z0.double() + alpha * z1.double())
        else:
            w0, w1 = torch.sin((1 - alpha) * theta) / torch.sin(theta), torch.sin(alpha * theta) / torch.sin(theta)
            frames.append(w0 * z0.double() + w1 * z1.double())
    return torch.stack(frames).to(z0.dtype)


def interpolate(model: Model, schedule: NoiseSchedule, x_a: torch.Tensor, x_b: torch.Tensor, frames: int = 8,
                num_steps: int = 50, clip_x0: bool = False, progress: bool = False, y: int | None = None) -> torch.Tensor:
    """frames images walking from x_a to x_b (each (C, H, W)) through their DDIM latents.

    y: the class of a class-conditional model, the same for both ends and every frame (None: none).
    Returns (frames, C, H, W); the end frames are the DDIM reconstructions of x_a and x_b.
    """
    if frames < 2:
        raise ValueError(f"frames={frames} must be at least 2 (the two end points).")

    def labels(n: int) -> torch.Tensor | None:
        return None if y is None else torch.full((n,), y, device=x_a.device, dtype=torch.long)

    z = ddim_invert(model, schedule, torch.stack([x_a, x_b]), num_steps, clip_x0, labels(2), progress=progress)
    path = slerp(z[0], z[1], [k / (frames - 1) for k in range(frames)])
    return ddim_decode(model, schedule, path, num_steps, clip_x0, labels(frames), progress=progress)


def repaint_network_calls(num_timesteps: int, jump_length: int, resample: int) -> int:
    """Network calls per image of inpaint(): one per step down RePaint's walk."""
    levels = repaint_levels(num_timesteps, jump_length, resample)
    return sum(b < a for a, b in zip(levels, levels[1:], strict=False))
