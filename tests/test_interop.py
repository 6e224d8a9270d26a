"""diffusers model folders in and out (interop.py): the official DDPM models' architectures built by
diffusers itself give our import's output to float32 rounding, our export loads in DDPMPipeline and
gives ours, settings without an equivalent are refused by name, and the CLI runs it all."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch
from conftest import tiny_diffusion_config, tiny_model_config
from PIL import Image
from safetensors.torch import load_file, save_file
from test_cli import ddpm

from ddpm import DiffusionConfig, ModelConfig, train_diffusion
from ddpm.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from ddpm.config import config_from_dict, config_to_dict
from ddpm.errors import UsageError
from ddpm.generation import load_model
from ddpm.interop import SCHEDULER_DEFAULTS, UNET_DEFAULTS, read_diffusers, write_diffusers
from ddpm.run_dir import RunDir
from ddpm.schedule import NoiseSchedule, cosine_betas
from ddpm.unet import UNet

diffusers = pytest.importorskip("diffusers")

# The published configs (unet/config.json, every key they have) of google/ddpm-cifar10-32 and
# google/ddpm-celebahq-256 (the LSUN church, bedroom and cat models share the second), and their
# scheduler's. Keys they lack (dropout, ...) take UNet2DModel's defaults.
CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=[128, 256, 256, 256],
               down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
               up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
               norm_eps=1e-6, norm_num_groups=32, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
               act_fn="silu", attention_head_dim=None, center_input_sample=False, time_embedding_type="positional",
               mid_block_scale_factor=1)
CELEBAHQ = dict(CIFAR10, sample_size=256, block_out_channels=[128, 128, 256, 256, 512, 512],
                down_block_types=["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"])
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=True,
                 variance_type="fixed_small", trained_betas=None)
# Narrower and smaller than published, the rest as published: (config, widths, sample_size).
SMALL = {"cifar10": (CIFAR10, (16, 32, 32, 32), 16), "celebahq": (CELEBAHQ, (8, 8, 16, 16, 32, 32), 64)}


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Random changes to every parameter, so that no zero or unit initialisation hides a mapping error."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def diffusers_folder(path, name: str, **scheduler):
    """A UNet2DModel of the named published config (narrower, random weights) saved with save_pretrained,
    its config.json then cut to the published keys, as the Hub serves it."""
    config, widths, size = SMALL[name]
    config = {**config, "block_out_channels": list(widths), "norm_num_groups": 8, "sample_size": size}
    unet = perturb(diffusers.UNet2DModel(**config))
    unet.save_pretrained(path / "unet")
    (path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "_diffusers_version": "0.0.4",
                                                           **config}))
    diffusers.DDPMScheduler(**{**SCHEDULER, **scheduler}).save_pretrained(path / "scheduler")
    return unet


def test_our_tables_of_diffusers_defaults_are_the_installed_ones():
    """An absent config key means diffusers' default: ours must be the same."""
    for cls, ours in ((diffusers.UNet2DModel, UNET_DEFAULTS), (diffusers.DDPMScheduler, SCHEDULER_DEFAULTS)):
        params = inspect.signature(cls.__init__).parameters
        theirs = {k: list(p.default) if isinstance(p.default, tuple) else p.default
                  for k, p in params.items() if k != "self"}
        assert theirs == ours, cls.__name__


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_official_architectures_import_to_the_same_outputs_and_betas(tmp_path, name):
    unet = diffusers_folder(tmp_path, name)
    loaded = load_model(checkpoint=tmp_path)
    mc = loaded.model_config
    assert mc.embedding_placement == "after_conv1" and mc.norm_eps == 1e-6 and mc.downsample_padding == 0
    assert (mc.embedding_flip_sin_to_cos, mc.embedding_freq_shift, mc.attention_heads) == (False, 1, 1)
    assert mc.transformer_layers == ((1,) if name == "cifar10" else (4,)) and mc.num_res_blocks == 2
    size = SMALL[name][2]
    x, t = torch.randn(4, 3, size, size), torch.tensor([0, 1, 617, 999])
    with torch.no_grad():
        ours, theirs = loaded.model(x, t), unet(x, t).sample
    assert relative_error(ours, theirs) <= 1e-5
    scheduler = diffusers.DDPMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.schedule.num_timesteps == 1000 and loaded.diffusion_config.sample_variance == "beta_tilde"
    # diffusers computes its linspace in float32, we in float64: equal to float32 rounding.
    torch.testing.assert_close(loaded.schedule.betas.float(), scheduler.betas, rtol=2**-23, atol=0)


