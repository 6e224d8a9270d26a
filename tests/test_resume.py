"""Runs that survive: resume on the same trajectory, SIGKILL, broken checkpoints, NaNs, logs, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_diffusion_config, tiny_model_config
from test_cli import ddpm

from ddpm import train_diffusion
from ddpm.checkpoint import load_checkpoint, model_from_checkpoint
from ddpm.config import ConfigError, DiffusionConfig
from ddpm.run_dir import RunDir
from ddpm.training import Trainer, dry_run
from ddpm.unet import UNet


def _cfg(tmp_path, **kw):
    # Dropout and flips on, so that resuming must restore the global RNG and the generator too.
    values = dict(max_steps=8, checkpoint_every_steps=0, num_sample_images=0, use_augmentation=True, tensorboard=False)
    values.update(kw)
    return tiny_diffusion_config(tmp_path, **values)


def _assert_same_state(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"
    for i, sa in a["optimizer"]["state"].items():
        for k in sa:
            assert torch.equal(sa[k], b["optimizer"]["state"][i][k]), f"optimizer.{i}.{k}"


def test_resume_continues_the_exact_trajectory(tmp_path):
    mcfg = tiny_model_config(dropout=0.1)
    whole = train_diffusion(_cfg(tmp_path / "whole"), mcfg)
    half = train_diffusion(_cfg(tmp_path / "split", max_steps=4), mcfg)
    assert [p.name for p in RunDir(half).checkpoints()] == ["step_00000004.pt"]
    split = train_diffusion(_cfg(tmp_path / "split", max_steps=8, resume=True), mcfg)
    a = load_checkpoint(whole / "checkpoints" / "step_00000008.pt")
    b = load_checkpoint(split / "checkpoints" / "step_00000008.pt")
    assert a["step"] == b["step"] == 8 and a["data"]["batches_consumed"] == b["data"]["batches_consumed"] == 8
    _assert_same_state(a, b)  # bit-for-bit on CPU in fp32
    steps = [r["step"] for r in RunDir(split).metrics()]
    assert steps == sorted(set(steps)) and steps[-1] == 8


def test_run_folder_with_checkpoints_is_not_overwritten_without_resume(tmp_path):
    train_diffusion(_cfg(tmp_path, max_steps=2), tiny_model_config())
    with pytest.raises(ConfigError, match="resume=True"):
        train_diffusion(_cfg(tmp_path, max_steps=4), tiny_model_config())


def test_resume_with_another_configuration_names_the_difference(tmp_path):
    train_diffusion(_cfg(tmp_path, max_steps=2), tiny_model_config())
    with pytest.raises(ConfigError, match="base_dim: 8 -> 16"):
        train_diffusion(_cfg(tmp_path, max_steps=4, resume=True), tiny_model_config(base_dim=16))
    with pytest.raises(ConfigError, match="learning_rate"):
        train_diffusion(_cfg(tmp_path, max_steps=4, resume=True, learning_rate=1e-5), tiny_model_config())


def test_broken_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    run = train_diffusion(_cfg(tmp_path, max_steps=6, checkpoint_every_steps=3), tiny_model_config())
    newest = run / "checkpoints" / "step_00000006.pt"
    newest.write_bytes(newest.read_bytes()[:500])
    with pytest.warns(UserWarning, match="step_00000006.pt"):
        train_diffusion(_cfg(tmp_path, max_steps=6, checkpoint_every_steps=3, resume=True), tiny_model_config())
    assert load_checkpoint(newest)["step"] == 6  # redone from step 3 and written whole


def test_sample_and_export_pass_over_a_broken_newest_checkpoint(tmp_path):
    run = train_diffusion(_cfg(tmp_path, max_steps=6, checkpoint_every_steps=3), tiny_model_config())
    newest = run / "checkpoints" / "step_00000006.pt"
    newest.write_bytes(newest.read_bytes()[:500])
    for command in (["export", "--out", str(tmp_path / "m.safetensors")], ["sample", "--num-images", "2"]):
        r = ddpm(*command, "--run", str(run))
        assert r.returncode == 0, r.stderr
        assert "step_00000006.pt cannot be loaded safely" in r.stderr and "step_00000003.pt" in r.stdout
    assert json.loads((tmp_path / "m.json").read_text())["step"] == 3


def test_keep_last_n_checkpoints(tmp_path):
    run = train_diffusion(_cfg(tmp_path, max_steps=10, checkpoint_every_steps=2, keep_checkpoints=2), tiny_model_config())
    assert [p.name for p in RunDir(run).checkpoints()] == ["step_00000008.pt", "step_00000010.pt"]


def test_nonfinite_losses_are_skipped_then_stop_with_intact_checkpoint(tmp_path, monkeypatch):
    import ddpm.training.trainer as trainer_module

    real = trainer_module.diffusion_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # from the 4th call on, the loss is NaN
        calls["n"] += 1
        loss, per_image, t = real(*args, **kwargs)
        if calls["n"] > 3:
            loss = loss * float("nan")
        return loss, per_image, t

    monkeypatch.setattr(trainer_module, "diffusion_loss", poisoned)
    with pytest.raises(FloatingPointError, match="5 steps in a row"):
        train_diffusion(_cfg(tmp_path, max_steps=50, max_nonfinite_steps=5, log_every_steps=1), tiny_model_config())
    ckpts = RunDir(tmp_path / "run").checkpoints()
    state = load_checkpoint(ckpts[-1])
    assert state["step"] == 3 and state["nonfinite_total"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_metrics_and_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard is an optional extra (installed by `make test`)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train_diffusion(_cfg(tmp_path, max_steps=6, log_every_steps=2, tensorboard=True, sample_every_steps=3,
                               num_sample_images=2), tiny_model_config())
    rows = RunDir(run).metrics()
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert {"loss", "grad_norm", "lr", "ema_decay", "images_per_s"} <= set(rows[0])
    assert any(k.startswith("loss_q") for k in rows[0])
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [2, 4, 6]
    assert [e.step for e in acc.Images("samples")] == [3, 6]
    assert (run / "samples" / "step_00000003.png").is_file()


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    full = Trainer(_cfg(tmp_path, use_augmentation=False), tiny_model_config())
    accum = Trainer(_cfg(tmp_path, use_augmentation=False, batch_per_device=4), tiny_model_config())
    assert accum.accumulation == 4
    full.train_step()
    accum.train_step()
    for (name, a), b in zip(full.model.named_parameters(), accum.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = UNet(tiny_model_config())
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 9])
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = flag
        model(x, t).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_dry_run_measures_and_writes_nothing(tmp_path):
    report = dry_run(_cfg(tmp_path), tiny_model_config(), steps=2)
    assert report["parameters"] == sum(p.numel() for p in UNet(tiny_model_config()).parameters())
    assert report["seconds_per_step"] > 0 and report["peak_memory_gb"] > 0
    assert not (tmp_path / "run").exists()


def test_export_to_safetensors_and_sample_from_it(tmp_path):
    run = train_diffusion(_cfg(tmp_path, max_steps=3), tiny_model_config())
    r = ddpm("export", "--run", str(run), "--out", str(tmp_path / "m.safetensors"))
    assert r.returncode == 0, r.stderr
    model, dcfg, mcfg, step = model_from_checkpoint(tmp_path / "m.safetensors")
    ref, *_ = model_from_checkpoint(RunDir(run).checkpoints()[-1])
    assert step == 3 and mcfg == tiny_model_config() and dcfg.timesteps_diff == 40
    for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert json.loads((tmp_path / "m.json").read_text())["step"] == 3
    r = ddpm("sample", "--checkpoint", str(tmp_path / "m.safetensors"), "--num-images", "2", "--out", str(tmp_path / "g.png"))
    assert r.returncode == 0, r.stderr


def test_sigkill_mid_run_then_resume(tmp_path):
    from test_cli import TINY

    run = tmp_path / "run"
    args = [sys.executable, "-m", "ddpm", "train", *TINY, "--out", str(run), "--checkpoint-every-steps", "3",
            "--log-every-steps", "1", "--num-sample-images", "0", "--no-tensorboard"]
    proc = subprocess.Popen([*args, "--max-steps", "1000000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(RunDir(run).checkpoints()) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    ckpts = RunDir(run).checkpoints()
    assert len(ckpts) >= 2
    last = load_checkpoint(ckpts[-1])["step"]  # every listed checkpoint is whole (atomic rename)
    target = last + 4
    r = subprocess.run([*args, "--max-steps", str(target), "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resuming {ckpts[-1]} at step {last}" in r.stdout
    assert load_checkpoint(RunDir(run).checkpoints()[-1])["step"] == target
    steps = [row["step"] for row in RunDir(run).metrics()]
    assert steps == list(range(1, target + 1))  # rows the killed run logged past its checkpoint were dropped


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.8, 0.99)])
def test_fused_adamw_takes_the_reference_adamw_step(betas):
    # Our optimizer uses PyTorch's fused kernel; the reference is its plain single-tensor loop.
    from ddpm.training.trainer import adamw

    torch.manual_seed(0)
    a, b = UNet(tiny_model_config()), UNet(tiny_model_config())
    b.load_state_dict(a.state_dict())
    fused = adamw(a.parameters(), 1e-3, 0.01, torch.device("cpu"), betas)
    plain = torch.optim.AdamW(b.parameters(), lr=1e-3, betas=betas, weight_decay=0.01, foreach=False)
    assert fused.defaults["fused"] is True
    for _ in range(5):
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            pa.grad = torch.randn_like(pa)
            pb.grad = pa.grad.clone()
        fused.step()
        plain.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)


def test_adam_betas_reach_the_optimizer_and_bind_a_resumed_run(tmp_path):
    # The optimizer steps with the configured betas (they live in its param groups, which a resume
    # restores from the checkpoint), so a resume may not change them: it would silently keep the old ones.
    run = train_diffusion(_cfg(tmp_path, max_steps=2, adam_beta1=0.8, adam_beta2=0.99), tiny_model_config())
    state = load_checkpoint(run / "checkpoints" / "step_00000002.pt")
    assert [tuple(g["betas"]) for g in state["optimizer"]["param_groups"]] == [(0.8, 0.99)] * len(
        state["optimizer"]["param_groups"])
    stored = json.loads((run / "config.json").read_text())["diffusion_config"]
    assert (stored["adam_beta1"], stored["adam_beta2"]) == (0.8, 0.99)
    with pytest.raises(ConfigError, match="adam_beta2: 0.99 -> 0.999"):
        train_diffusion(_cfg(tmp_path, max_steps=4, resume=True, adam_beta1=0.8), tiny_model_config())
    with pytest.raises(ConfigError, match=r"adam_beta2=1\.0 must lie in \[0, 1\)"):
        DiffusionConfig(adam_beta2=1.0)


def test_resume_from_a_checkpoint_of_the_unfused_optimizer(tmp_path):
    # Checkpoints written before the fused kernel hold fused=False in their param groups; a resumed
    # run must still step (with the fused kernel) and reach the step count asked for.
    run = train_diffusion(_cfg(tmp_path, max_steps=4, checkpoint_every_steps=4), tiny_model_config())
    path = run / "checkpoints" / "step_00000004.pt"
    state = load_checkpoint(path)
    for group in state["optimizer"]["param_groups"]:
        group["fused"], group["foreach"] = None, None
    torch.save(state, path)
    train_diffusion(_cfg(tmp_path, max_steps=6, resume=True), tiny_model_config())
    resumed = load_checkpoint(run / "checkpoints" / "step_00000006.pt")
    assert resumed["step"] == 6
    assert all(g["fused"] is True for g in resumed["optimizer"]["param_groups"])


def _as_if_written_on_cuda(state: dict) -> dict:
    """A CPU checkpoint's state as a CUDA run writes it: a Philox generator state (seed, offset; 16 bytes)."""
    philox = torch.tensor([1234, 0], dtype=torch.int64).view(torch.uint8)
    rng = {**state["rng"], "generator": philox, "cuda": philox.clone()}
    rng.pop("generator_device", None)  # a checkpoint written before the device was recorded
    return {**state, "rng": rng}


