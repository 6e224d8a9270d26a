"""DDIM (Song et al. 2021, Eq. 12): deterministic at eta = 0, DDPM-like at eta = 1."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import UsageError
from ..schedule import NoiseSchedule
from .base import Generators, Hook, Model, denoise_t, randn, run_hook, walk
from .sigmas import SigmaTable


@torch.inference_mode()
def ddim_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    generator: Generators = None,
    timesteps: Sequence[int] = (),
    eta: float = 0.0,
    clip_x0: bool = True,
    y: torch.Tensor | None = None,
    hook: Hook | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM over the given descending timesteps, ending at the clean image (alphā = 1).

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z, with
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev)).
    One network call per timestep. Arguments as for ddpm_sample; eta >= 0 scales the noise.
    """
    if eta < 0:
        raise UsageError(f"eta={eta} must be >= 0 (0 = deterministic, 1 = DDPM-like).")
    table = SigmaTable(schedule)  # alphā as Python floats: no device sync inside the loop
    x = x_T.float()
    for j, i, t_next in walk(timesteps, "DDIM", progress):
        x0, eps = denoise_t(model, schedule, table, x, i, clip_x0, y, need_eps=True)
        a_t = table.alpha_bar(i)
        a_prev = table.alpha_bar(t_next) if t_next >= 0 else 1.0
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        x_next = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x_next = x_next + sigma * randn(x.shape, generator, x.device)
        x = run_hook(hook, j, i, t_next, x, x0, x_next)
    return x
