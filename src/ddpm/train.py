"""The training loop behind train_diffusion (DDPM Algorithm 1 with AdamW, warm-up, clipping, EMA).

One process:
    ddpm train --preset demo --out runs/demo
    python -c "from ddpm import *; train_diffusion(DiffusionConfig(max_steps=2000), ModelConfig(...))"
Several GPUs on one node (batch_size stays the global batch):
    torchrun --nproc_per_node=8 -m ddpm train --dataset folder:/data/ffhq --preset seed --out runs/ffhq
Several nodes (run on every node, R = 0 .. N-1):
    torchrun --nnodes=N --node_rank=R --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        -m ddpm train ...
Resume (any world size): add --resume; the newest valid checkpoint in --out is continued.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import (
    atomic_save,
    checkpoint_path,
    list_checkpoints,
    load_latest_valid,
    prune_checkpoints,
)
from .config import (
    RESUME_MUTABLE_FIELDS,
    ConfigError,
    DiffusionConfig,
    ModelConfig,
    config_to_dict,
    resume_mismatches,
)
from .data import (
    IN_MEMORY_LIMIT_BYTES,
    ArrayImages,
    BatchStream,
    TensorImages,
    apply_flip,
    collate_batch,
    load_dataset,
    to_float,
)
from .images import forward_process_figure, grid_image, loss_curve_figure, save_grid, to_uint8
from .losses import diffusion_loss
from .monitor import Monitor, read_metrics
from .runtime import autocast, resolve_device, resolve_precision
from .sampling import sample_images
from .schedule import NoiseSchedule
from .unet import UNet, count_parameters

FORWARD_FIGURE_FRACTIONS = (0.0, 0.33, 0.66, 1.0)  # t / T in each run's forward.png (seed: 0, 66, 132, 200)
NUM_LOSS_BUCKETS = 4  # the loss is also logged by quarter of the timestep range


def default_run_dir(dataset_name: str) -> Path:
    """runs/<dataset>-<YYYYmmdd-HHMMSS>, with the dataset name made filename-safe."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name.replace("folder:", "")).strip("_") or "data"
    return Path("runs") / f"{safe[-40:]}-{datetime.now():%Y%m%d-%H%M%S}"


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


