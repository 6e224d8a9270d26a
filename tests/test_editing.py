"""Editing against what must hold exactly, and against the closed-form Gaussian model."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import tiny_model_config
from test_samplers_gaussian import MU, S, gaussian_eps

from ddpm.editing import (
    ddim_decode,
    ddim_invert,
    img2img,
    inpaint,
    interpolate,
    repaint_levels,
    slerp,
)
from ddpm.samplers import image_generators, run_sampler
from ddpm.schedule import NoiseSchedule
from ddpm.unet import UNet


def tiny_unet() -> UNet:
    model = UNet(tiny_model_config()).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_repaint_walk():
    assert repaint_levels(6, 2, 1) == [6, 5, 4, 3, 2, 1, 0]
    levels = repaint_levels(10, 2, 3)
    assert levels[0] == 10 and levels[-1] == 0
    assert all(abs(a - b) == 1 for a, b in zip(levels, levels[1:], strict=False))
    assert len(levels) - 1 == 10 + 2 * 2 * 2 * 4  # each of the 4 jump points goes up and down J, U - 1 times


@pytest.mark.parametrize("T", [2, 3, 7, 10, 30, 200])
def test_repaint_walk_is_valid_for_any_t_jump_and_resample(T):
    # T need not be a multiple of J (T = 200, J = 3 once climbed to level 201 and crashed inpaint).
    for J in sorted({*range(1, min(T, 12) + 1), T // 2 + 1, T - 1, T, T + 1} - {0}):
        for U in (1, 2, 3, 10):
            levels = repaint_levels(T, J, U)
            assert levels[0] == T and levels[-1] == 0, (T, J, U)  # from x_T to the clean image
            assert all(0 <= level <= T for level in levels), (T, J, U)
            steps = [b - a for a, b in zip(levels, levels[1:], strict=False)]
            assert set(steps) <= {-1, 1}, (T, J, U)
            ups = "".join("u" if s > 0 else "d" for s in steps).split("d")
            assert all(len(run) == J for run in ups if run), (T, J, U)  # every jump goes back exactly J levels
            # Every stretch of J levels from the top down is redone U times; only the bottom one
            # (levels 1 .. ((T - 1) mod J) + 1) is denoised once, as when U = 1.
            bottom = (T - 1) % J + 1
            visits = Counter(a for a, b in zip(levels, levels[1:], strict=False) if b < a)
            assert visits == {level: U if level > bottom else 1 for level in range(1, T + 1)}, (T, J, U)


def test_inpainting_runs_when_t_is_not_a_multiple_of_the_jump():
    s = NoiseSchedule(7, 1e-3, 0.3, warn=False)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, :] = 1
    out = inpaint(tiny_unet(), s, x, mask, image_generators(0, range(2)), jump_length=5, resample=2)
    assert torch.equal(out[..., mask[0, 0] == 0], x[..., mask[0, 0] == 0])


@pytest.mark.parametrize("resample", [1, 3])
def test_inpainting_keeps_the_known_pixels_exactly(resample):
    s = NoiseSchedule(30, 1e-3, 0.3, warn=False)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, :] = 1  # a band to fill
    out = inpaint(tiny_unet(), s, x, mask, image_generators(0, range(3)), jump_length=5, resample=resample)
    assert torch.equal(out[..., mask[0, 0] == 0], x[..., mask[0, 0] == 0])
    assert not torch.equal(out, x)


# A correlated Gaussian x0 ~ N(MU3, SIGMA3): pixel 0 is kept, pixels 1 and 2 are filled. With the
# exact denoiser every RePaint step is linear-Gaussian, so its output's law is known in closed form.
# (Independent pixels could not test the kept ones: nothing they do reaches the filled ones.) That
# law is RePaint's, not p(filled | kept): RePaint approaches the exact conditional only as it
# resamples, which the second test checks on the closed form.
MU3 = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
_L3 = torch.tensor([[0.5, 0.0, 0.0], [0.4, 0.3, 0.0], [-0.2, 0.25, 0.3]], dtype=torch.float64)
SIGMA3 = _L3 @ _L3.T  # correlations 0.8 and -0.46 between the kept pixel and the filled ones


def correlated_gaussian_eps(schedule: NoiseSchedule):
    """E[eps | x_t] for x0 ~ N(MU3, SIGMA3) on (B, 1, 1, 3) images: sigma (a^2 SIGMA + sigma^2 I)^-1 (x_t - a MU)."""
    abar = schedule.alphas_cumprod.double().view(-1, 1, 1)
    precision = torch.linalg.inv(abar * SIGMA3 + (1 - abar) * torch.eye(3, dtype=torch.float64))  # Cov[x_t]^-1, (T, 3, 3)

    def model(x, t):
        a, v = abar[t].sqrt(), 1 - abar[t]
        r = x.double().view(-1, 3, 1) - a * MU3.view(3, 1)
        return (v.sqrt() * precision[t] @ r).view(x.shape)

    return model


def repaint_law(schedule: NoiseSchedule, keep: torch.Tensor, value: torch.Tensor, jump_length: int,
                resample: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of RePaint's filled pixels, propagated in float64 through the walk.

    Down from level L (index i = L - 1): the filled pixels get the ancestral step
    c1_i E[x0 | x_L] + c2_i x_L + sqrt(beta_i) z, the kept ones a fresh draw of q(x_{L-1} | x0)
    (RePaint Algorithm 1); up from level L: q(x_{L+1} | x_L).
    """
    ab, al, be = (schedule.alphas_cumprod.double(), schedule.alphas.double(), schedule.betas.double())
    c1, c2 = schedule.posterior_mean_coef1.double(), schedule.posterior_mean_coef2.double()
    eye = torch.eye(3, dtype=torch.float64)
    fill, kept = torch.diag((~keep).double()), torch.diag(keep.double())
    x0_kept = kept @ value
    m, c = torch.zeros(3, dtype=torch.float64), eye.clone()  # x_T ~ N(0, I)
    a = ab.sqrt().view(-1, 1, 1)
    gains = a * SIGMA3 @ torch.linalg.inv(a * a * SIGMA3 + (1 - a * a) * eye)  # E[x0 | x_t] = MU + gain (x_t - a MU)
    levels = repaint_levels(schedule.num_timesteps, jump_length, resample)
    for now, nxt in zip(levels, levels[1:], strict=False):
        if nxt > now:
            m, c = al[now].sqrt() * m, al[now] * c + be[now] * eye
            continue
        i = now - 1
        gain = gains[i]
        step = fill @ (c1[i] * gain + c2[i] * eye)
        shift = fill @ (c1[i] * (MU3 - ab[i].sqrt() * gain @ MU3))
        a_prev, v_prev = (ab[i - 1].sqrt(), 1 - ab[i - 1]) if i > 0 else (1.0, 0.0)
        m = step @ m + shift + a_prev * x0_kept
        c = step @ c @ step.T + (be[i] if i > 0 else 0.0) * fill + v_prev * kept
    return m[~keep], c[~keep][:, ~keep]


