"""The training loop behind train_diffusion (DDPM Algorithm 1 with Adam, warm-up, clipping, EMA).

    from ddpm import DiffusionConfig, ModelConfig, train_diffusion
    run_dir = train_diffusion(DiffusionConfig(dataset_name="digits", max_steps=2000), ModelConfig(...))

or from the shell: `ddpm train --preset demo`.
"""

from __future__ import annotations

import copy
import json
import math
import re
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import atomic_save, checkpoint_path
from .config import DiffusionConfig, ModelConfig, config_to_dict
from .data import TensorImages, load_dataset, random_flip
from .images import forward_process_figure, loss_curve_figure, save_grid
from .losses import diffusion_loss
from .runtime import autocast, resolve_device, resolve_precision
from .sampling import sample_images
from .schedule import NoiseSchedule
from .unet import UNet, count_parameters

FORWARD_FIGURE_FRACTIONS = (0.0, 0.33, 0.66, 1.0)  # t / T shown in each run's forward.png (seed: 0, 66, 132, 200)


def default_run_dir(dataset_name: str) -> Path:
    """runs/<dataset>-<YYYYmmdd-HHMMSS>, with the dataset name made filename-safe."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name.replace("folder:", "")).strip("_") or "data"
    return Path("runs") / f"{safe[-40:]}-{datetime.now():%Y%m%d-%H%M%S}"


def infinite_batches(
    dataset: Dataset, batch_size: int, seed: int, num_workers: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """Shuffled batches forever, epoch after epoch, on device; the order depends only on seed."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(dataset, TensorImages):
        # In-memory data: index one tensor on the device, no DataLoader overhead.
        images = dataset.images.to(device)
        order = torch.empty(0, dtype=torch.long)
        while True:
            while order.numel() < batch_size:
                order = torch.cat([order, torch.randperm(len(dataset), generator=gen)])
            idx, order = order[:batch_size], order[batch_size:]
            yield images[idx.to(device)]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=gen,
        drop_last=len(dataset) >= batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
    while True:
        for batch in loader:
            yield batch.to(device, non_blocking=True)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, in the EMA's float32."""
    ema_params = list(ema.parameters())
    model_params = [p.detach().to(e.dtype) for e, p in zip(ema_params, model.parameters(), strict=True)]
    torch._foreach_lerp_(ema_params, model_params, 1.0 - decay)


def ema_decay_at(step: int, config: DiffusionConfig) -> float:
    """The EMA decay used after optimiser step `step` (1-based), with the optional warm-up."""
    if config.ema_warmup:
        return min(config.ema_decay, (1.0 + step) / (10.0 + step))
    return config.ema_decay