class Trainer:
    """Everything one training process holds: data stream, model, EMA, optimiser, RNG, step.

    train_step() runs one optimiser step of batch_size images (split over processes and, with
    batch_per_device, over accumulated micro-batches); state_dict() is what a checkpoint stores.
    """

    def __init__(self, cfg: DiffusionConfig, mcfg: ModelConfig) -> None:
        self.cfg, self.mcfg = cfg, mcfg
        # Resolve everything that can fail on bad input before any work.
        self.dist, self.device = distributed.setup(resolve_device(cfg.device))

        def load() -> Dataset:
            return load_dataset(cfg.dataset_name, mcfg.image_size, mcfg.image_channels, cfg.data_root,
                                cfg.crop_mode, cfg.cache_dir, cfg.num_workers)

        # Rank 0 decodes an image folder into the cache; the others then find it there.
        if self.dist.is_main:
            self.dataset = load()
        distributed.barrier()
        if not self.dist.is_main:
            self.dataset = load()
        if cfg.batch_size % self.dist.world_size:
            raise ConfigError(f"DiffusionConfig.batch_size={cfg.batch_size} must be divisible by the number of "
                              f"processes ({self.dist.world_size}); it is the global batch.")
        per_process = cfg.batch_size // self.dist.world_size
        self.micro_batch = cfg.batch_per_device or per_process
        if per_process % self.micro_batch:
            raise ConfigError(f"DiffusionConfig.batch_per_device={cfg.batch_per_device} must divide the "
                              f"{per_process} images each of {self.dist.world_size} processes takes per step.")
        self.accumulation = per_process // self.micro_batch
        self.amp_dtype = torch.float16 if cfg.precision == "fp16" else resolve_precision(cfg.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.schedule = NoiseSchedule.from_config(cfg).to(self.device)

        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        self.model = UNet(mcfg).to(self.device)
        self.model.gradient_checkpointing = cfg.activation_checkpointing
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).float().eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))
        net: nn.Module = self.model
        if self.dist.enabled:
            net = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.net = torch.compile(net) if cfg.compile_model else net

        self.stream = BatchStream(len(self.dataset), cfg.batch_size, cfg.seed, self.dist.rank, self.dist.world_size)
        # Timesteps, noise and flips are drawn for the whole global batch from one generator seeded
        # alike on every process, and each process keeps its slice: so N processes take exactly the
        # step one process would, and a run resumes exactly under any world size.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed * 1000 + 1)
        self._reseed_dropout(0)
        self.step = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self._batches = None

    # Data ----------------------------------------------------------------------------------------

    def _start_batches(self) -> None:
        """Batches of this process's share, from the stream's current position, on the device."""
        ds = self.dataset
        if isinstance(ds, TensorImages) or (isinstance(ds, ArrayImages) and ds.images.nbytes < IN_MEMORY_LIMIT_BYTES):
            # Small data: one tensor on the device, indexed per batch (uint8 stays uint8 until then).
            images = (ds.images if isinstance(ds, TensorImages) else ds.as_tensor()).to(self.device)
            self._batches = (images[idx.to(self.device)] for idx in iter(self.stream.next_indices, None))
        else:
            loader = DataLoader(ds, batch_sampler=self.stream, num_workers=self.cfg.num_workers,
                                collate_fn=collate_batch, pin_memory=self.device.type == "cuda",
                                persistent_workers=self.cfg.num_workers > 0)
            self._batches = (b.to(self.device, non_blocking=True) for b in loader)
        self._batches_consumed = self.stream.batches_consumed

    def _next_batch(self) -> torch.Tensor:
        if self._batches is None:
            self._start_batches()
        self._batches_consumed += 1  # counted here: a DataLoader's sampler runs ahead of the loop
        x = to_float(next(self._batches))
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # One step ------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, torch.Tensor | float | bool]:
        """One optimiser step. Returns device tensors (no host sync) plus grad_norm and finite."""
        cfg = self.cfg
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_total = torch.zeros((), device=self.device)
        bucket_sum = torch.zeros(NUM_LOSS_BUCKETS, device=self.device)
        bucket_count = torch.zeros(NUM_LOSS_BUCKETS, device=self.device)
        # This process's share of the batch, and all its random draws, are taken at once, so that
        # splitting it into accumulated micro-batches changes nothing but memory.
        x0 = self._next_batch()
        mine = slice(self.dist.rank * x0.shape[0], (self.dist.rank + 1) * x0.shape[0])
        B, g = cfg.batch_size, self.generator
        if cfg.use_augmentation:
            x0 = apply_flip(x0, (torch.rand(B, device=self.device, generator=g) < 0.5)[mine])
        t = torch.randint(0, self.schedule.num_timesteps, (B,), device=self.device, generator=g)[mine]
        noise = torch.randn((B, *x0.shape[1:]), device=self.device, dtype=x0.dtype, generator=g)[mine]
        chunks = zip(x0.split(self.micro_batch), t.split(self.micro_batch), noise.split(self.micro_batch), strict=True)
        for micro, (x0_m, t_m, noise_m) in enumerate(chunks):
            sync = micro == self.accumulation - 1 or not self.dist.enabled
            with contextlib.nullcontext() if sync else self.net.no_sync(), autocast(self.device, self.amp_dtype):
                loss, per_image, _ = diffusion_loss(self.net, self.schedule, x0_m, t=t_m, noise=noise_m)
            self.scaler.scale(loss / self.accumulation).backward()
            loss_total += loss.detach() / self.accumulation
            bucket = t_m * NUM_LOSS_BUCKETS // self.schedule.num_timesteps
            bucket_sum.index_add_(0, bucket, per_image.detach())
            bucket_count.index_add_(0, bucket, torch.ones_like(per_image))

        self.scaler.unscale_(self.optimizer)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), clip))  # the step's one host sync
        finite = math.isfinite(grad_norm)
        if finite or self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # with fp16 the scaler itself skips non-finite steps
            self.scaler.update()
        if finite:
            self.lr_schedule.step()
            self.step += 1
            decay = ema_decay_at(self.step, cfg)
            ema_update(self.ema, self.model, decay)
            self.nonfinite_in_a_row = 0
        else:
            decay = float("nan")
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
        return {"loss": loss_total, "bucket_sum": bucket_sum, "bucket_count": bucket_count,
                "grad_norm": grad_norm, "ema_decay": decay, "finite": finite}

    # Checkpoint state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: weights, optimiser, data position, RNG."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "data": {**self.stream.state_dict(), "batches_consumed": self._consumed()},
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None},
            "nonfinite_total": self.nonfinite_total,
            "world_size": self.dist.world_size,
            "diffusion_config": config_to_dict(self.cfg),
            "model_config": config_to_dict(self.mcfg),
        }

    def _reseed_dropout(self, step: int) -> None:
        """Give each process its own dropout masks (the global RNG), reproducibly from (seed, rank, step)."""
        if self.dist.enabled:
            torch.manual_seed(self.cfg.seed * 1000 + 7919 * step + 17 + self.dist.rank)

    def _consumed(self) -> int:
        return self._batches_consumed if self._batches is not None else self.stream.batches_consumed

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (written by any number of processes)."""
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.stream.load_state_dict(state["data"])
        self._batches = None
        self.generator.set_state(state["rng"]["generator"].to("cpu"))
        self.step = int(state["step"])
        if self.dist.world_size == 1 and state.get("world_size", 1) == 1:
            # Dropout masks come from the global RNG; one process continues its own stream exactly.
            torch.set_rng_state(state["rng"]["torch"].cpu())
            if state["rng"].get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        else:
            self._reseed_dropout(self.step)
        self.nonfinite_total = int(state.get("nonfinite_total", 0))


class _StopRequest:
    """First SIGINT/SIGTERM asks the loop to checkpoint and stop; a second one exits at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

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