def conditional_law(keep: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact law of the filled pixels given the kept ones under N(MU3, SIGMA3)."""
    s_fk, s_kk = SIGMA3[~keep][:, keep], SIGMA3[keep][:, keep]
    mean = MU3[~keep] + s_fk @ torch.linalg.solve(s_kk, value[keep] - MU3[keep])
    return mean, SIGMA3[~keep][:, ~keep] - s_fk @ torch.linalg.solve(s_kk, s_fk.T)


def test_inpainting_a_correlated_gaussian_matches_its_closed_form():
    # Few, large steps, so that the kept pixels' noise level matters: noising them to level L
    # instead of L - 1 moves the filled pixels' mean by 13 standard errors at this n (seen).
    s = NoiseSchedule(10, 0.01, 0.9)
    keep = torch.tensor([True, False, False])
    value = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)  # 3.4 standard deviations above MU3[0]
    n = 4000
    x = value.expand(n, 1, 1, 3).clone()
    mask = (~keep).double().view(1, 1, 1, 3)
    out = inpaint(correlated_gaussian_eps(s), s, x, mask, torch.Generator().manual_seed(0), jump_length=2,
                  resample=3, clip_x0=False)
    assert torch.equal(out[..., 0], x[..., 0].float())
    filled = out[:, 0, 0, 1:].double()  # (n, 2)
    mean, cov = repaint_law(s, keep, value, jump_length=2, resample=3)
    # Standard errors of a sample mean and a sample covariance entry of a Gaussian, n draws.
    se_mean = (cov.diag() / n).sqrt()
    se_cov = ((cov.diag().outer(cov.diag()) + cov**2) / n).sqrt()
    assert ((filled.mean(0) - mean).abs() < 5 * se_mean).all(), (filled.mean(0), mean, se_mean)
    assert ((filled.T.cov() - cov).abs() < 5 * se_cov).all(), (filled.T.cov(), cov, se_cov)


def test_repaint_resampling_brings_the_fill_to_the_exact_conditional():
    # The closed form above, at the seed's schedule: plain replacement (U = 1) misses most of the
    # kept pixel's pull on the filled ones (mean off by 0.15); resampling, RePaint's point, brings
    # the fill to p(filled | kept): mean within 0.015, covariance within 0.003 at J = 1, U = 10.
    s = NoiseSchedule(200, 5e-4, 0.1)
    keep = torch.tensor([True, False, False])
    value = torch.tensor([0.9, 0.0, 0.0], dtype=torch.float64)
    exact_mean, exact_cov = conditional_law(keep, value)
    gaps = []
    for jump_length, resample in ((1, 1), (5, 10), (1, 10)):
        mean, cov = repaint_law(s, keep, value, jump_length, resample)
        gaps.append(((mean - exact_mean).abs().max().item(), (cov - exact_cov).abs().max().item()))
    (mean_gaps, cov_gaps) = zip(*gaps, strict=True)
    assert mean_gaps[0] > 0.1 and mean_gaps[-1] < 0.02 and cov_gaps[-1] < 0.005, gaps
    assert list(mean_gaps) == sorted(mean_gaps, reverse=True) and list(cov_gaps) == sorted(cov_gaps, reverse=True), gaps


def test_img2img_strength_zero_is_the_input_and_one_is_sampling():
    s = NoiseSchedule(30, 1e-3, 0.3, warn=False)
    model = tiny_unet()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.equal(img2img(model, s, x, 0.0, image_generators(1, [0, 1])), x)
    for sampler in ("ddpm", "dpmpp-2m"):
        edited = img2img(model, s, x, 1.0, image_generators(1, [0, 1]), sampler=sampler, num_steps=6)
        gens = image_generators(1, [0, 1])
        sampled = run_sampler(sampler, model, s, torch.stack([torch.randn(1, 8, 8, generator=g) for g in gens]), gens,
                              num_steps=6)
        assert torch.equal(edited, sampled), sampler
    half = img2img(model, s, x, 0.5, image_generators(1, [0, 1]), sampler="ddim", num_steps=5)
    assert half.shape == x.shape and not torch.equal(half, x)
    with pytest.raises(ValueError, match="strength"):
        img2img(model, s, x, 1.5)


def test_inversion_then_decoding_reconstructs_the_input():
    # Inversion and decoding are each a first-order solver of the same ODE, so the round trip's error
    # halves with every doubling of the steps: max 0.05 (of the [-1, 1] range) at all 200 steps.
    s = NoiseSchedule(200, 5e-4, 0.1)
    model = gaussian_eps(s)
    x0 = (MU + S * torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0))).double()
    errors = [(ddim_decode(model, s, ddim_invert(model, s, x0, k), k) - x0).abs().max().item() for k in (50, 100, 200)]
    assert errors[-1] < 0.05, errors
    assert all(1.8 < a / b < 2.2 for a, b in zip(errors, errors[1:], strict=False)), errors


def test_interpolation_ends_at_the_decoded_end_points():
    s = NoiseSchedule(30, 1e-3, 0.3, warn=False)
    model = tiny_unet()
    a, b = torch.rand(2, 1, 8, 8) * 2 - 1
    strip = interpolate(model, s, a, b, frames=5, num_steps=10)
    ends = ddim_decode(model, s, ddim_invert(model, s, torch.stack([a, b]), 10), 10)
    assert strip.shape == (5, 1, 8, 8)
    torch.testing.assert_close(strip[[0, -1]], ends, rtol=0, atol=1e-5)
    z = slerp(torch.ones(3), torch.tensor([1.0, -1.0, 0.0]), [0.0, 0.5, 1.0])
    assert torch.equal(z[0], torch.ones(3)) and torch.equal(z[2], torch.tensor([1.0, -1.0, 0.0]))


def test_edit_command_line(tmp_path):
    # In this process (test_cli.ddpm); `ddpm edit --help` is in test_cli.test_help_is_the_manual.
    import numpy as np
    from PIL import Image
    from test_cli import TINY, ddpm

    run = tmp_path / "run"
    assert ddpm("train", *TINY, "--max-steps", "2", "--num-sample-images", "0", "--out", str(run)).returncode == 0
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(tmp_path / "a.png")  # RGB, not square
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "b.png")
    band = np.zeros((12, 20), np.uint8)
    band[4:8] = 255
    Image.fromarray(band).save(tmp_path / "band.png")
    base = ["--run", str(run), "--image", str(tmp_path / "a.png")]
    r = ddpm("edit", "inpaint", *base, "--mask", str(tmp_path / "band.png"), "--num-images", "3", "--resample", "2",
             "--jump-length", "5", "--out", str(tmp_path / "in.png"), "--npz", str(tmp_path / "in.npz"))
    assert r.returncode == 0, r.stderr
    arr = np.load(tmp_path / "in.npz")["arr_0"]
    assert arr.shape == (3, 8, 8, 1)
    assert (arr[:, :2] == arr[0, :2]).all()  # the kept rows are the same in every completion
    r = ddpm("edit", "img2img", *base, "--strength", "0.5", "--num-images", "2", "--sampler", "ddim",
             "--sample-steps", "4", "--out", str(tmp_path / "i2i.png"))
    assert r.returncode == 0, r.stderr
    r = ddpm("edit", "invert", *base, "--latent", str(tmp_path / "z.pt"), "--sample-steps", "5",
             "--out", str(tmp_path / "rec.png"))
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "z.pt").shape == (1, 1, 8, 8)
    r = ddpm("edit", "interpolate", *base, "--image", str(tmp_path / "b.png"), "--frames", "4", "--sample-steps", "5",
             "--out", str(tmp_path / "strip.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "strip.png").size[0] > 3 * Image.open(tmp_path / "strip.png").size[1]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    for args, message in ((["--mask", str(tmp_path / "b.png")], "Mask"), (["--mask", str(tmp_path / "bad.png")], "cannot be read")):
        r = ddpm("edit", "inpaint", *base, *args, "--out", str(tmp_path / "x.png"))
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = ddpm("edit", "interpolate", *base, "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "--image 2 time(s)" in r.stderr