@pytest.mark.parametrize("scheduler", [dict(beta_schedule="squaredcos_cap_v2"),
                                       dict(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True,
                                            prediction_type="v_prediction"),
                                       dict(prediction_type="sample", variance_type="fixed_large", clip_sample=False,
                                            num_train_timesteps=50, beta_start=0.001, beta_end=0.3)])
def test_every_schedule_diffusers_shares_with_us_imports_to_the_same_betas(tmp_path, scheduler):
    diffusers_folder(tmp_path, "cifar10", **scheduler)
    loaded = load_model(checkpoint=tmp_path)
    theirs = diffusers.DDPMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    # Same formulas (the cosine's max_beta 0.999 clip and Lin et al.'s rescaling included): in float64
    # they agree to float64 rounding. diffusers runs them in float32, where 1 - alphā near 1 cancels:
    # its betas are off by up to a few float32 ulps of 1 (0.4% of the first rescaled beta, 4e-5).
    assert float((loaded.schedule.betas.float() - theirs.betas).abs().max()) <= 4 * 2**-23
    if theirs.config.beta_schedule == "squaredcos_cap_v2" and not theirs.config.rescale_betas_zero_snr:
        assert torch.equal(cosine_betas(1000).float(), theirs.betas) and theirs.betas[-1] == torch.tensor(0.999)  # clipped
    if theirs.config.rescale_betas_zero_snr:
        from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

        torch.testing.assert_close(rescale_zero_terminal_snr(cosine_betas(1000)), loaded.schedule.betas,
                                   rtol=1e-12, atol=1e-15)
    cfg = loaded.diffusion_config
    assert cfg.prediction == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[theirs.config.prediction_type]
    assert cfg.zero_terminal_snr == theirs.config.rescale_betas_zero_snr and cfg.clip_x0 == theirs.config.clip_sample


def test_the_hubs_pre_0_14_attention_names_and_a_top_level_folder_import(tmp_path):
    """google/ddpm-* weights name attention query/key/value/proj_attn; save_pretrained(unet) alone
    puts config.json and the weights at the top level."""
    unet = diffusers_folder(tmp_path / "hub", "cifar10")
    flat = tmp_path / "flat"
    unet.save_pretrained(flat)
    diffusers.DDPMScheduler(**SCHEDULER).save_pretrained(flat)
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    weights = load_file(flat / "diffusion_pytorch_model.safetensors")
    for new, old in legacy.items():
        weights = {k.replace(f".{new}.", f".{old}."): v for k, v in weights.items()}
    assert any(".query." in k for k in weights)
    save_file(weights, str(flat / "diffusion_pytorch_model.safetensors"))
    reference = load_model(checkpoint=tmp_path / "hub").model.state_dict()
    for k, v in load_model(checkpoint=flat).model.state_dict().items():
        assert torch.equal(v, reference[k]), k


def trained_run(tmp_path, **model):
    cfg = tiny_diffusion_config(tmp_path, max_steps=2, num_sample_images=0, tensorboard=False)
    return RunDir(train_diffusion(cfg, tiny_model_config(embedding_placement="after_conv1", **model)))


