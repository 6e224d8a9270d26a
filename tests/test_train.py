"""The training loop end to end on tiny configs: run folder, checkpoints, EMA, learning."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import random_png_folder, tiny_diffusion_config, tiny_model_config

from ddpm import DiffusionConfig, ModelConfig, train_diffusion
from ddpm.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
)
from ddpm.config import ConfigError
from ddpm.data import DatasetNotFoundError
from ddpm.run_dir import RunDir
from ddpm.training import Trainer, ema_decay_at, ema_update
from ddpm.unet import UNet


def test_training_writes_the_run_folder_and_learns(tmp_path):
    cfg = tiny_diffusion_config(tmp_path, max_steps=60, log_every_steps=10, checkpoint_every_steps=25)
    run = train_diffusion(cfg, tiny_model_config())
    assert run == tmp_path / "run"
    configs = json.loads((run / "config.json").read_text())
    assert configs["diffusion_config"]["max_steps"] == 60 and configs["model_config"]["base_dim"] == 8
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert {"loss", "lr", "grad_norm", "ema_decay", "images_per_s"} <= set(rows[0])
    # The zero-initialised model starts at MSE ~1 against unit noise; training must bring it down.
    assert rows[0]["loss"] > 0.5 and rows[-1]["loss"] < 0.7 * rows[0]["loss"]
    assert [p.name for p in RunDir(run).checkpoints()] == ["step_00000025.pt", "step_00000050.pt", "step_00000060.pt"]
    for name in ("forward.png", "loss.png", "samples/step_00000060.png"):
        assert (run / name).is_file(), name
    state = load_checkpoint(run / "checkpoints" / "step_00000060.pt")
    assert state["step"] == 60 and {"model", "ema", "optimizer", "lr_schedule"} <= set(state)
    model, dcfg, mcfg, step = model_from_checkpoint(run / "checkpoints" / "step_00000060.pt")
    assert step == 60 and mcfg == tiny_model_config() and dcfg.max_steps == 60
    # The EMA differs from the trained weights (it lags them) but is close after warm-up decay.
    trained = UNet(mcfg)
    trained.load_state_dict(state["model"])
    diffs = [(a - b).abs().max().item() for a, b in zip(model.parameters(), trained.parameters(), strict=True)]
    assert max(diffs) > 0


def test_same_seed_same_run(tmp_path):
    a = train_diffusion(tiny_diffusion_config(tmp_path / "a", max_steps=6, num_sample_images=0), tiny_model_config())
    b = train_diffusion(tiny_diffusion_config(tmp_path / "b", max_steps=6, num_sample_images=0), tiny_model_config())
    sa = load_checkpoint(a / "checkpoints" / "step_00000006.pt")["model"]
    sb = load_checkpoint(b / "checkpoints" / "step_00000006.pt")["model"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)


def test_ema_update_and_warmup_match_formula():
    torch.manual_seed(0)
    ema, model = UNet(tiny_model_config()), UNet(tiny_model_config())
    for p in model.parameters():
        torch.nn.init.normal_(p)
    before = [p.clone() for p in ema.parameters()]
    ema_update(ema, model, 0.9)
    for e, b, m in zip(ema.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * m)
    cfg = DiffusionConfig(ema_decay=0.9999)
    assert ema_decay_at(1, cfg) == pytest.approx(2 / 11)
    assert ema_decay_at(10**7, cfg) == 0.9999
    assert ema_decay_at(1, DiffusionConfig(ema_decay=0.99, ema_warmup=False)) == 0.99


def _optimizer_moments(trainer) -> list[torch.Tensor]:
    return [v for p in trainer.model.parameters() for k, v in trainer.optimizer.state[p].items() if k != "step"]


# The update runs on the device, so it is checked on every device there is (`pytest -m gpu` on a GPU).
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                   reason="needs a CUDA device")])]


@pytest.mark.parametrize("device", DEVICES)
def test_device_side_clip_and_step_equal_clip_then_step(tmp_path, device):
    """The fused kernel's in-kernel clipping (grad_scale) gives PyTorch's clip_grads_with_norm_ + step."""
    cfg = tiny_diffusion_config(tmp_path, grad_clip=0.05, ema_decay=0.5, ema_warmup=False, device=device)
    device_side, host_side = Trainer(cfg, tiny_model_config()), Trainer(cfg, tiny_model_config())
    host_side._device_side_update = False
    assert device_side._device_side_update  # CPUs and GPUs have the fused kernel
    for _ in range(3):
        norm_a, norm_b = device_side.train_step()["grad_norm"], host_side.train_step()["grad_norm"]
        assert float(norm_a) > 10 * cfg.grad_clip  # clipping is active
        torch.testing.assert_close(norm_a, norm_b)
    for a, b in zip(_optimizer_moments(device_side), _optimizer_moments(host_side), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)  # exp_avg holds the clipped gradients
    for a, b in zip(device_side.ema.parameters(), host_side.ema.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert device_side.step == host_side.step == 3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("device_side", [True, False])
def test_a_nonfinite_step_changes_nothing(tmp_path, monkeypatch, device_side, device):
    import ddpm.training.trainer as trainer_module

    cfg = tiny_diffusion_config(tmp_path, ema_warmup=False, ema_decay=0.5, device=device)
    trainer = Trainer(cfg, tiny_model_config())
    trainer._device_side_update = device_side
    trainer.train_step()
    before = copy.deepcopy(trainer.state_dict())
    real = trainer_module.diffusion_loss

    def infinite_loss(*args, **kwargs):
        loss, per_image, t = real(*args, **kwargs)
        return loss * float("inf"), per_image, t

    monkeypatch.setattr(trainer_module, "diffusion_loss", infinite_loss)
    out = trainer.train_step()
    assert not out["finite"] and not torch.isfinite(out["grad_norm"])
    assert trainer.step == 1 and trainer.nonfinite_total == 1
    after = trainer.state_dict()
    for part in ("model", "ema"):
        for k, v in before[part].items():
            assert torch.equal(v, after[part][k]), f"{part}.{k}"
    for i, state in before["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, after["optimizer"]["state"][i][k]), f"optimizer.{i}.{k}"
    assert before["lr_schedule"] == after["lr_schedule"]
    monkeypatch.setattr(trainer_module, "diffusion_loss", real)
    assert trainer.train_step()["finite"] and trainer.step == 2


def test_missing_dataset_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("DDPM_DATA_ROOT", raising=False)
    cfg = tiny_diffusion_config(tmp_path, dataset_name="FFHQ", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="FFHQ not found"):
        train_diffusion(cfg, tiny_model_config())
    assert not (tmp_path / "run").exists()


def test_bad_training_config_names_the_field():
    with pytest.raises(ConfigError, match="batch_size"):
        DiffusionConfig(batch_size=0)
    with pytest.raises(ConfigError, match="beta_start"):
        DiffusionConfig(beta_start=0.5, beta_end=0.1)
    with pytest.raises(ConfigError, match="precision"):
        DiffusionConfig(precision="fp8")
    with pytest.raises(ConfigError, match=r"compile_mode='fast'.*reduce-overhead"):
        DiffusionConfig(compile_model=True, compile_mode="fast")


def test_folder_dataset_trains_with_augmentation(tmp_path):
    folder = random_png_folder(tmp_path / "imgs", 5, (12, 10, 3))
    cfg = tiny_diffusion_config(tmp_path, dataset_name=f"folder:{folder}", batch_size=4, max_steps=3,
                                use_augmentation=True, num_sample_images=2)
    run = train_diffusion(cfg, tiny_model_config(image_channels=3))
    assert (run / "checkpoints" / "step_00000003.pt").is_file()


def test_patch_model_trains_resumes_and_samples(tmp_path):
    # A 2x2-patch U-Net through the whole path: training (fp32 on the CPU: NHWC by the auto rule), its
    # checkpoint, resuming it, and sampling from it at the images' own size.
    from ddpm.generation import load_model, sample_images

    mcfg = tiny_model_config(patch_size=2, lowest_resolution_size=2)  # 8x8 digits, levels at 4x4 and 2x2
    run = train_diffusion(tiny_diffusion_config(tmp_path, max_steps=2, num_sample_images=2, device="cpu"), mcfg)
    train_diffusion(tiny_diffusion_config(tmp_path, max_steps=4, num_sample_images=2, device="cpu", resume=True), mcfg)
    loaded = load_model(run=run)
    assert loaded.step == 4 and loaded.model_config.patch_size == 2
    images = sample_images(loaded.model, loaded.schedule, 2, sampler="ddim", num_steps=3)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (exec, ("open({!r}, 'w').write('pwned')".format(str(tmp_path / "pwned")),))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"step": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    run = train_diffusion(tiny_diffusion_config(tmp_path, max_steps=2, num_sample_images=0), tiny_model_config())
    path = run / "checkpoints" / "step_00000002.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="step_00000002.pt"):
        load_checkpoint(path)


def test_seed_model_config_accepts_lists():
    cfg = ModelConfig(lowest_resolution_size=8, dim_multiply=[1, 2, 2, 4, 8], transformer_layers=[3], base_dim=64)
    assert cfg.dim_multiply == (1, 2, 2, 4, 8) and cfg.image_size == 128


def test_train_class_conditional_decodes_a_new_folder_once_before_the_barrier(tmp_path, monkeypatch, capsys):
    """`ddpm train --class-conditional` reads its classes inside the trainer, where local rank 0 decodes
    a new folder first and the others wait at the barrier: the command line itself loads no data."""
    import ddpm.data
    from ddpm import distributed
    from ddpm.cli import main

    for name in ("a", "b"):
        random_png_folder(tmp_path / "imgs" / name, 4)
    events = []
    decode, barrier = ddpm.data.cached_folder, distributed.barrier
    monkeypatch.setattr(ddpm.data, "cached_folder", lambda *a, **k: events.append("decode") or decode(*a, **k))
    monkeypatch.setattr(distributed, "barrier", lambda: events.append("barrier") or barrier())
    tiny = ["--dataset", f"folder:{tmp_path / 'imgs'}", "--class-conditional", "--lowest-resolution-size", "4",
            "--dim-multiply", "1,2", "--transformer-layers", "0", "--base-dim", "8", "--norm-groups", "4",
            "--image-channels", "1", "--timesteps-diff", "40", "--batch-size", "4", "--precision", "fp32",
            "--max-steps", "1", "--num-sample-images", "0", "--no-tensorboard", "--cache-dir", str(tmp_path / "cache")]
    assert main(["train", *tiny, "--labels", "subfolders", "--out", str(tmp_path / "run")]) == 0
    assert events[:2] == ["decode", "barrier"] and events.count("decode") == 1, events
    state = load_checkpoint(RunDir(tmp_path / "run").checkpoint_path(1))
    assert state["model_config"]["num_classes"] == 2 and state["class_names"] == ["a", "b"]
    # Without labels the trainer says how to get them, before any training.
    assert main(["train", *tiny, "--out", str(tmp_path / "unlabelled")]) == 2
    assert "has no class labels" in capsys.readouterr().err


@pytest.mark.parametrize("decay", ["none", "linear", "cosine"])
def test_learning_rate_follows_warmup_then_decay(tmp_path, decay):
    """The optimiser's lr at every step equals the closed form: warm-up, then constant or falling to 0."""
    import math

    cfg = tiny_diffusion_config(tmp_path, max_steps=12, warmup_steps=3, lr_decay=decay, num_sample_images=0)
    trainer = Trainer(cfg, tiny_model_config())
    seen = []
    for _ in range(cfg.max_steps):
        seen.append(trainer.optimizer.param_groups[0]["lr"])  # the lr this step's update uses
        trainer.train_step()
    for s, lr in enumerate(seen):
        warm = min(1.0, (s + 1) / 3)
        p = min(max((s - 3) / 9, 0.0), 1.0)
        shape = {"none": 1.0, "linear": 1.0 - p, "cosine": (1.0 + math.cos(math.pi * p)) / 2}[decay]
        assert lr == pytest.approx(cfg.learning_rate * warm * shape, rel=1e-12, abs=1e-15), (s, lr)
    if decay != "none":  # the last step's lr is a small fraction of the peak, and the schedule never rises after warm-up
        assert seen[-1] < 0.15 * cfg.learning_rate
        assert all(b <= a for a, b in zip(seen[2:], seen[3:], strict=False))


