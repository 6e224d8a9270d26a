"""DPM-Solver++(2M) and SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2 and Sec. 5).

Both solve in the data-prediction form, in lambda = log(alpha / sigma) with alpha = sqrt(alphā),
sigma = sqrt(1 - alphā). The multistep second-order correction reuses the previous step's x0_hat,
so each step costs one network call. The first step (no previous x0_hat yet) and the last step
(to the clean image, where h is infinite) are first order: the last one returns x0_hat itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..schedule import NoiseSchedule
from .base import Generators, Hook, Model, denoise, log_snr, randn, run_hook


@torch.inference_mode()
def dpmpp_2m_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    generator: Generators = None,
    timesteps: Sequence[int] = (),
    clip_x0: bool = True,
    y: torch.Tensor | None = None,
    hook: Hook | None = None,
    progress: bool = False,
    stochastic: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2M) over the given descending timesteps, ending at the clean image.

    Deterministic (an ODE solver) given x_T; with stochastic=True it is SDE-DPM-Solver++(2M),
    which adds fresh noise at every step (drawn per image from generator) and solves the reverse
    SDE instead. One network call per timestep. Arguments as for ddpm_sample.

    With h = lambda_next - lambda_t and D the (corrected) x0_hat:
        ODE: x_next = sigma_next / sigma_t x_t - alpha_next (e^-h - 1) D
        SDE: x_next = sigma_next / sigma_t e^-h x_t + alpha_next (1 - e^-2h) D
                      + sigma_next sqrt(1 - e^-2h) z
    where D = x0_t + (x0_t - x0_prev) / (2 r), r = h_prev / h, after the first step.
    """
    ts = list(timesteps)
    if not ts:
        raise ValueError("dpmpp_2m_sample needs at least one timestep.")
    abar = schedule.alphas_cumprod.tolist()  # Python floats: no device sync inside the loop
    model_t = schedule.timesteps.tolist()
    x = x_T.float()
    x0_prev, h_prev = None, None
    name = "SDE-DPM-Solver++(2M)" if stochastic else "DPM-Solver++(2M)"
    for j, i in enumerate(tqdm(ts, desc=f"sampling ({name})", disable=not progress, leave=False)):
        x0, _ = denoise(model, schedule, x, i, model_t[i], clip_x0, y)
        t_next = ts[j + 1] if j + 1 < len(ts) else -1
        if t_next < 0:
            x_next = x0  # h = inf: the step to alphā = 1 lands on x0_hat
        else:
            a_t, a_n = abar[i], abar[t_next]
            alpha_n, sigma_t, sigma_n = math.sqrt(a_n), math.sqrt(1 - a_t), math.sqrt(1 - a_n)
            h = log_snr(a_n) - log_snr(a_t)
            D = x0 if x0_prev is None else x0 + (x0 - x0_prev) * (h / (2.0 * h_prev))
            if stochastic:
                x_next = (sigma_n / sigma_t * math.exp(-h)) * x + (alpha_n * -math.expm1(-2 * h)) * D
                x_next = x_next + sigma_n * math.sqrt(-math.expm1(-2 * h)) * randn(x.shape, generator, x.device)
            else:
                x_next = (sigma_n / sigma_t) * x - (alpha_n * math.expm1(-h)) * D
            x0_prev, h_prev = x0, h
        x = run_hook(hook, j, model_t[i], model_t[t_next] if t_next >= 0 else -1, x, x0, x_next)
    return x

