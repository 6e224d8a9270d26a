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


def test_inpainting_a_gaussian_fills_in_its_distribution():
    # Pixels independent: the filled ones must follow N(MU, S^2) whatever the known ones are.
    s = NoiseSchedule(200, 5e-4, 0.1)
    x = torch.full((2000, 1, 1, 2), 0.9, dtype=torch.float64)
    mask = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    out = inpaint(gaussian_eps(s), s, x, mask, torch.Generator().manual_seed(0), clip_x0=False)
    filled = out[..., 1].flatten()
    assert abs(filled.mean().item() - MU) < 0.03 and abs(filled.var().item() - S**2) < 0.03


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
    import subprocess
    import sys

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
    assert subprocess.run([sys.executable, "-m", "ddpm", "edit", "--help"], capture_output=True).returncode == 0