def test_lr_decay_is_checked_and_fixed_on_resume(tmp_path):
    with pytest.raises(ConfigError, match="lr_decay='step'.*choose one of"):
        tiny_diffusion_config(tmp_path, lr_decay="step")
    run = train_diffusion(tiny_diffusion_config(tmp_path, max_steps=4, lr_decay="linear", num_sample_images=0), tiny_model_config())
    with pytest.raises(ConfigError, match="lr_decay"):
        train_diffusion(tiny_diffusion_config(tmp_path, max_steps=6, lr_decay="none", resume=True, num_sample_images=0),
                        tiny_model_config())
    assert run.is_dir()
    # A larger max_steps on resume re-scales the fall from the current step (as --lr-decay's help says): the
    # run ended at lr 0 after step 4 of 4; continued to 8, each logged lr (the next step's) is the closed
    # form with the new length, so the rate jumps back up to (1 - (4 - 2) / 6) of the peak.
    train_diffusion(tiny_diffusion_config(tmp_path, max_steps=8, lr_decay="linear", resume=True, num_sample_images=0,
                                          log_every_steps=1), tiny_model_config())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = {row["step"]: row["lr"] for row in rows if "lr" in row}
    peak = tiny_diffusion_config(tmp_path).learning_rate
    assert lrs[4] == 0.0
    for step in range(5, 9):
        assert lrs[step] == pytest.approx(peak * (1.0 - (step - 2) / 6), rel=1e-12, abs=1e-15), (step, lrs)