class _StopRequest:
    """First SIGINT/SIGTERM asks the loop to checkpoint and stop; a second one exits at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:  # second signal: leave now (checkpoints are written atomically)
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"\n{signal.Signals(signum).name}: finishing this step, writing a checkpoint, then stopping "
                   "(press Ctrl-C again to exit at once).")

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train_diffusion(diff_config: DiffusionConfig, model_config: ModelConfig) -> Path:
    """Train a DDPM as the configs describe and return the run folder.

    The run folder (DiffusionConfig.out_dir, else runs/<dataset>-<time>) receives config.json,
    forward.png, metrics.jsonl, checkpoints/step_*.pt, samples/step_*.png and loss.png.
    Everything that can fail on bad input (dataset, device, configs) fails before training starts.
    """
    cfg, mcfg = diff_config, model_config
    if not isinstance(cfg, DiffusionConfig) or not isinstance(mcfg, ModelConfig):
        raise TypeError("train_diffusion(diff_config, model_config) takes a DiffusionConfig and a ModelConfig.")

    # Resolve everything that can fail before any work.
    dataset = load_dataset(cfg.dataset_name, mcfg.image_size, mcfg.image_channels, cfg.data_root)
    device = resolve_device(cfg.device)
    amp_dtype = resolve_precision(cfg.precision, device)
    schedule = NoiseSchedule.from_config(cfg).to(device)

    torch.manual_seed(cfg.seed)
    model = UNet(mcfg).to(device)
    ema = copy.deepcopy(model).float().eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))

    run_dir = Path(cfg.out_dir) if cfg.out_dir else default_run_dir(cfg.dataset_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    configs = {"diffusion_config": config_to_dict(cfg), "model_config": config_to_dict(mcfg)}
    (run_dir / "config.json").write_text(json.dumps(configs, indent=2) + "\n")
    n_params = count_parameters(model)
    precision_name = "bf16 autocast" if amp_dtype is not None else "fp32"
    print(f"ddpm: {len(dataset)} images from {cfg.dataset_name!r} at {mcfg.image_size}x{mcfg.image_size}x"
          f"{mcfg.image_channels}; U-Net with {n_params:,} parameters; T={schedule.num_timesteps}; "
          f"{device.type} ({precision_name}); run folder {run_dir}")

    n_fig = min(4, len(dataset))
    forward_ts = sorted({round(f * schedule.num_timesteps) for f in FORWARD_FIGURE_FRACTIONS})
    forward_process_figure(torch.stack([dataset[i] for i in range(n_fig)]), schedule.to("cpu"), forward_ts,
                           run_dir / "forward.png", seed=cfg.seed)
    schedule.to(device)

    def save_checkpoint(step: int) -> Path:
        state = {
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_schedule": lr_schedule.state_dict(),
            **configs,
        }
        return atomic_save(state, checkpoint_path(run_dir, step))

    def save_samples(step: int) -> Path | None:
        if cfg.num_sample_images == 0:
            return None
        x = sample_images(ema, schedule, cfg.num_sample_images, seed=cfg.seed, variance=cfg.sample_variance,
                          clip_x0=cfg.clip_x0, batch_size=min(cfg.batch_size, 64), autocast_dtype=amp_dtype)
        return save_grid(x, run_dir / "samples" / f"step_{step:08d}.png")

    batches = infinite_batches(dataset, cfg.batch_size, cfg.seed, cfg.num_workers, device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    model.train()
    metrics = (run_dir / "metrics.jsonl").open("a")
    loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync every step
    window_steps, window_start = 0, time.perf_counter()
    history: list[tuple[int, float]] = []
    step = 0
    bar = tqdm(total=cfg.max_steps, desc="training", dynamic_ncols=True)
    with _StopRequest() as stop:
        try:
            while step < cfg.max_steps and not stop.requested:
                x0 = next(batches)
                if cfg.use_augmentation:
                    x0 = random_flip(x0, gen)
                with autocast(device, amp_dtype):
                    loss, _, _ = diffusion_loss(model, schedule, x0, gen)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                optimizer.step()
                lr_schedule.step()
                step += 1
                decay = ema_decay_at(step, cfg)
                ema_update(ema, model, decay)
                loss_sum += loss.detach()
                window_steps += 1
                bar.update(1)

                if step % max(cfg.log_every_steps, 1) == 0 or step == cfg.max_steps:
                    elapsed = time.perf_counter() - window_start
                    row = {
                        "step": step,
                        "loss": loss_sum.item() / window_steps,
                        "lr": lr_schedule.get_last_lr()[0],
                        "grad_norm": float(grad_norm),
                        "ema_decay": decay,
                        "images_per_s": window_steps * cfg.batch_size / max(elapsed, 1e-9),
                    }
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    history.append((step, row["loss"]))
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
                    loss_sum.zero_()
                    window_steps, window_start = 0, time.perf_counter()
                if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                    save_checkpoint(step)
                if cfg.sample_every_steps and step % cfg.sample_every_steps == 0 and step < cfg.max_steps:
                    save_samples(step)
        finally:
            bar.close()
            metrics.close()

    ckpt = checkpoint_path(run_dir, step)
    if not ckpt.exists():
        save_checkpoint(step)
    print(f"ddpm: checkpoint {ckpt}")
    if history:
        print(f"ddpm: loss curve {loss_curve_figure(*zip(*history, strict=True), run_dir / 'loss.png')}")
    print(f"ddpm: forward-process figure {run_dir / 'forward.png'}")
    if stop.requested:
        print(f"ddpm: stopped at step {step} of {cfg.max_steps}.")
        return run_dir
    grid = save_samples(step)
    if grid is not None:
        print(f"ddpm: sample grid {grid}")
    return run_dir