def test_export_loads_in_ddpm_pipeline_gives_our_eps_and_imports_back_to_the_same_weights(tmp_path):
    run = trained_run(tmp_path)
    r = ddpm("export", "--run", str(run.path), "--format", "diffusers", "--out", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    state = load_checkpoint(run.checkpoints()[-1])
    model, *_ = model_from_checkpoint(run.checkpoints()[-1])
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "d")
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 17, 39])
    with torch.no_grad():
        ours, theirs = model(x, t), pipe.unet(x, t).sample
    assert relative_error(ours, theirs) <= 1e-5
    ours_schedule = NoiseSchedule.from_config(config_from_dict(DiffusionConfig, state["diffusion_config"]))
    torch.testing.assert_close(ours_schedule.betas.float(), pipe.scheduler.betas, rtol=2**-23, atol=0)
    assert pipe.scheduler.config.num_train_timesteps == 40 and pipe.scheduler.config.variance_type == "fixed_large"
    # Back through the import: the same weights, bit for bit, and the same configs.
    back = read_diffusers(tmp_path / "d")
    assert back.keys() >= {"ema", "model_config", "diffusion_config", "step"} and back["step"] == 2
    assert back["ema"].keys() == state["ema"].keys()
    assert all(torch.equal(back["ema"][k], v) for k, v in state["ema"].items())
    assert config_from_dict(ModelConfig, back["model_config"]) == config_from_dict(ModelConfig, state["model_config"])
    assert back["diffusion_config"] == config_to_dict(config_from_dict(DiffusionConfig, state["diffusion_config"]))


@pytest.mark.parametrize("model", [
    dict(attention_heads=2, num_classes=3, embedding_freq_shift=0, embedding_flip_sin_to_cos=True,
         downsample_padding=0, norm_eps=1e-6, dim_multiply=(1, 2, 2), lowest_resolution_size=2, transformer_layers=(1,)),
    dict(attention_heads=4, base_dim=16, dim_multiply=(1, 1), transformer_layers=(0, 1), num_res_blocks=1, dropout=0.1),
])
def test_every_option_we_export_gives_our_output_in_unet2dmodel(tmp_path, model):
    config = tiny_model_config(embedding_placement="after_conv1", **model)
    net = perturb(UNet(config))
    diffusion = tiny_diffusion_config(tmp_path, beta_schedule="cosine", prediction="v", zero_terminal_snr=True)
    state = {"ema": net.state_dict(), "model_config": config_to_dict(config), "step": 5,
             "diffusion_config": config_to_dict(diffusion), "class_names": ["a", "b", "c"][:config.num_classes]}
    write_diffusers(state, tmp_path / "d")
    unet, info = diffusers.UNet2DModel.from_pretrained(tmp_path / "d", subfolder="unet", output_loading_info=True)
    assert not any(info.values()), info  # no weight missing, unexpected or mismatched
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 21, 39])
    y = torch.tensor([0, 2, 3]) if config.num_classes else None  # 3 = our 'no class', the last entry
    with torch.no_grad():
        ours, theirs = net(x, t, y), unet.eval()(x, t, class_labels=y).sample
    assert relative_error(ours, theirs) <= 1e-5
    loaded = load_model(checkpoint=tmp_path / "d")
    assert loaded.model_config == config and loaded.class_names == state["class_names"] and loaded.step == 5
    scheduler = diffusers.DDPMScheduler.from_pretrained(tmp_path / "d", subfolder="scheduler")
    # diffusers rescales to zero terminal SNR in float32 (its rounding depends on its version and the CPU's
    # kernels): the same bound as the float32 comparison at T = 1000 above, a few float32 ulps of 1;
    # our float64 rescaling is compared with diffusers' own function there, to float64 rounding.
    assert float((loaded.schedule.betas.float() - scheduler.betas).abs().max()) <= 4 * 2**-23


