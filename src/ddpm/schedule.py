"""The forward (noising) process of DDPM (Ho et al. 2020, Sec. 2) and its posterior.

Index convention: arrays are indexed by t = 0 .. T-1, where index t is the paper's step t + 1.
So `q_sample(x0, t=0)` is x_1 (one step of noise) and `t=T-1` is x_T. Figures that show "t = 0"
mean the clean image x_0.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

# A schedule that leaves more than this much of the signal variance at t = T does not end in pure
# noise, so sampling from N(0, I) starts from a distribution the model never saw.
MAX_SIGNAL_AT_T = 1e-3


def _gather(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """values[t] cast to x's dtype and shaped (B, 1, 1, 1) to broadcast over x of shape (B, C, H, W)."""
    out = values.to(t.device)[t].to(x.dtype)
    return out.view(-1, *([1] * (x.dim() - 1)))


class NoiseSchedule:
    """A beta schedule and the closed forms that follow from it (DDPM Eq. 4, 6, 7).

    All coefficients are computed in float64 and cast to the working dtype where used.
    """

    def __init__(self, num_timesteps: int, beta_start: float, beta_end: float, warn: bool = True) -> None:
        """The linear schedule (DDPM Sec. 4).

        Args:
            num_timesteps: T, the number of diffusion steps.
            beta_start, beta_end: the first and last beta of the linear schedule, 0 < b < 1.
            warn: warn when alphas_cumprod[T-1] keeps more than MAX_SIGNAL_AT_T of the signal.
        """
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps={num_timesteps} must be at least 2.")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"betas must satisfy 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}.")
        self._set_betas(torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64),
                        torch.arange(num_timesteps))
        if warn and self.signal_at_T > MAX_SIGNAL_AT_T:
            warnings.warn(
                f"The beta schedule ({beta_start:g} .. {beta_end:g} over T={num_timesteps}) keeps "
                f"{self.signal_at_T:.3g} of the signal variance at t=T (more than {MAX_SIGNAL_AT_T:g}), so x_T "
                "is not pure noise and samples drawn from N(0, I) start off the training distribution. "
                "Leave beta_start/beta_end unset to use the paper's range scaled by 1000/T.",
                stacklevel=2,
            )

    def _set_betas(self, betas: torch.Tensor, timesteps: torch.Tensor) -> None:
        self.num_timesteps = int(betas.shape[0])
        # The network's timestep for each index of this schedule: 0 .. T-1 for the training schedule,
        # the kept steps for a respaced one.
        self.timesteps = timesteps.long()
        self.betas = betas.to(torch.float64)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64, device=betas.device),
                                              self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # Posterior q(x_{t-1} | x_t, x_0) = N(mean, beta_tilde) (DDPM Eq. 6, 7).
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef1 = self.betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        self.signal_at_T = float(self.alphas_cumprod[-1])

    def respace(self, kept: Sequence[int]) -> NoiseSchedule:
        """The schedule of the kept steps only (Nichol & Dhariwal 2021, Sec. 4).

        alphā is kept at each kept step and the betas are recomputed from it,
        beta'_i = 1 - alphā[k_i] / alphā[k_{i-1}], so q(x_{k_i} | x_0) is unchanged. Index i of the
        result stands for the original step k_i (its `timesteps[i]`, what the network is given).
        Keeping every step returns this schedule itself, so nothing changes bit for bit.

        Args:
            kept: distinct indices into this schedule, in any order.
        """
        ks = sorted({int(k) for k in kept})
        if not ks or ks[0] < 0 or ks[-1] >= self.num_timesteps:
            raise ValueError(f"kept steps must be distinct indices in 0 .. {self.num_timesteps - 1}, got {list(kept)}.")
        if len(ks) == self.num_timesteps:
            return self
        idx = torch.tensor(ks, device=self.alphas_cumprod.device)
        abar = self.alphas_cumprod[idx]
        abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype, device=abar.device), abar[:-1]])
        out = NoiseSchedule.__new__(NoiseSchedule)
        out._set_betas(1.0 - abar / abar_prev, self.timesteps.to(idx.device)[idx])
        return out

    @classmethod
    def from_config(cls, config) -> NoiseSchedule:
        """The schedule a DiffusionConfig describes (betas scaled by 1000 / T where not given)."""
        beta_start, beta_end = config.resolved_betas()
        return cls(config.timesteps_diff, beta_start, beta_end)

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """Move the float64 tables to `device` (once, so the training loop never copies them)."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    # Forward process ------------------------------------------------------------------------------

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One forward transition x_{t-1} -> x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)."""
        return _gather(self.alphas.sqrt(), t, x_prev) * x_prev + _gather(self.betas.sqrt(), t, x_prev) * noise

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Closed form x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM Eq. 4).

        Args:
            x0: clean images (B, C, H, W) in [-1, 1].
            t: (B,) integer timesteps in 0 .. T-1, one per image.
            noise: standard normal noise shaped like x0.
        """
        return _gather(self.sqrt_alphas_cumprod, t, x0) * x0 + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    # Reverse-process helpers ----------------------------------------------------------------------

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert q_sample: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (x_t - _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / _gather(self.sqrt_alphas_cumprod, t, x_t)

    def q_posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x_0) (DDPM Eq. 7)."""
        return _gather(self.posterior_mean_coef1, t, x_t) * x0 + _gather(self.posterior_mean_coef2, t, x_t) * x_t
