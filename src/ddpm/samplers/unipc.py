"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"): the multistep predictor UniP with the corrector UniC, B(h) = bh2, in data
prediction (x0) form.

Like DPM-Solver++ (dpmpp.py) it solves the probability-flow ODE in lambda = log(alpha / sigma),
alpha = sqrt(alphā), sigma = sqrt(1 - alphā), from the x0_hat of the visited timesteps. UniC
corrects the point a step reached with the network's x0_hat there: the call the next step makes
anyway, so the corrector costs no extra call, and it raises the order by one (Sec. 3.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..schedule import NoiseSchedule
from .base import Generators, Hook, Model, denoise_t, log_snr, run_hook, walk
from .dpmpp import LOWER_ORDER_FINAL_BELOW
from .sigmas import SigmaTable


def _phi(z: float, k: int) -> float:
    """phi_k(z) = sum_n z^n / (n + k)!, i.e. phi_1 = (e^z - 1) / z, phi_(k+1) = (phi_k - 1/k!) / z."""
    if abs(z) < 0.1:
        # The recursion divides a difference of near-equal numbers by z once per k: sum the series.
        return sum(z**n / math.factorial(n + k) for n in range(16))
    p = math.expm1(z) / z
    for i in range(1, k):
        p = (p - 1.0 / math.factorial(i)) / z
    return p


def _b(h: float, n: int) -> list[float]:
    """The right-hand sides b_1 .. b_n of UniPC's order conditions for B(h) = bh2 in x0 form:
    b_k = k! phi_(k+1)(-h) / phi_1(-h) (-> 1 / (k + 1) as h -> 0)."""
    phi_1 = _phi(-h, 1)
    return [math.factorial(k) * _phi(-h, k + 1) / phi_1 for k in range(1, n + 1)]


def _solve(rs: Sequence[float], b: Sequence[float]) -> list[float]:
    """rho with sum_k rho_k r_k^(n-1) = b_n for n = 1 .. len(rs) (a Vandermonde system, float64)."""
    m = len(rs)
    vander = np.array([[r**n for r in rs] for n in range(m)], dtype=np.float64)
    return np.linalg.solve(vander, np.array(b[:m], dtype=np.float64)).tolist()


@torch.inference_mode()
def unipc_sample(
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
    lower_order_final: bool | None = None,
) -> torch.Tensor:
    """UniPC-bh2 of the given order (2 or 3) over the given descending timesteps, ending at the clean image.

    Deterministic (generator is unused). From x at timestep t to t_next, with h = lambda_next - lambda_t,
    x0_k the x0_hat at the k-th earlier visited timestep, r_k = (lambda_k - lambda_t) / h and
    D_k = (x0_k - x0) / r_k, the predictor UniP-p is
        x_next = sigma_next / sigma_t x + alpha_next (1 - e^(-h)) (x0 + sum_(k<p) rho_k D_k),
    with sum_k rho_k r_k^(n-1) = b_n for n < p, b_n = n! phi_(n+1)(-h) / phi_1(-h) (rho_1 = 1/2 for
    p = 2). At the next step, with x0_next the network's x0_hat at x_next, the corrector UniC-p adds
        alpha_next (1 - e^(-h)) (sum_(k<p) (rho^c_k - rho_k) D_k + rho^c_p (x0_next - x0)),
    the same conditions solved for n <= p with r_p = 1 (rho^c_1 = 1/2 for p = 1). The order ramps up
    from 1 as x0_hats accumulate; the last step, to the clean image, returns x0_hat (no call after it,
    so nothing corrects it).

    Args:
        order: 2 or 3, the order p of UniP and UniC (UniPC-p is accurate to order p + 1).
        lower_order_final: lower the orders as diffusers' `lower_order_final` does: there the step to
            sigma = 0 counts as one of the steps, so in ours the step into the last timestep is at most
            second order (a change for order 3 only; the step to the clean image is first order
            anyway); None = only below LOWER_ORDER_FINAL_BELOW timesteps.
        Other arguments as for ddpm_sample; timesteps may lie between the model's own (sigmas.py).
    """
    ts = list(timesteps)
    if order not in (2, 3):
        raise ValueError(f"order={order} must be 2 or 3.")
    if lower_order_final is None:
        lower_order_final = len(ts) < LOWER_ORDER_FINAL_BELOW
    table = SigmaTable(schedule)  # Python floats: no device sync inside the loop
    x = x_T.float()
    history: list[tuple[torch.Tensor, float]] = []  # (x0_hat, lambda) of the visited timesteps, newest first
    # The last predictor step, for UniC: (order p, h, alpha_next (1 - e^(-h)), r_k, D_k, rho_k).
    pending: tuple[int, float, float, list[float], list[torch.Tensor], list[float]] | None = None
    for j, t, t_next in walk(ts, f"UniPC-{order}", progress):
        x0, _ = denoise_t(model, schedule, table, x, t, clip_x0, y)
        if pending is not None:
            p, h, scale, rs, ds, rho = pending
            # p = 1 takes rho^c = 1/2, the limit h -> 0 of the exact b_1 (as diffusers does).
            rho_c = _solve(rs + [1.0], _b(h, p)) if p > 1 else [0.5]
            # Added to x rather than recomputing x from the last step's start: the same without a
            # hook, and a hook's replacement of x_next (inpainting) stays in place.
            corr = rho_c[-1] * (x0 - history[0][0])
            for rc, rp, d in zip(rho_c[:-1], rho, ds, strict=True):
                corr = corr + (rc - rp) * d
            x = x + scale * corr
        a_t = table.alpha_bar(t)
        lam = log_snr(a_t)
        history = [(x0, lam)] + history[: order - 1]
        if t_next < 0:
            x_next = x0  # h = inf: the step to alphā = 1 lands on x0_hat
            pending = None
        else:
            a_n = table.alpha_bar(t_next)
            alpha_n, sigma_t, sigma_n = math.sqrt(a_n), math.sqrt(1 - a_t), math.sqrt(1 - a_n)
            h = log_snr(a_n) - lam
            # Order of this step: limited by the x0_hats at finite lambda (a zero-terminal-SNR x_T sits at
            # lambda = -inf, where no difference is finite), and, like diffusers, by the steps left
            # counting the one to the clean image.
            k = min(order, sum(math.isfinite(lk) for _, lk in history))
            if lower_order_final:
                k = min(k, len(ts) - j)
            k = max(k, 1)
            rs = [(history[i][1] - lam) / h for i in range(1, k)]
            ds = [(history[i][0] - x0) / rs[i - 1] for i in range(1, k)]
            # p = 2 takes rho = 1/2 likewise.
            rho = [] if k == 1 else [0.5] if k == 2 else _solve(rs, _b(h, k - 1))
            scale = alpha_n * -math.expm1(-h)
            d_sum = x0
            for r, d in zip(rho, ds, strict=True):
                d_sum = d_sum + r * d
            x_next = (sigma_n / sigma_t) * x + scale * d_sum
            pending = (k, h, scale, rs, ds, rho)
        x = run_hook(hook, j, t, t_next, x, x0, x_next)
    return x