def test_a_shifted_schedule_exports_as_its_betas_and_imports_back(tmp_path):
    config = tiny_model_config(embedding_placement="after_conv1")
    diffusion = tiny_diffusion_config(tmp_path, beta_schedule="cosine", schedule_shift=-1.5, prediction="v",
                                      zero_terminal_snr=True)
    state = {"ema": UNet(config).state_dict(), "model_config": config_to_dict(config), "step": 1,
             "diffusion_config": config_to_dict(diffusion)}
    write_diffusers(state, tmp_path / "d")
    ours = NoiseSchedule.from_config(diffusion)
    scheduler = diffusers.DDPMScheduler.from_pretrained(tmp_path / "d", subfolder="scheduler")
    assert torch.equal(scheduler.betas, ours.betas.float())  # diffusers has no shift: it takes the betas as given
    assert scheduler.alphas_cumprod[-1].item() == 0.0
    loaded = load_model(checkpoint=tmp_path / "d")
    assert loaded.diffusion_config == diffusion and torch.equal(loaded.schedule.betas, ours.betas)
    # Betas that are not ddpm.json's schedule are refused by name.
    path = tmp_path / "d" / "scheduler" / "scheduler_config.json"
    values = json.loads(path.read_text())
    values["trained_betas"][5] *= 1.01
    path.write_text(json.dumps(values))
    with pytest.raises(CheckpointError, match=r"scheduler_config\.json: trained_betas=\[40 values\].*other betas"):
        load_model(checkpoint=tmp_path / "d")
    # Without trained betas (a stock scheduler put in), the import takes diffusers' unshifted schedule,
    # whatever ddpm.json says.
    values["trained_betas"], values["rescale_betas_zero_snr"] = None, True
    path.write_text(json.dumps(values))
    plain = load_model(checkpoint=tmp_path / "d")
    assert plain.diffusion_config.schedule_shift == 0.0
    assert torch.equal(plain.schedule.betas, NoiseSchedule.from_config(dataclasses.replace(diffusion, schedule_shift=0.0)).betas)


