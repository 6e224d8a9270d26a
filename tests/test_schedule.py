"""The forward process against closed-form math recomputed independently in float64."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from ddpm import DiffusionConfig
from ddpm.schedule import NoiseSchedule


def test_linear_betas_and_alphas_cumprod_match_float64_recomputation():
    T, b0, b1 = 50, 1e-4, 0.3
    s = NoiseSchedule(T, b0, b1)
    assert s.betas.dtype == torch.float64
    for t in range(T):
        beta = b0 + (b1 - b0) * t / (T - 1)
        assert s.betas[t].item() == pytest.approx(beta, rel=1e-12)
        assert s.alphas_cumprod[t].item() == pytest.approx(math.prod(1 - (b0 + (b1 - b0) * k / (T - 1)) for k in range(t + 1)), rel=1e-12)


def test_default_betas_are_scaled_so_x_T_is_pure_noise():
    for T in (50, 200, 1000):
        cfg = DiffusionConfig(timesteps_diff=T)
        b0, b1 = cfg.resolved_betas()
        assert b0 == pytest.approx(1e-4 * 1000 / T) and b1 == pytest.approx(0.02 * 1000 / T)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the scaled default must not warn
            s = NoiseSchedule.from_config(cfg)
        assert s.signal_at_T < 1e-3


def test_unscaled_paper_range_at_T200_warns_and_keeps_signal():
    with pytest.warns(UserWarning, match="not pure noise"):
        s = NoiseSchedule(200, 1e-4, 0.02)
    # sqrt(abar_T) ~ 0.37: about 36% of the signal amplitude survives, as the issue says.
    assert 0.3 < math.sqrt(s.signal_at_T) < 0.4


def test_closed_form_equals_composed_one_step_transitions():
    s = NoiseSchedule(30, 1e-3, 0.2, warn=False)
    t_all = torch.arange(30)
    # Mean: with zero noise, t one-step transitions scale x0 by prod sqrt(alpha) = sqrt(abar).
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    for t in range(30):
        x = s.q_step(x, t_all[t : t + 1], torch.zeros_like(x))
        mean_closed = s.q_sample(torch.ones_like(x), t_all[t : t + 1], torch.zeros_like(x))
        assert x.item() == pytest.approx(mean_closed.item(), rel=1e-12)
    # Variance: composed transitions (Monte Carlo, float64) against 1 - abar_t, within 5 standard errors.
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7, dtype=torch.float64)
    x = x0.clone()
    for t in range(30):
        tt = torch.full((n,), t)
        x = s.q_step(x, tt, torch.randn(x.shape, generator=gen, dtype=torch.float64))
        if t in (0, 9, 29):
            var = 1 - s.alphas_cumprod[t].item()
            assert x.var().item() == pytest.approx(var, abs=5 * var * math.sqrt(2 / n))
            assert x.mean().item() == pytest.approx(0.7 * s.sqrt_alphas_cumprod[t].item(), abs=5 * math.sqrt(var / n))


def test_posterior_matches_bayes_rule_for_gaussians():
    s = NoiseSchedule(40, 1e-3, 0.1, warn=False)
    for t in (1, 5, 39):
        _abar, abar_prev, alpha, beta = (s.alphas_cumprod[t].item(), s.alphas_cumprod[t - 1].item(),
                                        s.alphas[t].item(), s.betas[t].item())
        # q(x_{t-1} | x_0) q(x_t | x_{t-1}) as a product of Gaussians in x_{t-1}.
        precision = 1 / (1 - abar_prev) + alpha / beta
        x0, xt = 0.3, -1.1
        mean = (math.sqrt(abar_prev) * x0 / (1 - abar_prev) + math.sqrt(alpha) * xt / beta) / precision
        assert s.posterior_variance[t].item() == pytest.approx(1 / precision, rel=1e-10)
        got = s.q_posterior_mean(torch.full((1, 1, 1, 1), x0, dtype=torch.float64),
                                 torch.full((1, 1, 1, 1), xt, dtype=torch.float64), torch.tensor([t]))
        assert got.item() == pytest.approx(mean, rel=1e-10)


def test_predict_x0_inverts_q_sample():
    s = NoiseSchedule(100, 1e-4, 0.02 * 10)
    x0 = torch.rand(8, 1, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.randint(0, 100, (8,))
    torch.testing.assert_close(s.predict_x0_from_eps(s.q_sample(x0, t, noise), t, noise), x0)


def test_invalid_schedule_is_rejected():
    with pytest.raises(ValueError, match="beta_start <= beta_end"):
        NoiseSchedule(10, 0.2, 0.1)


def test_the_alphabar_figures_in_the_docs_are_what_the_code_computes():
    repo = Path(__file__).resolve().parents[1]
    docs = (repo / "README.md").read_text() + (repo / "docs" / "results.md").read_text()
    scaled = NoiseSchedule.from_config(DiffusionConfig(timesteps_diff=200)).signal_at_T
    with pytest.warns(UserWarning):
        unscaled = NoiseSchedule(200, 1e-4, 0.02).signal_at_T
    paper = NoiseSchedule(1000, 1e-4, 0.02).signal_at_T
    def sci(x: float) -> str:  # 3.0e-5, as the docs write it
        mantissa, exponent = f"{x:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"

    assert f"alphā_T = {sci(scaled)}" in docs and f"keeps {sci(scaled)} of the signal variance" in docs
    assert f"alphā_T = {unscaled:.3f} ({100 * unscaled ** 0.5:.0f}% of the signal amplitude)" in docs
    assert f"T = 1000 schedule ends at {sci(paper)}" in docs