def test_resume_on_another_device_reseeds_the_generator_from_seed_and_step(tmp_path):
    trainer = Trainer(_cfg(tmp_path, seed=3), tiny_model_config())
    for _ in range(2):
        trainer.train_step()
    state = _as_if_written_on_cuda(trainer.state_dict())
    resumed = Trainer(_cfg(tmp_path, seed=3), tiny_model_config())
    with pytest.warns(UserWarning, match=r"cuda.*cpu.*seed 3.*step 2"):
        resumed.load_state_dict(state)
    # A CUDA (Philox) state cannot become a CPU (Mersenne Twister) state: the CPU stream restarts from
    # a seed of (seed, step) alone, so two resumes of one checkpoint on the CPU take the same steps.
    again = Trainer(_cfg(tmp_path, seed=3), tiny_model_config())
    with pytest.warns(UserWarning):
        again.load_state_dict(state)
    assert torch.equal(resumed.generator.get_state(), again.generator.get_state())
    assert not torch.equal(resumed.generator.get_state(), trainer.generator.get_state())
    assert resumed.step == 2
    torch.testing.assert_close(resumed.train_step()["loss"], again.train_step()["loss"], rtol=0, atol=0)


def test_a_checkpoint_written_on_the_same_device_restores_its_generator_exactly(tmp_path):
    trainer = Trainer(_cfg(tmp_path), tiny_model_config())
    trainer.train_step()
    state = trainer.state_dict()
    del state["rng"]["generator_device"]  # older checkpoints: the device is read from the state's size
    resumed = Trainer(_cfg(tmp_path), tiny_model_config())
    resumed.load_state_dict(state)
    assert torch.equal(resumed.generator.get_state(), trainer.generator.get_state())


def test_a_truncated_metrics_line_is_skipped_with_a_warning_on_resume(tmp_path):
    run = train_diffusion(_cfg(tmp_path, max_steps=4, checkpoint_every_steps=4, log_every_steps=1), tiny_model_config())
    metrics = RunDir(run).metrics_path
    with metrics.open("a") as f:
        f.write('{"step": 5, "loss": 0.')  # the process died while writing step 5's row
    with pytest.warns(UserWarning, match=r"metrics\.jsonl, line 5: .*skipped"):
        train_diffusion(_cfg(tmp_path, max_steps=6, log_every_steps=1, resume=True), tiny_model_config())
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line reads again
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
