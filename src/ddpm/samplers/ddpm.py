"""Ancestral sampling (Ho et al. 2020, Algorithm 2), on all T steps or a respaced subset of them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..config import SAMPLE_VARIANCES
from ..errors import UsageError
from ..schedule import NoiseSchedule, _gather
from .base import Generators, Hook, Model, denoise, randn, run_hook

VARIANCES = SAMPLE_VARIANCES


@torch.inference_mode()
def ddpm_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    generator: Generators = None,
    timesteps: Sequence[int] | None = None,
    variance: str = "beta",
    clip_x0: bool = True,
    y: torch.Tensor | None = None,
    hook: Hook | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDPM ancestral sampling from x at timesteps[0] down to x_0.

    The mean is the posterior mean q(x_{t-1} | x_t, x0_hat) with x0_hat predicted from the noise;
    without clipping it equals Algorithm 2's 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps).
    With fewer steps than T the chain runs on the respaced schedule of the kept steps (Nichol &
    Dhariwal 2021, Sec. 4): betas recomputed from alphā there, so each step is a true DDPM step.

    Args:
        model: eps_theta(x_t, t) (or (x_t, t, y) when y is given).
        schedule: the forward process the model was trained with.
        x_T: (B, C, H, W) noise (or a noised image, when timesteps starts below T-1).
        generator: one generator, or one per image.
        timesteps: the descending timesteps to visit (default: all T, which is Algorithm 2 itself).
        variance: "beta" (sigma_t^2 = beta_t) or "beta_tilde" (the posterior variance); the paper
            found both give similar results.
        clip_x0: clip x0_hat to [-1, 1] at every step (the official implementation does).
        y: (B,) class labels for a conditional model, or None.
        hook: called after every step; may replace x (see base.Step).
        progress: show a progress bar over the steps.
    Returns:
        (B, C, H, W) float32 samples, roughly in [-1, 1].
    """
    if variance not in VARIANCES:
        raise UsageError(f"variance={variance!r}; choose one of {VARIANCES}.")
    kept = list(range(schedule.num_timesteps - 1, -1, -1)) if timesteps is None else list(timesteps)
    sched = schedule.respace(kept)
    sigma2 = sched.betas if variance == "beta" else sched.posterior_variance
    model_t = sched.timesteps.tolist()  # the original step each index stands for
    x = x_T.float()
    n = sched.num_timesteps
    for step, i in enumerate(tqdm(range(n - 1, -1, -1), desc="sampling (DDPM)", disable=not progress, leave=False)):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        x0, _ = denoise(model, sched, x, i, model_t[i], clip_x0, y)
        mean = sched.q_posterior_mean(x0, x, t)
        if i > 0:
            x_next = mean + _gather(sigma2, t, x).sqrt() * randn(x.shape, generator, x.device)
        else:
            x_next = mean
        x = run_hook(hook, step, model_t[i], model_t[i - 1] if i > 0 else -1, x, x0, x_next)
    return x