def _resume_state(run_dir: Path, cfg: DiffusionConfig, mcfg: ModelConfig, trainer: Trainer) -> dict[str, Any] | None:
    """The checkpoint to continue, after checking that it belongs to this configuration."""
    if not list_checkpoints(run_dir):
        if cfg.resume:
            tqdm.write(f"ddpm: resume: no checkpoint in {run_dir / 'checkpoints'} yet, starting from step 0.")
        return None
    if not cfg.resume:
        raise ConfigError(f"{run_dir} already holds checkpoints ({list_checkpoints(run_dir)[-1].name}); pass "
                          "resume=True (--resume) to continue that run, or choose another out_dir (--out).")
    state, path = load_latest_valid(run_dir, map_location=trainer.device)
    problems = resume_mismatches(state["model_config"], config_to_dict(mcfg))
    problems += resume_mismatches(state["diffusion_config"], config_to_dict(cfg), RESUME_MUTABLE_FIELDS)
    if problems:
        raise ConfigError(f"Cannot resume {path}: its configuration differs in " + "; ".join(problems)
                          + ". Resume with the run's own settings (see config.json) or train into a new out_dir.")
    return {**state, "_path": path}


def train_diffusion(diff_config: DiffusionConfig, model_config: ModelConfig) -> Path:
    """Train a DDPM as the configs describe and return the run folder.

    The run folder (DiffusionConfig.out_dir, else runs/<dataset>-<time>) receives config.json,
    forward.png, metrics.jsonl, tensorboard/, checkpoints/step_*.pt, samples/step_*.png and loss.png.
    Everything that can fail on bad input (dataset, device, configs) fails before training starts.
    Under torchrun, every process calls this; only rank 0 writes files.
    """
    cfg, mcfg = diff_config, model_config
    if not isinstance(cfg, DiffusionConfig) or not isinstance(mcfg, ModelConfig):
        raise TypeError("train_diffusion(diff_config, model_config) takes a DiffusionConfig and a ModelConfig.")
    trainer = Trainer(cfg, mcfg)
    try:
        return _run(trainer, cfg, mcfg)
    finally:
        distributed.teardown()


