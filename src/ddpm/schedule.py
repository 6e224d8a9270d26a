"""The forward (noising) process of DDPM (Ho et al. 2020, Sec. 2) and its posterior.

Index convention: arrays are indexed by t = 0 .. T-1, where index t is the paper's step t + 1.
So `q_sample(x0, t=0)` is x_1 (one step of noise) and `t=T-1` is x_T. Figures that show "t = 0"
mean the clean image x_0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from .config import BETA_SCHEDULES, PREDICTIONS, DiffusionConfig

# A schedule that leaves more than this much of the signal variance at t = T does not end in pure
# noise, so sampling from N(0, I) starts from a distribution the model never saw.
MAX_SIGNAL_AT_T = 1e-3


def _gather(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """values[t] cast to x's dtype and shaped (B, 1, 1, 1) to broadcast over x of shape (B, C, H, W)."""
    out = values.to(t.device)[t].to(x.dtype)
    return out.view(-1, *([1] * (x.dim() - 1)))


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """The cosine schedule (Nichol & Dhariwal 2021, Eq. 17): alphā(t) = f(t) / f(0) with
    f(t) = cos²((t / T + s) / (1 + s) · π / 2); beta_t = 1 - alphā(t) / alphā(t - 1), clipped at
    max_beta as the paper does near t = T. Index i holds the paper's step i + 1. float64, (T,)."""
    f = [math.cos((i / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2 for i in range(num_timesteps + 1)]
    return torch.tensor([min(1 - f[i + 1] / f[i], max_beta) for i in range(num_timesteps)], dtype=torch.float64)


def betas_from_alphas_cumprod(abar: torch.Tensor) -> torch.Tensor:
    """beta_t = 1 - alphā_t / alphā_{t-1} (alphā_{-1} = 1): the betas of a given alphā, e.g. a rescaled one."""
    return 1.0 - torch.cat([abar[:1], abar[1:] / abar[:-1]])


def _warn_signal_at_T(signal: float, what: str, fix: str, stacklevel: int) -> None:
    """Warn when x_T keeps more than MAX_SIGNAL_AT_T of the signal variance (`what` names the schedule)."""
    if signal > MAX_SIGNAL_AT_T:
        warnings.warn(
            f"The beta schedule ({what}) keeps {signal:.3g} of the signal variance at t=T (more than "
            f"{MAX_SIGNAL_AT_T:g}), so x_T is not pure noise and samples drawn from N(0, I) start off the "
            f"training distribution. {fix}", stacklevel=stacklevel + 1)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas whose alphā ends at exactly 0 (Lin et al. 2024, Algorithm 1).

    sqrt(alphā) is shifted so that its last value is 0 and scaled so that its first is unchanged;
    the betas are recomputed from the result. x_T is then pure noise, with no signal left at all.
    """
    root = torch.cumprod(1.0 - betas.to(torch.float64), dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return betas_from_alphas_cumprod(root**2)


def shift_log_snr(betas: torch.Tensor, shift: float) -> torch.Tensor:
    """Betas whose log-SNR is that of `betas` plus `shift` at every t (Hoogeboom et al. 2023, Sec. 3.1).

    alphā'(t) = sigmoid(log SNR(t) + shift), with log SNR(t) = log(alphā(t) / (1 - alphā(t))); the
    betas are recomputed from alphā'. A final alphā of 0 (zero terminal SNR) stays 0. float64, (T,).
    """
    abar = torch.cumprod(1.0 - betas.to(torch.float64), dim=0)
    return betas_from_alphas_cumprod(torch.sigmoid(torch.logit(abar) + shift))  # logit(0) = -inf -> sigmoid 0


def _split(prediction: str, x_t: torch.Tensor, a: torch.Tensor | float, s: torch.Tensor | float,
           out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from the network's output for x_t = a x0 + s eps (NoiseSchedule.split says how)."""
    if prediction == "eps":
        return (x_t - s * out) / a, out
    if prediction == "x0":
        return out, (x_t - a * out) / s
    return a * x_t - s * out, s * x_t + a * out


def schedule_betas(config: DiffusionConfig) -> torch.Tensor:
    """The betas a DiffusionConfig describes (float64, (T,)): linear or cosine, then shifted in log-SNR
    (schedule_shift), then rescaled to zero terminal SNR (zero_terminal_snr), in diffusers' order for
    trained betas. Warns, as NoiseSchedule does, when x_T keeps more than MAX_SIGNAL_AT_T of the signal."""
    kind = config.beta_schedule
    if kind not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule={kind!r}; choose one of {BETA_SCHEDULES}.")
    if kind == "linear":
        beta_start, beta_end = config.resolved_betas()
        betas = torch.linspace(beta_start, beta_end, config.timesteps_diff, dtype=torch.float64)
    else:
        betas = cosine_betas(config.timesteps_diff)
    shift = config.schedule_shift
    if shift:
        betas = shift_log_snr(betas, shift)
    if config.zero_terminal_snr:
        return rescale_zero_terminal_snr(betas)
    what = f"{beta_start:g} .. {beta_end:g}" if kind == "linear" else kind
    shifted = f", log-SNR shift {shift:g}" if shift else ""
    _warn_signal_at_T(float(torch.cumprod(1.0 - betas, dim=0)[-1]), f"{what} over T={config.timesteps_diff}{shifted}",
                      _more_noise_at_T(config), stacklevel=3)
    return betas


def _more_noise_at_T(config: DiffusionConfig) -> str:
    """What to change in `config` so that x_T ends in pure noise."""
    fixes = []
    if config.beta_start is not None or config.beta_end is not None:
        fixes.append("leave beta_start/beta_end unset to use the paper's range scaled by 1000/T")
    if config.schedule_shift > 0:
        fixes.append(f"lower schedule_shift={config.schedule_shift:g}")
    fixes.append("use zero_terminal_snr=True (with prediction v)")
    return "Fix: " + "; or ".join(fixes) + "."


class NoiseSchedule:
    """A beta schedule and the closed forms that follow from it (DDPM Eq. 4, 6, 7).

    All coefficients are computed in float64 and cast to the working dtype where used. The schedule
    also knows what the network's output means (`prediction`: eps, v or x0), so that the loss and
    every sampler turn it into x0 and eps in one place (`split`).
    """

    def __init__(self, num_timesteps: int, beta_start: float, beta_end: float, warn: bool = True,
                 prediction: str = "eps") -> None:
        """The linear schedule (DDPM Sec. 4).

        Args:
            num_timesteps: T, the number of diffusion steps.
            beta_start, beta_end: the first and last beta of the linear schedule, 0 < b < 1.
            warn: warn when alphas_cumprod[T-1] keeps more than MAX_SIGNAL_AT_T of the signal.
            prediction: what the network predicts: "eps" (DDPM), "v" or "x0".
        """
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps={num_timesteps} must be at least 2.")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"betas must satisfy 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}.")
        self._set_betas(torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64),
                        torch.arange(num_timesteps), prediction)
        if warn:
            _warn_signal_at_T(self.signal_at_T, f"{beta_start:g} .. {beta_end:g} over T={num_timesteps}",
                              "Leave beta_start/beta_end unset to use the paper's range scaled by 1000/T.", stacklevel=2)

    @classmethod
    def from_betas(cls, betas: torch.Tensor, prediction: str = "eps") -> NoiseSchedule:
        """A schedule of any betas in (0, 1] (the last may be 1: zero terminal SNR), e.g. cosine_betas(T)."""
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or betas.shape[0] < 2 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D sequence of at least 2 values in (0, 1].")
        out = cls.__new__(cls)
        out._set_betas(betas, torch.arange(betas.shape[0]), prediction)
        return out

    def _set_betas(self, betas: torch.Tensor, timesteps: torch.Tensor, prediction: str = "eps") -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r}; choose one of {PREDICTIONS}.")
        self.prediction = prediction
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
        # Signal-to-noise ratio alphā / (1 - alphā) (Kingma et al. 2021); 0 at a zero-terminal-SNR T.
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)

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
        out = NoiseSchedule.__new__(NoiseSchedule)
        out._set_betas(betas_from_alphas_cumprod(abar), self.timesteps.to(idx.device)[idx], self.prediction)
        return out

    @classmethod
    def from_config(cls, config) -> NoiseSchedule:
        """The schedule a DiffusionConfig describes: linear (betas scaled by 1000 / T where not
        given) or cosine, its log-SNR shifted by schedule_shift, optionally rescaled to zero terminal
        SNR, with its prediction type."""
        return cls.from_betas(schedule_betas(config), config.prediction)

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

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for x_t = q_sample(x0, t, noise): eps (DDPM), x0,
        or v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, Sec. 4)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return _gather(self.sqrt_alphas_cumprod, t, x0) * noise - _gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def split(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from the network's output at x_t: the one place that reads `prediction`.

        With a = sqrt(abar), s = sqrt(1 - abar) and x_t = a x0 + s eps:
            eps: x0 = (x_t - s eps) / a
            x0:  eps = (x_t - a x0) / s
            v:   x0 = a x_t - s v,  eps = s x_t + a v   (a^2 + s^2 = 1; no division, so v stays
                 finite at abar = 0, where x_T holds no signal: zero terminal SNR)
        """
        a, s = _gather(self.sqrt_alphas_cumprod, t, x_t), _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return _split(self.prediction, x_t, a, s, out)

    def split_at(self, x_t: torch.Tensor, abar: float, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """split() at a noise level given as alphā itself (one for the batch), e.g. between two
        timesteps (samplers/sigmas.py)."""
        return _split(self.prediction, x_t, math.sqrt(abar), math.sqrt(1.0 - abar), out)

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert q_sample: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (x_t - _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / _gather(self.sqrt_alphas_cumprod, t, x_t)

    def q_posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x_0) (DDPM Eq. 7)."""
        return _gather(self.posterior_mean_coef1, t, x_t) * x0 + _gather(self.posterior_mean_coef2, t, x_t) * x_t