def test_channels_last_auto_trains_like_nchw_and_resumes_across_layouts(tmp_path):
    """auto = NHWC for fp32 on a CPU at small sizes: the same run as NCHW up to kernel rounding, and the
    checkpoints of either layout resume in the other (channels_last may change on resume)."""
    from ddpm.runtime import use_channels_last

    cpu = torch.device("cpu")
    assert use_channels_last(None, cpu, None, 16) and use_channels_last(None, cpu, None, 32)
    assert not use_channels_last(None, cpu, torch.bfloat16, 16)  # bf16: NHWC measured slower
    assert not use_channels_last(None, cpu, None, 64)
    assert not use_channels_last(None, torch.device("cuda"), None, 16)
    assert use_channels_last(True, cpu, torch.bfloat16, 128) and not use_channels_last(False, cpu, None, 16)
    # The size that counts is where the convolutions run: 64x64 images in 2x2 patches are a 32x32 U-Net.
    patched = tiny_model_config(lowest_resolution_size=16, patch_size=2)
    assert patched.image_size == 64
    probe = dict(max_steps=1, num_sample_images=0, tensorboard=False, device="cpu")
    assert Trainer(tiny_diffusion_config(tmp_path / "patched", **probe), patched).channels_last
    # ... and 128x128 images in 2x2 patches a 64x64 one, over the line.
    big = tiny_model_config(lowest_resolution_size=32, patch_size=2)
    assert big.image_size == 128 and not Trainer(tiny_diffusion_config(tmp_path / "big", **probe), big).channels_last

    def losses(run) -> list[float]:
        return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]

    cfg = dict(max_steps=6, log_every_steps=1, num_sample_images=0, checkpoint_every_steps=3, tensorboard=False,
               device="cpu")
    auto = Trainer(tiny_diffusion_config(tmp_path / "probe", **cfg), tiny_model_config())
    assert auto.channels_last and auto.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    nhwc = train_diffusion(tiny_diffusion_config(tmp_path / "nhwc", **cfg), tiny_model_config())
    nchw = train_diffusion(tiny_diffusion_config(tmp_path / "nchw", channels_last=False, **cfg), tiny_model_config())
    assert len(losses(nhwc)) == 6 and losses(nhwc) == pytest.approx(losses(nchw), rel=1e-4)
    a = load_checkpoint(nhwc / "checkpoints" / "step_00000006.pt")["model"]
    b = load_checkpoint(nchw / "checkpoints" / "step_00000006.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)

    # Resume each run's step-3 checkpoint in the other layout: it ends where the uninterrupted run does (PyTorch's
    # fused AdamW pairs weights and moments by memory order, so the loaded moments must take the new layout).
    for run, layout, whole in ((nchw, True, b), (nhwc, False, a)):
        (run / "checkpoints" / "step_00000006.pt").unlink()
        train_diffusion(tiny_diffusion_config(run.parent, channels_last=layout, resume=True, **cfg), tiny_model_config())
        c = load_checkpoint(run / "checkpoints" / "step_00000006.pt")["model"]
        for k in whole:
            torch.testing.assert_close(c[k], whole[k], rtol=1e-4, atol=1e-5, msg=f"resumed with channels_last={layout}: {k}")