def _run(trainer: Trainer, cfg: DiffusionConfig, mcfg: ModelConfig) -> Path:
    main = trainer.dist.is_main
    run_dir = Path(cfg.out_dir) if cfg.out_dir else default_run_dir(cfg.dataset_name)
    state = _resume_state(run_dir, cfg, mcfg, trainer)
    if state is not None:
        trainer.load_state_dict(state)
    start = trainer.step
    schedule = trainer.schedule

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        configs = {"diffusion_config": config_to_dict(cfg), "model_config": config_to_dict(mcfg)}
        (run_dir / "config.json").write_text(json.dumps(configs, indent=2) + "\n")
        precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[trainer.amp_dtype]
        procs = f" x {trainer.dist.world_size} processes" if trainer.dist.enabled else ""
        print(f"ddpm: {len(trainer.dataset)} images from {cfg.dataset_name!r} at {mcfg.image_size}x{mcfg.image_size}x"
              f"{mcfg.image_channels}; U-Net with {count_parameters(trainer.model):,} parameters; "
              f"T={schedule.num_timesteps}; {trainer.device.type}{procs} ({precision}); run folder {run_dir}")
        if state is not None:
            print(f"ddpm: resuming {state['_path']} at step {start}")
        if not (run_dir / "forward.png").exists():
            n_fig = min(4, len(trainer.dataset))
            forward_ts = sorted({round(f * schedule.num_timesteps) for f in FORWARD_FIGURE_FRACTIONS})
            forward_process_figure(torch.stack([trainer.dataset[i] for i in range(n_fig)]),
                                   NoiseSchedule.from_config(cfg), forward_ts, run_dir / "forward.png", seed=cfg.seed)
    monitor = Monitor(run_dir, cfg.tensorboard, resume_step=start) if main else None

    def save_checkpoint() -> Path:
        state = trainer.state_dict()  # every process reaches this point; only rank 0 writes
        path = checkpoint_path(run_dir, trainer.step)
        if main:
            atomic_save(state, path)
            prune_checkpoints(run_dir, cfg.keep_checkpoints)
        distributed.barrier()
        return path

    def save_samples() -> Path | None:
        if not main or cfg.num_sample_images == 0:
            return None
        x = sample_images(trainer.ema, schedule, cfg.num_sample_images, seed=cfg.seed, variance=cfg.sample_variance,
                          clip_x0=cfg.clip_x0, batch_size=min(cfg.batch_size, 64),
                          autocast_dtype=trainer.amp_dtype if trainer.amp_dtype == torch.bfloat16 else None)
        path = save_grid(x, run_dir / "samples" / f"step_{trainer.step:08d}.png")
        monitor.image(trainer.step, "samples", _rgb(grid_image(to_uint8(x))))
        return path

    window = _Window(trainer.device)
    last_saved = start if state is not None else -1
    bar = tqdm(total=cfg.max_steps, initial=start, desc="training", dynamic_ncols=True, disable=not main)
    stopped_for = None
    with _StopRequest() as stop:
        try:
            while trainer.step < cfg.max_steps:
                if distributed.broadcast_flag(stop.requested, trainer.device):
                    stopped_for = "signal"
                    break
                out = trainer.train_step()
                if not out["finite"]:
                    tqdm.write(f"ddpm: non-finite loss/gradients at step {trainer.step + 1}: step skipped "
                               f"({trainer.nonfinite_in_a_row} in a row, {trainer.nonfinite_total} in all).")
                    if trainer.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                        stopped_for = "nonfinite"
                        break
                    continue
                window.add(out)
                bar.update(1)
                step = trainer.step
                if step % max(cfg.log_every_steps, 1) == 0 or step == cfg.max_steps:
                    row = window.flush(cfg.batch_size)
                    row.update(lr=trainer.lr_schedule.get_last_lr()[0], grad_norm=out["grad_norm"],
                               ema_decay=out["ema_decay"], nonfinite_steps=trainer.nonfinite_total)
                    if trainer.device.type == "cuda":
                        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(trainer.device) / 2**30
                    if main:
                        monitor.scalars(step, row)
                        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
                if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                    save_checkpoint()
                    last_saved = step
                if cfg.sample_every_steps and step % cfg.sample_every_steps == 0 and step < cfg.max_steps:
                    save_samples()
                    distributed.barrier()
        finally:
            bar.close()
    try:
        return _finish(trainer, run_dir, stopped_for, last_saved, save_checkpoint, save_samples)
    finally:
        if monitor is not None:
            monitor.close()


