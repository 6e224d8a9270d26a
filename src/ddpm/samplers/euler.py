"""Euler, Euler-ancestral and Heun (Karras et al. 2022, "EDM", Algorithms 1 and 2), on sigma.

These solvers are written in the variance-exploding form x~ = x_t / alpha = x0 + sigma eps with
sigma = sqrt((1 - alphā) / alphā), where the probability-flow ODE is dx~/dsigma = eps_hat =
(x~ - D(x~)) / sigma. The state between steps stays x_t (what the network and the hooks see);
each step maps it to x~ and back. Euler on this ODE is DDIM (eta = 0), step for step.

Heun's second evaluation (at the step's end) is not reused by the next step, so n timesteps cost
2n - 1 network calls: the final step, to the clean image, is an Euler step (EDM Alg. 1, line 6).
Its churn (Alg. 2) adds noise to raise sigma by gamma = min(s_churn / n, sqrt 2 - 1) on
[s_tmin, s_tmax] before each step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import UsageError
from ..schedule import NoiseSchedule
from .base import (
    Generators,
    Hook,
    Model,
    brownian_noise,
    check_non_negative,
    denoise,
    denoise_t,
    run_hook,
    walk,
)
from .sigmas import SigmaTable


def _vp(x_ve: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_t = alpha x~, alpha = 1 / sqrt(1 + sigma^2)."""
    return x_ve / math.sqrt(1.0 + sigma * sigma)


@torch.inference_mode()
def euler_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    generator: Generators = None,
    timesteps: Sequence[float] = (),
    clip_x0: bool = True,
    y: torch.Tensor | None = None,
    hook: Hook | None = None,
    progress: bool = False,
    ancestral: bool = False,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler over the given descending timesteps, ending at the clean image; one network call each.

    Deterministic: x~_next = x0_hat + sigma_next eps_hat. Ancestral (k-diffusion's
    `sample_euler_ancestral`): the step goes down to sigma_down and adds noise sigma_up z, with
    sigma_up = min(sigma_next, eta sigma_next sqrt(1 - sigma_next^2 / sigma^2)) and
    sigma_down^2 + sigma_up^2 = sigma_next^2, so x~_next has the variance a true posterior draw
    would (eta = 1). z comes from each image's Brownian motion (noise.py). Other arguments as
    for ddpm_sample.
    """
    check_non_negative(eta=eta, s_noise=s_noise)
    table = SigmaTable(schedule)
    x = x_T.float()
    noise = brownian_noise(table, x, generator) if ancestral and eta > 0 and s_noise > 0 else None
    desc = "Euler ancestral" if ancestral else "Euler"
    for j, t, t_next in walk(timesteps, desc, progress):
        x0, eps = denoise_t(model, schedule, table, x, t, clip_x0, y, need_eps=True)
        if t_next < 0:
            x_next = x0
        else:
            sigma, sigma_n = table.sigma(t), table.sigma(t_next)
            sigma_down, sigma_up = sigma_n, 0.0
            if noise is not None:
                ratio = sigma_n / sigma  # 0 where sigma is infinite (zero terminal SNR)
                sigma_up = min(sigma_n, eta * sigma_n * math.sqrt(max(1.0 - ratio * ratio, 0.0)))
                sigma_down = math.sqrt(sigma_n * sigma_n - sigma_up * sigma_up)
            x_ve = x0 + sigma_down * eps
            if sigma_up > 0:
                x_ve = x_ve + (sigma_up * s_noise) * noise(sigma, sigma_n)
            x_next = _vp(x_ve, sigma_n)
        x = run_hook(hook, j, t, t_next, x, x0, x_next)
    return x


@torch.inference_mode()
def heun_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    generator: Generators = None,
    timesteps: Sequence[float] = (),
    clip_x0: bool = True,
    y: torch.Tensor | None = None,
    hook: Hook | None = None,
    progress: bool = False,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Heun's second-order method over the given timesteps (EDM Alg. 1; with s_churn > 0, Alg. 2).

    x~_hat = x~ + sqrt(sigma_hat^2 - sigma^2) s_noise z at sigma_hat = sigma (1 + gamma); then
    x~_next = x~_hat + (sigma_next - sigma_hat) (eps_hat(x~_hat) + eps_hat(Euler end)) / 2, and
    the last step, to the clean image, is x0_hat. A step from an infinite sigma (zero terminal
    SNR's x_T) is an Euler step, so there n timesteps take 2n - 2 calls instead of 2n - 1.

    Args:
        s_churn: total churn (EDM's S_churn; 0 = the deterministic Alg. 1).
        s_tmin, s_tmax: churn only where s_tmin <= sigma <= s_tmax.
        s_noise: scale of the churn noise (EDM's S_noise).
        Others as for ddpm_sample.
    """
    ts = list(timesteps)
    check_non_negative(s_churn=s_churn, s_noise=s_noise)
    if not s_tmin <= s_tmax:
        raise UsageError(f"s_tmin={s_tmin} must be <= s_tmax={s_tmax}.")
    table = SigmaTable(schedule)
    x = x_T.float()
    noise = brownian_noise(table, x, generator) if s_churn > 0 and s_noise > 0 else None
    gamma_max = min(s_churn / max(len(ts), 1), math.sqrt(2.0) - 1.0)
    for j, t, t_next in walk(ts, "Heun", progress):
        sigma = table.sigma(t)
        gamma = gamma_max if noise is not None and s_tmin <= sigma <= s_tmax and math.isfinite(sigma) else 0.0
        if gamma > 0:
            # Raise the noise level to sigma_hat, then evaluate there (its timestep clamped to the model's range).
            sigma_hat = sigma * (1.0 + gamma)
            x_ve = x * math.sqrt(1.0 + sigma * sigma)
            # The noise is the Brownian increment over this step's own interval [sigma_next, sigma]:
            # disjoint from every other step's (the interval up to sigma_hat would overlap the next
            # step's, and correlated churn over-disperses the samples).
            sigma_n = table.sigma(t_next) if t_next >= 0 else 0.0
            x_ve = x_ve + (math.sqrt(sigma_hat**2 - sigma**2) * s_noise) * noise(sigma, sigma_n)
            x = _vp(x_ve, sigma_hat)
            t_hat = table.t_of_sigma(sigma_hat)
            x0, eps = denoise(model, schedule, x, t_hat, t_hat, clip_x0, y, need_eps=True,
                              abar=1.0 / (1.0 + sigma_hat * sigma_hat))
        else:
            sigma_hat = sigma
            x0, eps = denoise_t(model, schedule, table, x, t, clip_x0, y, need_eps=True)
        if t_next < 0:
            x_next = x0
        else:
            sigma_n = table.sigma(t_next)
            x_next = _vp(x0 + sigma_n * eps, sigma_n)  # the Euler step
            if math.isfinite(sigma_hat):
                _, eps_n = denoise_t(model, schedule, table, x_next, t_next, clip_x0, y, need_eps=True)
                # x~_hat + (sigma_n - sigma_hat) (eps + eps_n) / 2, with x~_hat = x0 + sigma_hat eps.
                x_next = _vp(x0 + sigma_hat * eps + (sigma_n - sigma_hat) * 0.5 * (eps + eps_n), sigma_n)
        x = run_hook(hook, j, t, t_next, x, x0, x_next)
    return x
