"""The DDPM training objective (Ho et al. 2020, Algorithm 1, L_simple of Eq. 14)."""

from __future__ import annotations

import torch
from torch import nn

from .schedule import NoiseSchedule


def diffusion_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise-prediction MSE with t drawn uniformly and independently for every image.

    Args:
        model: eps_theta(x_t, t).
        schedule: the forward process.
        x0: (B, C, H, W) clean images in [-1, 1].
        generator: source of t and the noise, on x0's device.
        t, noise: (B,) timesteps and noise like x0, drawn by the caller; None = draw them here.
        y: (B,) class labels for a class-conditional model, or None.
    Returns:
        (loss, per_image_loss (B,), t (B,)): loss is the batch mean, in float32.
    """
    if t is None:
        t = torch.randint(0, schedule.num_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_t = schedule.q_sample(x0, t, noise)
    eps = model(x_t, t) if y is None else model(x_t, t, y)
    per_image = (eps.float() - noise).pow(2).mean(dim=(1, 2, 3))
    return per_image.mean(), per_image, t