def _finish(trainer: Trainer, run_dir: Path, stopped_for: str | None, last_saved: int,
            save_checkpoint: Any, save_samples: Any) -> Path:
    """Final checkpoint, loss curve and sample grid; the reason training stopped, if not max_steps."""
    cfg = trainer.cfg
    if last_saved != trainer.step:
        save_checkpoint()
    if stopped_for == "nonfinite":
        raise FloatingPointError(
            f"Training stopped: {cfg.max_nonfinite_steps} steps in a row had a non-finite loss or gradient "
            f"(last good step {trainer.step}, checkpoint {checkpoint_path(run_dir, trainer.step)}). Lower "
            "learning_rate, keep grad_clip on, or use precision='fp32'; then resume.")
    if not trainer.dist.is_main:
        return run_dir
    print(f"ddpm: checkpoint {checkpoint_path(run_dir, trainer.step)}")
    history = [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]
    if history:
        print(f"ddpm: loss curve {loss_curve_figure(*zip(*history, strict=True), run_dir / 'loss.png')}")
    print(f"ddpm: forward-process figure {run_dir / 'forward.png'}")
    if stopped_for == "signal":
        print(f"ddpm: stopped at step {trainer.step} of {cfg.max_steps}; continue with resume=True (--resume).")
        return run_dir
    grid = save_samples()
    if grid is not None:
        print(f"ddpm: sample grid {grid}")
    return run_dir


def _rgb(image: Any) -> np.ndarray:
    """A PIL grid as an (H, W, 3) array for TensorBoard."""
    arr = np.asarray(image)
    return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr


class _Window:
    """Sums of the logged quantities since the last log line, kept on the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.bucket_sum = torch.zeros(NUM_LOSS_BUCKETS, device=self.device)
        self.bucket_count = torch.zeros(NUM_LOSS_BUCKETS, device=self.device)
        self.steps, self.start = 0, time.perf_counter()

    def add(self, out: dict[str, Any]) -> None:
        self.loss += out["loss"]
        self.bucket_sum += out["bucket_sum"]
        self.bucket_count += out["bucket_count"]
        self.steps += 1

    def flush(self, batch_size: int) -> dict[str, float]:
        """The window's means, averaged over processes, then a new window."""
        loss = distributed.all_reduce_mean(self.loss).item() / max(self.steps, 1)
        sums = distributed.all_reduce_sum(self.bucket_sum).tolist()
        counts = distributed.all_reduce_sum(self.bucket_count).tolist()
        elapsed = time.perf_counter() - self.start
        row = {"loss": loss, "images_per_s": self.steps * batch_size / max(elapsed, 1e-9)}
        for q, (s, c) in enumerate(zip(sums, counts, strict=True)):
            if c > 0:
                row[f"loss_q{q + 1}"] = s / c  # q1 = t in the first quarter of 0..T-1 (least noise)
        self._reset()
        return row


def dry_run(cfg: DiffusionConfig, mcfg: ModelConfig, steps: int = 3) -> dict[str, Any]:
    """Build everything, time a few training steps, and report; writes nothing.

    Returns the resolved configs, parameter count, median seconds per step and peak memory.
    """
    trainer = Trainer(cfg, mcfg)
    try:
        trainer.train_step()  # warm-up (allocations, autotuning, compilation)
        times = []
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.train_step()
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)
            times.append(time.perf_counter() - t0)
        times.sort()
        report = {
            "diffusion_config": config_to_dict(cfg),
            "model_config": config_to_dict(mcfg),
            "parameters": count_parameters(trainer.model),
            "device": str(trainer.device),
            "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[trainer.amp_dtype],
            "seconds_per_step": times[len(times) // 2],
            "images_per_s": cfg.batch_size / times[len(times) // 2],
            "peak_memory_gb": _peak_memory_gb(trainer.device),
        }
    finally:
        distributed.teardown()
    return report


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB

