"""Samplers against the paper's formulas, an oracle model, and each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_diffusion_config, tiny_model_config

import ddpm.images
from ddpm.cli import main
from ddpm.generation import sample_images
from ddpm.samplers import ddim_sample, ddpm_sample, image_generators, timestep_list
from ddpm.schedule import NoiseSchedule
from ddpm.training import train_diffusion
from ddpm.unet import UNet

# Short test schedules need not end in pure noise.
pytestmark = pytest.mark.filterwarnings("ignore:The beta schedule")


def oracle(schedule: NoiseSchedule, x0: torch.Tensor):
    """A model that predicts the exact noise of x_t given the true x0."""

    def model(x_t, t):
        return (x_t - schedule.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1).float() * x0) / \
            schedule.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1).float()

    return model


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ddpm_with_oracle_recovers_x0(variance):
    s = NoiseSchedule(50, 2e-3, 0.4)
    x0 = torch.rand(4, 1, 6, 6) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    out = ddpm_sample(oracle(s, x0), s, torch.randn(x0.shape, generator=gen), gen, variance=variance)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_ddim_with_oracle_recovers_x0():
    s = NoiseSchedule(50, 2e-3, 0.4)
    x0 = torch.rand(4, 1, 6, 6) * 2 - 1
    for steps in (5, 50):
        out = ddim_sample(oracle(s, x0), s, torch.randn(x0.shape), timesteps=timestep_list(s, steps))
        torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_posterior_mean_step_equals_algorithm_2():
    # Without clipping, mu = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps)  (Algorithm 2, line 4).
    s = NoiseSchedule(30, 1e-3, 0.3)
    x_t = torch.randn(30, 1, 3, 3, dtype=torch.float64)
    eps = torch.randn_like(x_t)
    t = torch.arange(30)
    mean = s.q_posterior_mean(s.predict_x0_from_eps(x_t, t, eps), x_t, t)
    view = (-1, 1, 1, 1)
    alg2 = (x_t - s.betas.view(view) / s.sqrt_one_minus_alphas_cumprod.view(view) * eps) / s.alphas.sqrt().view(view)
    torch.testing.assert_close(mean, alg2)


def test_ddim_eta1_all_steps_equals_ddpm_with_posterior_variance():
    # With eta = 1 and every step, DDIM's sigma_t^2 is beta_tilde and its mean is the posterior mean,
    # so with the same noise draws the two samplers give the same images.
    s = NoiseSchedule(40, 1e-3, 0.3)
    model = UNet(tiny_model_config()).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x_T = torch.randn(2, 1, 8, 8)
    a = ddpm_sample(model, s, x_T, torch.Generator().manual_seed(3), variance="beta_tilde", clip_x0=False)
    b = ddim_sample(model, s, x_T, torch.Generator().manual_seed(3), timestep_list(s, 40), eta=1.0, clip_x0=False)
    torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_images_depend_only_on_seed_and_index():
    s = NoiseSchedule(10, 1e-2, 0.5)
    model = UNet(tiny_model_config()).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    a = sample_images(model, s, 5, seed=7, batch_size=5)
    b = sample_images(model, s, 5, seed=7, batch_size=2)
    c = sample_images(model, s, 5, seed=8, batch_size=5)
    d = sample_images(model, s, 5, seed=7, sampler="ddim", num_steps=4, eta=0.5, batch_size=3)
    e = sample_images(model, s, 5, seed=7, sampler="ddim", num_steps=4, eta=0.5, batch_size=5)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(d, e)
    assert not torch.allclose(a, c)
    assert a.shape == (5, 1, 8, 8) and a.abs().max() <= 1.0 + 1e-5


def test_per_image_generators_are_distinct():
    g = image_generators(0, [0, 1])
    assert not torch.equal(torch.randn(3, generator=g[0]), torch.randn(3, generator=g[1]))


@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
def test_timestep_lists(spacing):
    s = NoiseSchedule(1000, 1e-4, 0.02)
    assert timestep_list(s, 1000, spacing) == list(range(999, -1, -1))
    for k in (1, 2, 5, 10, 37, 999):
        ts = timestep_list(s, k, spacing)
        assert len(ts) == k and ts[0] == 999 and (k == 1 or ts[-1] == 0)
        assert all(a > b for a, b in zip(ts, ts[1:], strict=False))
    assert timestep_list(s, 4, spacing, start=300)[0] == 300
    with pytest.raises(ValueError, match="1 .. 1000"):
        timestep_list(s, 0, spacing)
    with pytest.raises(ValueError, match="1 .. 1000"):
        timestep_list(s, 1001, spacing)


def test_sample_trajectory_walks_the_grids_steps_of_a_run_with_sample_steps(tmp_path, monkeypatch):
    """`ddpm sample --trajectory` on a run trained with sampler=ddim, sample_steps=4 shows those 4 steps."""
    run = train_diffusion(tiny_diffusion_config(tmp_path, max_steps=2, num_sample_images=0, tensorboard=False,
                                                sampler="ddim", sample_steps=4), tiny_model_config())
    shown = []
    real_figure = ddpm.images.trajectory_figure
    monkeypatch.setattr(ddpm.images, "trajectory_figure", lambda frames, path: shown.extend(frames) or real_figure(frames, path))
    assert main(["sample", "--run", str(run), "--num-images", "1", "--out", str(tmp_path / "g.png"),
                 "--npz", str(tmp_path / "s.npz"), "--trajectory", str(tmp_path / "t.png")]) == 0
    grid = timestep_list(NoiseSchedule(40, 1e-4, 0.02), 4, "uniform")  # [39, 26, 13, 0]: the run's 4 steps
    assert [t - 1 for t, _, _ in shown] == grid
    # The last predicted x_0 is the sampled image itself (DDIM's last step returns x0).
    final = ddpm.images.to_uint8(shown[-1][2][None])
    np.testing.assert_array_equal(final, np.load(tmp_path / "s.npz")["arr_0"])
