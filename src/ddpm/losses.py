"""The training objective: DDPM's L_simple (Ho et al. 2020, Algorithm 1, Eq. 14) and its reweightings.

Every weighting is written as a weight on the x0 error, w(SNR) ||x0_hat - x0||², and divided by
how the model's own target scales that error, since for a fixed x_t
    ||eps_hat - eps||² = SNR ||x0_hat - x0||²,   ||v_hat - v||² = (SNR + 1) ||x0_hat - x0||².
So one formula per weighting holds for every prediction type (min-SNR is SNR-weighted differently for
each target: getting this wrong is a classic bug of reimplementations).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import LOSS_WEIGHTINGS, PREDICTIONS, TIMESTEP_SAMPLINGS
from .schedule import NoiseSchedule, _gather


def target_scale(snr: torch.Tensor, prediction: str) -> torch.Tensor:
    """c(SNR) with ||target error||² = c(SNR) ||x0 error||²: SNR for eps, SNR + 1 for v, 1 for x0."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction={prediction!r}; choose one of {PREDICTIONS}.")
    return {"eps": snr, "v": snr + 1.0, "x0": torch.ones_like(snr)}[prediction]


def snr_weight(snr: torch.Tensor, prediction: str, weighting: str = "uniform", gamma: float = 5.0) -> torch.Tensor:
    """The weight of the prediction's squared error at each SNR = alphā / (1 - alphā).

    uniform:      1 (plain MSE of the prediction; for eps that is L_simple)
    min-snr:      min(SNR, gamma) / c(SNR)            (Hang et al. 2023, Eq. 9-11)
    soft-min-snr: SNR gamma / (SNR + gamma) / c(SNR)  (a smooth min; k-diffusion's soft-min-snr)
    with c(SNR) from target_scale. With gamma = inf both reduce to SNR / c(SNR): L_simple's weighting
    of the x0 error, whatever the prediction type.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss weighting={weighting!r}; choose one of {LOSS_WEIGHTINGS}.")
    c = target_scale(snr, prediction)
    if weighting == "uniform":
        return torch.ones_like(snr)
    w_x0 = snr.clamp(max=gamma) if weighting == "min-snr" else 1.0 / (1.0 / snr + 1.0 / gamma)
    # eps at SNR = 0 is refused by the config (zero terminal SNR); elsewhere c > 0.
    return w_x0 / c


def draw_timesteps(batch: int, num_timesteps: int, sampling: str = "uniform", device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch,) timesteps in [0, T), each uniformly distributed.

    uniform:    independent draws (DDPM, Algorithm 1).
    stratified: [0, T) cut into `batch` equal slices, one independent draw in each, in shuffled
                order (a variant of Kingma et al. 2021's low-discrepancy sampler, which shares one
                offset across the slices). Each t is still uniform on {0, ..., T - 1}, so the loss
                keeps its expectation, but every batch spans the noise levels evenly instead of
                clustering by chance.
    """
    if sampling not in TIMESTEP_SAMPLINGS:
        raise ValueError(f"timestep sampling={sampling!r}; choose one of {TIMESTEP_SAMPLINGS}.")
    if sampling == "uniform":
        return torch.randint(0, num_timesteps, (batch,), device=device, generator=generator)
    slot = torch.randperm(batch, device=device, generator=generator)
    return slice_timestep(slot, torch.randint(0, num_timesteps, (batch,), device=device, generator=generator),
                          num_timesteps, batch)


def slice_timestep(slot: torch.Tensor, r: torch.Tensor, num_timesteps: int, batch: int) -> torch.Tensor:
    """The timestep (slot T + r) // B of slice `slot` (0..B-1) for r in {0, ..., T - 1}.

    That is floor((slot + u) T / B) for u ~ U[0, 1) with r = floor(u T), the continuous draw in the
    slice floored, computed in integers so that no float rounding can push a t into the next slice.
    Over all (slot, r) pairs each t in {0, ..., T - 1} comes up exactly B times: uniform r and a
    uniform slot give an exactly uniform t.
    """
    return (slot * num_timesteps + r) // batch


def diffusion_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    weighting: str = "uniform",
    snr_gamma: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted MSE of the network's prediction (schedule.prediction) with t uniform per image.

    Args:
        model: the network f_theta(x_t, t) (its output means schedule.prediction).
        schedule: the forward process.
        x0: (B, C, H, W) clean images in [-1, 1].
        generator: source of t and the noise, on x0's device.
        t, noise: (B,) timesteps and noise like x0, drawn by the caller; None = draw them here.
        y: (B,) class labels for a class-conditional model, or None.
        weighting, snr_gamma: see snr_weight.
    Returns:
        (loss, per_image_loss (B,), t (B,)): loss is the batch mean, in float32.
    """
    if t is None:
        t = draw_timesteps(x0.shape[0], schedule.num_timesteps, "uniform", x0.device, generator)
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_t = schedule.q_sample(x0, t, noise)
    out = model(x_t, t) if y is None else model(x_t, t, y)
    per_image = (out.float() - schedule.target(x0.float(), t, noise.float())).pow(2).mean(dim=(1, 2, 3))
    if weighting != "uniform":
        weights = snr_weight(schedule.snr, schedule.prediction, weighting, snr_gamma)
        per_image = per_image * _gather(weights, t, per_image).view(-1)
    return per_image.mean(), per_image, t
