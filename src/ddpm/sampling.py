"""Samplers: free functions of (model, schedule, x_T, generator) that only call model(x_t, t).

Every random draw goes through a torch.Generator. Passing one generator per image (a list) makes
image i depend only on its own seed, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .runtime import autocast
from .schedule import NoiseSchedule, _gather

Generators = torch.Generator | Sequence[torch.Generator] | None
Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


@torch.inference_mode()
def ddpm_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    generator: Generators = None,
    variance: str = "beta",
    clip_x0: bool = True,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), from x_T down to x_0.

    The mean is the posterior mean q(x_{t-1} | x_t, x0_hat) with x0_hat predicted from the noise;
    without clipping it equals Algorithm 2's 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps).

    Args:
        model: eps_theta(x_t, t).
        schedule: the forward process the model was trained with.
        x_T: (B, C, H, W) standard normal noise.
        generator: one generator, or one per image.
        variance: "beta" (sigma_t^2 = beta_t) or "beta_tilde" (the posterior variance); the paper
            found both give similar results.
        clip_x0: clip x0_hat to [-1, 1] at every step (the official implementation does).
        progress: show a progress bar over the T steps.
        callback: called as callback(t, x_t, x0_hat) at every step (e.g. to record a trajectory).
    Returns:
        (B, C, H, W) float32 samples, roughly in [-1, 1].
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance={variance!r}; choose 'beta' or 'beta_tilde'.")
    sigma2 = schedule.betas if variance == "beta" else schedule.posterior_variance
    x = x_T.float()
    steps = range(schedule.num_timesteps - 1, -1, -1)
    for i in tqdm(steps, desc="sampling (DDPM)", disable=not progress, leave=False):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        eps = model(x, t).float()
        x0 = schedule.predict_x0_from_eps(x, t, eps)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        if callback is not None:
            callback(i, x, x0)
        mean = schedule.q_posterior_mean(x0, x, t)
        if i > 0:
            x = mean + _gather(sigma2, t, x).sqrt() * randn(x.shape, generator, x.device)
        else:
            x = mean
    return x


def respaced_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """num_steps indices spread evenly over 0 .. T-1, descending, always ending at 0."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"sample steps={num_steps} must lie in 1 .. {num_timesteps} (the training T).")
    ts = torch.linspace(num_timesteps - 1, 0, num_steps).round().long().tolist()
    return sorted(set(ts), reverse=True)


@torch.inference_mode()
def ddim_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    generator: Generators = None,
    num_steps: int = 50,
    eta: float = 0.0,
    clip_x0: bool = True,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, Eq. 12) on an evenly respaced subsequence of the T steps.

    eta = 0 is deterministic given x_T; eta = 1 with all T steps has the DDPM marginals.
    """
    ts = respaced_timesteps(schedule.num_timesteps, num_steps)
    abar = schedule.alphas_cumprod.tolist()  # Python floats once: no device sync inside the loop
    x = x_T.float()
    for j, i in enumerate(tqdm(ts, desc="sampling (DDIM)", disable=not progress, leave=False)):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        eps = model(x, t).float()
        x0 = schedule.predict_x0_from_eps(x, t, eps)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - _gather(schedule.sqrt_alphas_cumprod, t, x) * x0) / _gather(schedule.sqrt_one_minus_alphas_cumprod, t, x)
        if callback is not None:
            callback(i, x, x0)
        a_t = abar[i]
        a_prev = abar[ts[j + 1]] if j + 1 < len(ts) else 1.0
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * randn(x.shape, generator, x.device)
    return x


def sample_images(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    num_images: int,
    seed: int = 0,
    sampler: str = "ddpm",
    num_steps: int | None = None,
    variance: str = "beta",
    clip_x0: bool = True,
    eta: float = 0.0,
    batch_size: int = 64,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    indices: Sequence[int] | None = None,
) -> torch.Tensor:
    """Generate num_images images in batches; image i depends only on (seed, i).

    Args:
        model: a UNet (its config gives the image shape); runs on its own device.
        sampler: "ddpm" (Algorithm 2, all T steps) or "ddim" (num_steps steps, eta).
        autocast_dtype: run the network under autocast to this dtype (e.g. torch.bfloat16).
        indices: which images of the run to make (default 0 .. num_images-1), e.g. one process's share.
    Returns:
        (len(indices), C, S, S) float32 images on the CPU, in [-1, 1].
    """
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"sampler={sampler!r}; choose 'ddpm' or 'ddim'.")
    param = next(model.parameters())
    device = param.device
    cfg = model.config
    shape = (cfg.image_channels, cfg.image_size, cfg.image_size)

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(device, autocast_dtype):
            return model(x, t)

    was_training = model.training
    model.eval()
    out = []
    try:
        wanted = list(range(num_images)) if indices is None else list(indices)
        for start in tqdm(range(0, len(wanted), batch_size), desc="batches", disable=not progress or len(wanted) <= batch_size):
            idx = wanted[start:start + batch_size]
            gens = image_generators(seed, idx, device)
            x_T = randn((len(idx), *shape), gens, device)
            if sampler == "ddpm":
                x = ddpm_sample(net, schedule, x_T, gens, variance=variance, clip_x0=clip_x0, progress=progress)
            else:
                x = ddim_sample(net, schedule, x_T, gens, num_steps=num_steps or 50, eta=eta, clip_x0=clip_x0, progress=progress)
            out.append(x.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, *shape)
