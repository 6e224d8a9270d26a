"""On a CUDA device: the same math as the CPU, training in every precision, NCCL under torchrun, compile.

Marked `gpu` (left out of the default run); `pytest -m gpu` runs them where CUDA is available.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_diffusion_config, tiny_model_config

from ddpm import ModelConfig, train_diffusion
from ddpm.checkpoint import load_checkpoint
from ddpm.samplers import ddim_sample, timestep_list
from ddpm.schedule import NoiseSchedule
from ddpm.unet import UNet

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def _exact_fp32():
    """TF32 off, so 'fp32 on the GPU' means fp32 and can be held to a float64 reference."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _randomised_unet(cfg: ModelConfig) -> UNet:
    """A U-Net with every weight random (the zero-initialised output conv would hide errors)."""
    torch.manual_seed(0)
    model = UNet(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model.eval()


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double().cpu() - ref).norm() / ref.norm()).item()


def test_unet_on_cuda_matches_float64_on_cpu():
    cfg = ModelConfig(lowest_resolution_size=8, dim_multiply=(1, 2, 2), transformer_layers=(1,), base_dim=32,
                      image_channels=1, norm_groups=8, dropout=0.0)
    model = _randomised_unet(cfg)
    x, t = torch.randn(8, 1, 32, 32), torch.randint(0, 1000, (8,))
    with torch.no_grad():
        ref = model.double()(x.double(), t)
        model = model.float().to(CUDA)
        fp32 = model(x.to(CUDA), t.to(CUDA))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(x.to(CUDA), t.to(CUDA))
    assert _rel_err(fp32, ref) < 1e-5
    assert _rel_err(bf16, ref) < 3e-2  # bf16 keeps 8 bits of mantissa


def test_ddim_on_cuda_matches_cpu_from_the_same_noise():
    cfg = tiny_model_config()
    model = _randomised_unet(cfg)
    schedule = NoiseSchedule(40, 2e-3, 0.4)
    x_T = torch.randn(4, 1, 8, 8)
    cpu = ddim_sample(model, schedule, x_T, timesteps=timestep_list(schedule, 10))
    gpu = ddim_sample(model.to(CUDA), schedule.to(CUDA), x_T.to(CUDA), timesteps=timestep_list(schedule, 10))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_learns_and_resumes(tmp_path, precision):
    cfg = tiny_diffusion_config(tmp_path, device="cuda", precision=precision, max_steps=60, log_every_steps=10,
                                checkpoint_every_steps=30, num_sample_images=4)
    run = train_diffusion(cfg, tiny_model_config())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] > 0.5 and rows[-1]["loss"] < 0.7 * rows[0]["loss"], rows
    state = load_checkpoint(run / "checkpoints" / "step_00000060.pt")
    if precision == "fp16":
        assert state["grad_scaler"]["scale"] > 0  # the gradient scaler's state is saved and restored
    train_diffusion(tiny_diffusion_config(tmp_path, device="cuda", precision=precision, max_steps=80,
                                          log_every_steps=10, checkpoint_every_steps=30, num_sample_images=0,
                                          resume=True), tiny_model_config())
    assert load_checkpoint(run / "checkpoints" / "step_00000080.pt")["step"] == 80


def test_collectives_work_over_nccl(monkeypatch):
    """Our helpers on an NCCL group (world size 1: one GPU cannot host two NCCL ranks)."""
    import torch.distributed as dist

    from ddpm import distributed

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=CUDA)
    try:
        x = torch.arange(4.0, device=CUDA)
        torch.testing.assert_close(distributed.all_reduce_mean(x), x)
        torch.testing.assert_close(distributed.all_reduce_sum(x), x)
        assert distributed.broadcast_flag(True, CUDA) is True
        torch.testing.assert_close(distributed.gather_to_main(x.view(2, 2), 2), x.view(2, 2).cpu())
        distributed.barrier()
    finally:
        dist.destroy_process_group()


def test_channels_last_and_compile_train_like_the_plain_model(tmp_path):
    def losses(name: str, **switches) -> list[float]:
        cfg = tiny_diffusion_config(tmp_path / name, device="cuda", max_steps=20, log_every_steps=5,
                                    num_sample_images=0, **switches)
        run = train_diffusion(cfg, tiny_model_config())
        return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    plain = losses("plain")
    for name, switches in {"nhwc": dict(channels_last=True), "compiled": dict(compile_model=True)}.items():
        other = losses(name, **switches)
        # Same seeded batches and draws: the same run up to kernel rounding.
        assert other == pytest.approx(plain, rel=5e-3), name


def test_a_cpu_checkpoint_resumes_on_cuda_and_back(tmp_path):
    """The training generator cannot carry over between devices: it is re-seeded, with a warning."""
    def train(device: str, steps: int, resume: bool) -> None:
        train_diffusion(tiny_diffusion_config(tmp_path, device=device, max_steps=steps, checkpoint_every_steps=2,
                                              num_sample_images=0, tensorboard=False, resume=resume),
                        tiny_model_config())

    train("cpu", 2, False)
    with pytest.warns(UserWarning, match="trained on cpu and this run is on cuda"):
        train("cuda", 4, True)
    with pytest.warns(UserWarning, match="trained on cuda and this run is on cpu"):
        train("cpu", 6, True)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000006.pt")
    assert state["step"] == 6 and state["rng"]["generator_device"] == "cpu"
