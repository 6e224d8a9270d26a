"""DPM-Solver++ multistep samplers (Lu et al. 2022, "DPM-Solver++", Alg. 2 and Sec. 5): 2M, SDE-2M, SDE-3M.

All solve in the data-prediction form, in lambda = log(alpha / sigma) with alpha = sqrt(alphā),
sigma = sqrt(1 - alphā). The multistep corrections reuse the previous steps' x0_hat, so each step
costs one network call. The first step (no history yet) is first order, and the last step (to
the clean image, where h is infinite) returns x0_hat itself.

With eta (0 = the ODE; 1 = the reverse SDE of SDE-DPM-Solver++), h = lambda_next - lambda_t and
D the x0_hat with its multistep correction, one step is
    x_next = sigma_next / sigma_t e^(-eta h) x_t + alpha_next (1 - e^(-(1 + eta) h)) D
             + sigma_next sqrt(1 - e^(-2 eta h)) s_noise z
(eta = 0 is Alg. 2's 2M step; the 3M correction is k-diffusion's `sample_dpmpp_3m_sde`). The
noise z comes from each image's Brownian motion (noise.py), so a seed keeps its picture at any
number of steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..schedule import NoiseSchedule
from .base import (
    Generators,
    Hook,
    Model,
    brownian_noise,
    check_non_negative,
    denoise_t,
    log_snr,
    run_hook,
    walk,
)
from .sigmas import SigmaTable

# Below this many steps, the step into the last timestep drops to first order (3M: and the one
# before it to second): its h is the longest with uniform spacing, and the multistep correction grows
# with it. This is diffusers' `lower_order_final` where its last step ends at sigma_min
# (final_sigmas_type="sigma_min"); with its default "zero" the step to sigma = 0 is the last one,
# which ours always takes at first order (it returns x0_hat).
LOWER_ORDER_FINAL_BELOW = 15


@torch.inference_mode()
def dpmpp_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    generator: Generators = None,
    timesteps: Sequence[float] = (),
    clip_x0: bool = True,
    y: torch.Tensor | None = None,
    hook: Hook | None = None,
    progress: bool = False,
    order: int = 2,
    eta: float = 0.0,
    s_noise: float = 1.0,
    lower_order_final: bool | None = None,
) -> torch.Tensor:
    """DPM-Solver++ of the given order (2 or 3) over the given descending timesteps, ending at the clean image.

    Args:
        order: 2 (2M) or 3 (3M; its first two steps ramp up through orders 1 and 2).
        eta: 0 solves the probability-flow ODE (deterministic given x_T); 1 the reverse SDE.
        s_noise: scale of the added noise (1 = the SDE's own).
        lower_order_final: take the step into the last timestep at first order (and, for 3M, the one
            before it at second order); None = only below LOWER_ORDER_FINAL_BELOW steps.
        Other arguments as for ddpm_sample; timesteps may lie between the model's own (sigmas.py).
    """
    ts = list(timesteps)
    if order not in (2, 3):
        raise ValueError(f"order={order} must be 2 or 3.")
    check_non_negative(eta=eta, s_noise=s_noise)
    if lower_order_final is None:
        lower_order_final = len(ts) < LOWER_ORDER_FINAL_BELOW
    table = SigmaTable(schedule)  # Python floats: no device sync inside the loop
    x = x_T.float()
    noise = brownian_noise(table, x, generator) if eta > 0 and s_noise > 0 else None
    history: list[tuple[torch.Tensor, float]] = []  # (x0_hat, h) of earlier steps, newest first
    name = f"DPM-Solver++({order}M)" + (" SDE" if eta > 0 else "")
    for j, t, t_next in walk(ts, name, progress):
        x0, _ = denoise_t(model, schedule, table, x, t, clip_x0, y)
        if t_next < 0:
            x_next = x0  # h = inf: the step to alphā = 1 lands on x0_hat
        else:
            a_t, a_n = table.alpha_bar(t), table.alpha_bar(t_next)
            alpha_n, sigma_t, sigma_n = math.sqrt(a_n), math.sqrt(1 - a_t), math.sqrt(1 - a_n)
            h = log_snr(a_n) - log_snr(a_t)
            # Order of this step: limited by the history, and lowered into the last timestep(s).
            k = min(order, len(history) + 1)
            if lower_order_final:
                k = min(k, len(ts) - 1 - j)
            h_eta = (1.0 + eta) * h
            decay = math.exp(-eta * h) if eta > 0 else 1.0  # (0 * inf is nan where x_T holds no signal)
            x_next = (sigma_n / sigma_t * decay) * x + (alpha_n * -math.expm1(-h_eta)) * x0
            if k == 2 and order == 2:
                (x0_1, h_1) = history[0]
                # 2M: the x0_hat difference divided by r = h_1 / h, taken at the midpoint.
                x_next = x_next + (alpha_n * -math.expm1(-h_eta) * 0.5 * h / h_1) * (x0 - x0_1)
            elif k == 2:  # 3M's second-order steps (ramp-up, lowered final): k-diffusion's phi_2 form
                (x0_1, h_1) = history[0]
                phi_2 = math.expm1(-h_eta) / h_eta + 1.0
                x_next = x_next + (alpha_n * phi_2 * h / h_1) * (x0 - x0_1)
            elif k == 3:
                (x0_1, h_1), (x0_2, h_2) = history[0], history[1]
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (x0 - x0_1) / r0, (x0_1 - x0_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = math.expm1(-h_eta) / h_eta + 1.0
                phi_3 = phi_2 / h_eta - 0.5
                x_next = x_next + alpha_n * phi_2 * d1 - alpha_n * phi_3 * d2
            if noise is not None:
                x_next = x_next + (sigma_n * math.sqrt(-math.expm1(-2.0 * eta * h)) * s_noise) * noise(
                    table.sigma(t), table.sigma(t_next))
            # A step from alphā = 0 (zero terminal SNR) has h = inf: its x0_hat extrapolates nothing.
            history = [(x0, h)] + history[:1] if math.isfinite(h) else []
        x = run_hook(hook, j, t, t_next, x, x0, x_next)
    return x


def dpmpp_2m_sample(model: Model, schedule: NoiseSchedule, x_T: torch.Tensor, generator: Generators = None,
                    timesteps: Sequence[float] = (), stochastic: bool = False, **kwargs) -> torch.Tensor:
    """DPM-Solver++(2M) (deterministic); with stochastic=True, SDE-DPM-Solver++(2M) (eta = 1)."""
    kwargs.setdefault("eta", 1.0 if stochastic else 0.0)
    return dpmpp_sample(model, schedule, x_T, generator, timesteps, order=2, **kwargs)
