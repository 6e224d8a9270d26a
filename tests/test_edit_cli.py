"""`ddpm edit` in-process: classes and guidance, img2img's spacing, the printed cost and the defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_diffusion_config, tiny_model_config
from PIL import Image

from ddpm import train_diffusion
from ddpm.cli import build_parser, main
from ddpm.editing import img2img, inpaint, repaint_levels
from ddpm.generation import load_model, network
from ddpm.images import to_uint8
from ddpm.runtime import precision_name, resolve_precision
from ddpm.samplers import image_generators


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    """A class-conditional and an unconditional tiny run (T = 40), one step each, and the inputs."""
    root = tmp_path_factory.mktemp("edit")
    out = {}
    for name, classes in (("cond", 10), ("uncond", 0)):
        cfg = tiny_diffusion_config(root / name, max_steps=1, num_sample_images=0, tensorboard=False)
        out[name] = str(train_diffusion(cfg, tiny_model_config(num_classes=classes)))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / "a.png")
    band = np.zeros((8, 8), np.uint8)
    band[3:5] = 255
    Image.fromarray(band).save(root / "band.png")
    out.update(image=str(root / "a.png"), mask=str(root / "band.png"))
    return out


def _edit(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["edit", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_edit_takes_a_class_and_guidance_like_sample(runs, tmp_path, capsys):
    npz = tmp_path / "in.npz"
    code, out, err = _edit(capsys, "inpaint", "--run", runs["cond"], "--image", runs["image"], "--mask", runs["mask"],
                           "--class", "3", "--guidance-scale", "2", "--resample", "2", "--jump-length", "7",
                           "--num-images", "2", "--precision", "fp32", "--out", str(tmp_path / "in.png"),
                           "--npz", str(npz))
    assert code == 0, err
    # The reference: the library's inpaint with the guided network and label 3 for every image.
    from ddpm.edit_io import load_edit_inputs

    loaded = load_model(runs["cond"])
    x, mask = load_edit_inputs([runs["image"]], runs["mask"], 8, 1)
    ref = inpaint(network(loaded.model, None, 2.0), loaded.schedule, x.expand(2, -1, -1, -1), mask,
                  image_generators(0, range(2)), 7, 2, loaded.diffusion_config.sample_variance,
                  loaded.diffusion_config.clip_x0, y=torch.full((2,), 3))
    assert np.array_equal(np.load(npz)["arr_0"], to_uint8(ref)), "the class and guidance did not reach the model"
    assert "class 3" in out and "guidance 2" in out

    code, out, err = _edit(capsys, "img2img", "--run", runs["cond"], "--image", runs["image"], "--strength", "0.5",
                           "--num-images", "2", "--out", str(tmp_path / "i.png"))
    assert code == 0 and "no --class" in out, (out, err)  # a conditional model edited without a class says so

    for argv, message in ((["--run", runs["uncond"], "--class", "3"], "unconditional model"),
                          (["--run", runs["cond"], "--class", "eleven"], "not one of this model's 10 classes"),
                          (["--run", runs["cond"], "--guidance-scale", "2"], "give --class")):
        code, out, err = _edit(capsys, "img2img", *argv, "--image", runs["image"], "--strength", "0.5",
                               "--out", str(tmp_path / "x.png"))
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)


def test_img2img_takes_a_spacing(runs, tmp_path, capsys, monkeypatch):
    import ddpm.samplers
    from ddpm.edit_io import load_edit_inputs

    real, asked = ddpm.samplers.timestep_list, []

    def spy(schedule, num_steps, spacing="uniform", start=None):
        asked.append((num_steps, spacing, start))
        return real(schedule, num_steps, spacing, start)

    monkeypatch.setattr(ddpm.samplers, "timestep_list", spy)
    loaded = load_model(runs["uncond"])
    x, _ = load_edit_inputs([runs["image"]], None, 8, 1)
    for spacing in ("uniform", "logsnr"):
        asked.clear()
        npz = tmp_path / f"{spacing}.npz"
        code, out, err = _edit(capsys, "img2img", "--run", runs["uncond"], "--image", runs["image"], "--strength",
                               "0.5", "--sampler", "ddim", "--sample-steps", "5", "--spacing", spacing,
                               "--num-images", "2", "--precision", "fp32", "--out", str(tmp_path / "i.png"),
                               "--npz", str(npz))
        assert code == 0, err
        assert asked and set(asked) == {(5, spacing, 19)}, asked  # strength 0.5 of T = 40: from index 19
        assert "5 network calls" in out
        ref = img2img(network(loaded.model), loaded.schedule, x.expand(2, -1, -1, -1), 0.5,
                      image_generators(0, range(2)), "ddim", 5, spacing=spacing,
                      clip_x0=loaded.diffusion_config.clip_x0)
        assert np.array_equal(np.load(npz)["arr_0"], to_uint8(ref)), spacing


def test_inpaint_prints_its_network_calls_before_it_starts(runs, tmp_path, capsys):
    T, J, U = 40, 7, 3  # T not a multiple of J: 5 jump points (33, 26, 19, 12, 5)
    code, out, err = _edit(capsys, "inpaint", "--run", runs["uncond"], "--image", runs["image"], "--mask",
                           runs["mask"], "--resample", str(U), "--jump-length", str(J), "--num-images", "1",
                           "--out", str(tmp_path / "in.png"))
    assert code == 0, err
    calls = T + (U - 1) * J * 5  # every level once, plus U - 1 redos of each 7-level stretch
    first, *rest = out.splitlines()
    assert f"{calls} network calls" in first and "in.png" not in first, out  # announced before the result line
    levels = repaint_levels(T, J, U)
    assert sum(b < a for a, b in zip(levels, levels[1:], strict=False)) == calls


def test_inpaint_defaults_are_affordable_and_the_help_says_what_they_cost(capsys):
    # The old defaults (8 completions, U = 10, J = 5: 1,955 calls at T = 200) ran > 10 min on a
    # 2-core CPU; docs/edit_table.md has label kept against calls.
    args = build_parser().parse_args(["edit", "inpaint", "--run", "r", "--image", "a", "--mask", "m", "--out", "o"])
    levels = repaint_levels(200, args.jump_length, args.resample)
    calls = sum(b < a for a, b in zip(levels, levels[1:], strict=False))
    assert calls <= 1000 and args.num_images <= 4, (calls, args.num_images)
    with pytest.raises(SystemExit):
        main(["edit", "inpaint", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{calls} network calls" in text and "docs/edit_table.md" in text


def test_edit_says_the_precision_it_runs_in(runs, tmp_path, capsys):
    # Inversion keeps precision auto: bf16 round-trips as well as fp32 (docs/edit_precision.md).
    auto = precision_name(resolve_precision("auto", torch.device("cpu")))
    for mode, extra in (("invert", ["--latent", str(tmp_path / "z.pt")]), ("interpolate", ["--image", runs["image"]])):
        for precision, expected in (("auto", auto), ("fp32", "fp32"), ("bf16", "bf16")):
            code, out, err = _edit(capsys, mode, "--run", runs["uncond"], "--image", runs["image"], *extra,
                                   "--sample-steps", "3", "--precision", precision, "--device", "cpu",
                                   "--out", str(tmp_path / "o.png"))
            assert code == 0, err
            assert f"5 network calls), precision {expected}" in out.splitlines()[0], out  # 3 - 1 inverting, 3 decoding
