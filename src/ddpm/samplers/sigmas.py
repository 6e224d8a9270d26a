"""Noise levels between the model's discrete timesteps, and the sigma schedules a sampler walks.

A trained model knows T noise levels, alphā_0 > ... > alphā_{T-1}. Samplers written for a
continuous noise level (Karras et al. 2022; k-diffusion) work with the variance-exploding
sigma = sqrt((1 - alphā) / alphā), in which x_t / sqrt(alphā) = x0 + sigma eps. Between two
timesteps, log sigma is taken as linear in t (k-diffusion's `DiscreteSchedule`, diffusers'
`_sigma_to_t`), so a fractional timestep t and a sigma map one to one, and a timestep that is an
integer gives exactly the table's own alphā.

Where alphā_{T-1} = 0 (zero terminal SNR) sigma is infinite at T-1; schedules that need a finite
top sigma (karras, exponential) then visit T-1 first and spread the rest below it.
"""

from __future__ import annotations

import math

import numpy as np

from ..schedule import NoiseSchedule

KARRAS_RHO = 7.0  # Karras et al. 2022, Eq. 5: rho = 7 spends the steps near sigma_min

# Spacings in log-SNR or sigma (logsnr, exponential, karras) spread their steps no noisier than this
# log-SNR (sigma = e^5.25 ~ 190: any image in [-1, 1] is drowned there); the first step is still at
# T-1 and jumps to the next. The default linear schedules at T >= ~160 end above it (-10.1 at T = 1000,
# the seed's -10.4 at T = 200: untouched; shorter ones end lower and are floored), but the cosine
# schedule's (the demo's since 2026-12-04) last beta, clipped at 0.999, drops its log-SNR to -16.6 at
# T = 200, and spreading evenly down to there put 9 of 20 steps among t = 191..199. diffusers has a
# similar, opt-in guard for cosine (DPM-Solver's lambda_min_clipped, -5.1 in half log-SNR: it starts at
# that timestep instead of T-1); EDM's sampler stops at sigma 80.
MIN_SPACED_LOG_SNR = -10.5


def lowest_spaced_log_snr(log_snr_at_start: float) -> float:
    """The noisiest log-SNR a spacing spreads its steps from, for a walk that starts at this one."""
    return max(log_snr_at_start, MIN_SPACED_LOG_SNR)


class SigmaTable:
    """alphā, sigma and the network's timestep at any fractional timestep of one schedule (float64)."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        """Read the schedule's alphā once (a CPU copy: nothing in a sampling loop waits on a device)."""
        self.abar = schedule.alphas_cumprod.detach().cpu().double().numpy()
        self.num_timesteps = len(self.abar)
        # The network's timestep for each index: the index itself, except in a respaced schedule.
        self.model_t = schedule.timesteps.detach().cpu().double().numpy()
        with np.errstate(divide="ignore"):
            self.log_sigma = 0.5 * (np.log1p(-self.abar) - np.log(self.abar))  # +inf where alphā = 0
        finite = np.isfinite(self.log_sigma)  # t_of_sigma interpolates over these
        self._finite_log_sigma = self.log_sigma[finite]
        self._finite_t = np.arange(self.num_timesteps, dtype=np.float64)[finite]

    def alpha_bar(self, t: float) -> float:
        """alphā at timestep t in [0, T-1]; exact at integers, log-sigma interpolated between."""
        if float(t).is_integer():
            return float(self.abar[int(t)])
        return 1.0 / (1.0 + math.exp(2.0 * self.log_sigma_at(t)))

    def log_sigma_at(self, t: float) -> float:
        """log sigma at timestep t: the table's value at integers, linear in t between them."""
        if not 0.0 <= t <= self.num_timesteps - 1:
            raise ValueError(f"timestep {t} must lie in 0 .. {self.num_timesteps - 1}.")
        lo = math.floor(t)
        w = t - lo
        if w == 0.0:
            return float(self.log_sigma[lo])
        return float((1.0 - w) * self.log_sigma[lo] + w * self.log_sigma[lo + 1])

    def model_time(self, t: float) -> float:
        """The network's timestep at t: the schedule's own at integers (an int), linear between them."""
        if float(t).is_integer():
            return int(self.model_t[int(t)])
        return float(np.interp(t, np.arange(self.num_timesteps, dtype=np.float64), self.model_t))

    def sigma(self, t: float) -> float:
        """sigma = sqrt((1 - alphā) / alphā) at timestep t (inf at a zero-terminal-SNR T-1)."""
        return math.exp(self.log_sigma_at(t))

    def t_of_sigma(self, sigma: float) -> float:
        """The fractional timestep whose sigma this is, clamped to [0, T-1] (k-diffusion's sigma_to_t)."""
        return float(np.interp(math.log(sigma), self._finite_log_sigma, self._finite_t))


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = KARRAS_RHO) -> list[float]:
    """n sigmas from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho) (Karras et al. 2022, Eq. 5)."""
    if n == 1:
        return [sigma_max]
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return [(hi + i / (n - 1) * (lo - hi)) ** rho for i in range(n)]


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> list[float]:
    """n sigmas from sigma_max down to sigma_min, evenly spaced in log sigma (= in log-SNR)."""
    if n == 1:
        return [sigma_max]
    return [math.exp(math.log(sigma_max) + i / (n - 1) * (math.log(sigma_min) - math.log(sigma_max))) for i in range(n)]


def continuous_timesteps(table: SigmaTable, num_steps: int, kind: str, start: int) -> list[float]:
    """num_steps fractional timesteps from `start` down to 0 whose sigmas follow `kind`
    ("karras" or "exponential"); the first is exactly `start` and the last exactly 0."""
    if num_steps == 1:
        return [float(start)]
    if math.isinf(table.log_sigma[start]):  # zero terminal SNR: visit T-1, spread the rest below it
        return [float(start)] + continuous_timesteps(table, num_steps - 1, kind, start - 1)
    sigma_min, sigma_max = table.sigma(0), math.exp(-lowest_spaced_log_snr(-2 * table.log_sigma_at(start)) / 2)
    sigmas = (karras_sigmas if kind == "karras" else exponential_sigmas)(sigma_min, sigma_max, num_steps)
    ts = [table.t_of_sigma(s) for s in sigmas]
    ts[0], ts[-1] = float(start), 0.0
    return ts