@pytest.mark.parametrize(("edit", "field"), [
    (dict(resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift"),
    (dict(time_embedding_type="fourier"), "time_embedding_type"),
    (dict(out_channels=6), "out_channels"),
    (dict(attention_head_dim=8, down_block_types=["AttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"],
          up_block_types=["UpBlock2D", "UpBlock2D", "UpBlock2D", "AttnUpBlock2D"]),
     "attention_head_dim"),  # 16 and 32 channels (level 0, bottleneck): 2 and 4 heads
    (dict(block_out_channels=[16, 24, 32, 32]), "block_out_channels"),
    (dict(up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]), "up_block_types"),
    (dict(num_class_embeds=10), "num_class_embeds"),
    (dict(cross_attention_dim=64), "cross_attention_dim"),
])
def test_a_unet_setting_we_cannot_represent_is_refused_by_name(tmp_path, edit, field):
    diffusers_folder(tmp_path, "cifar10")
    path = tmp_path / "unet" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(CheckpointError, match=rf"config\.json: {field}=") as refused:
        load_model(checkpoint=tmp_path)
    assert str(path) in str(refused.value)


@pytest.mark.parametrize(("edit", "field"), [(dict(beta_schedule="scaled_linear"), "beta_schedule"),
                                             (dict(trained_betas=[0.1] * 1000), "trained_betas"),
                                             (dict(variance_type="learned_range"), "variance_type")])
def test_a_schedule_we_cannot_represent_is_refused_by_name(tmp_path, edit, field):
    diffusers_folder(tmp_path, "cifar10")
    path = tmp_path / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    r = ddpm("sample", "--checkpoint", str(tmp_path), "--num-images", "1", "--out", str(tmp_path / "g.png"))
    assert r.returncode == 2 and f"scheduler_config.json: {field}=" in r.stderr, r.stderr


@pytest.mark.parametrize("missing", ["unet/diffusion_pytorch_model.safetensors", "unet/config.json",
                                     "scheduler/scheduler_config.json"])
def test_a_missing_file_is_named(tmp_path, missing):
    diffusers_folder(tmp_path, "cifar10")
    (tmp_path / missing).unlink()
    with pytest.raises(CheckpointError, match="does not exist") as refused:
        load_model(checkpoint=tmp_path)
    assert str(tmp_path / missing) in str(refused.value)


def test_what_diffusers_cannot_represent_is_refused_with_the_reason(tmp_path):
    run = RunDir(train_diffusion(tiny_diffusion_config(tmp_path, max_steps=1, num_sample_images=0, tensorboard=False),
                                 tiny_model_config()))  # the seed's embedding_placement="block_start"
    r = ddpm("export", "--run", str(run.path), "--format", "diffusers", "--out", str(tmp_path / "d"))
    assert r.returncode == 2 and "embedding_placement='block_start'" in r.stderr and "after_conv1" in r.stderr
    assert not (tmp_path / "d").exists()  # refused before anything is written
    state = {"ema": {}, "model_config": config_to_dict(tiny_model_config(embedding_placement="after_conv1",
                                                                          dim_multiply=(2, 4))),
             "diffusion_config": config_to_dict(tiny_diffusion_config(tmp_path)), "step": 0}
    with pytest.raises(UsageError, match=r"dim_multiply=\[2, 4\]"):
        write_diffusers(state, tmp_path / "d")
    widths = tiny_model_config(embedding_placement="after_conv1", attention_heads=2, transformer_layers=(0,))
    state["model_config"] = config_to_dict(widths)  # 8 and 16 channels: 4 and 8 per head
    with pytest.raises(UsageError, match="attention_heads=2"):
        write_diffusers(state, tmp_path / "d")
    state["model_config"] = config_to_dict(tiny_model_config(embedding_placement="after_conv1", patch_size=2))
    with pytest.raises(UsageError, match="patch_size=2"):
        write_diffusers(state, tmp_path / "d")


def test_convert_and_sample_from_the_folder_give_the_same_images(tmp_path):
    diffusers_folder(tmp_path / "d", "cifar10")
    r = ddpm("convert", str(tmp_path / "d"), "--out", str(tmp_path / "m.safetensors"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m.json").read_text())["model_config"]["downsample_padding"] == 0
    common = ["--num-images", "2", "--sampler", "ddim", "--sample-steps", "3", "--seed", "1"]
    for source, name in ((tmp_path / "d", "a"), (tmp_path / "m.safetensors", "b")):
        r = ddpm("sample", "--checkpoint", str(source), *common, "--out", str(tmp_path / f"{name}.png"),
                 "--npz", str(tmp_path / f"{name}.npz"))
        assert r.returncode == 0, r.stderr
    a, b = np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"]
    assert a.shape == (2, 16, 16, 3) and np.array_equal(a, b)
    r = ddpm("sample", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "c.png"))  # not a model folder
    assert r.returncode == 2 and "unet/config.json does not exist" in r.stderr


def test_checkpoints_older_than_the_new_fields_take_todays_defaults():
    old = config_to_dict(tiny_model_config())
    for name in ("norm_eps", "downsample_padding", "embedding_flip_sin_to_cos", "embedding_freq_shift"):
        del old[name]
    assert config_from_dict(ModelConfig, old) == tiny_model_config()
    assert (ModelConfig.norm_eps, ModelConfig.downsample_padding) == (1e-5, 1)
    assert (ModelConfig.embedding_flip_sin_to_cos, ModelConfig.embedding_freq_shift) == (False, 1)


def test_edit_takes_a_diffusers_folder(tmp_path):
    diffusers_folder(tmp_path / "d", "cifar10", num_train_timesteps=20, beta_end=0.5)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    band = np.zeros((16, 16), np.uint8)
    band[6:10] = 255
    Image.fromarray(band).save(tmp_path / "band.png")
    r = ddpm("edit", "inpaint", "--checkpoint", str(tmp_path / "d"), "--image", str(tmp_path / "a.png"), "--mask",
             str(tmp_path / "band.png"), "--resample", "1", "--num-images", "1", "--precision", "fp32",
             "--out", str(tmp_path / "in.png"), "--npz", str(tmp_path / "in.npz"))
    assert r.returncode == 0, r.stderr
    out = np.load(tmp_path / "in.npz")["arr_0"][0]
    assert "20 network calls" in r.stdout and np.array_equal(out[:6], np.asarray(Image.open(tmp_path / "a.png"))[:6])
