"""One training process's state and step: data stream, model, EMA, optimiser, RNG (DDPM Algorithm 1).

loop.py drives it (run folder, logging, checkpoints, signals); a Trainer can also be stepped
directly, as dry_run and the tests do.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from .. import distributed
from ..checkpoint import FORMAT_VERSION
from ..config import ConfigError, DiffusionConfig, ModelConfig, config_to_dict
from ..data import (
    IN_MEMORY_LIMIT_BYTES,
    ArrayImages,
    BatchStream,
    TensorImages,
    WithLabels,
    apply_flip,
    class_names_of,
    collate_batch,
    load_dataset,
    to_float,
)
from ..losses import diffusion_loss, draw_timesteps
from ..runtime import autocast, require_torch, resolve_device, resolve_precision, use_channels_last
from ..schedule import NoiseSchedule
from ..unet import UNet

require_torch()  # on an older torch, fail here with the fix, not at the first step's AttributeError

NUM_LOSS_BUCKETS = 4  # the loss is also logged by quarter of the timestep range
# A CPU generator's state (Mersenne Twister) is this many bytes; a CUDA one (Philox) is 16. Read a
# checkpoint's generator device from it where the checkpoint does not name the device.
CPU_GENERATOR_STATE_BYTES = torch.Generator().get_state().numel()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, apply: torch.Tensor | None = None) -> None:
    """ema <- decay * ema + (1 - decay) * model, in the EMA's float32, as one foreach lerp.

    apply: an optional 0-d bool tensor on the device; where it is False the EMA is left exactly as
    it was (a lerp by 0), so a skipped step needs no host read to skip the EMA too.
    """
    ema_params = list(ema.parameters())
    model_params = [p.detach().to(e.dtype) for e, p in zip(ema_params, model.parameters(), strict=True)]
    weight = 1.0 - decay if apply is None else apply.to(ema_params[0].dtype) * (1.0 - decay)
    torch._foreach_lerp_(ema_params, model_params, weight)


def adamw(params, lr: float, weight_decay: float, device: torch.device,
          betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW with PyTorch's fused kernel where it exists (CPU, CUDA): one pass over each tensor
    instead of ~10 (docs/bench_optimizer_cpu.md: benchmarks/bench_levers.py --optimizer). The same
    update, to float rounding."""
    fused = True if device.type in ("cpu", "cuda") else None  # None: PyTorch's default kernel elsewhere
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)


def lr_factor(step: int, warmup_steps: int, max_steps: int, decay: str) -> float:
    """The learning rate at optimiser step `step` (0-based) as a fraction of the peak.

    A linear warm-up over `warmup_steps`, then constant ("none", the paper) or falling to 0 at
    `max_steps` along a line ("linear") or a half cosine ("cosine") over the steps after warm-up.
    """
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    if decay == "none":
        return warm
    p = min(1.0, max(0.0, (step - warmup_steps) / max(max_steps - warmup_steps, 1)))
    return warm * ((1.0 - p) if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * p)))


def ema_decay_at(step: int, config: DiffusionConfig) -> float:
    """The EMA decay used after optimiser step `step` (1-based), with the optional warm-up."""
    if config.ema_warmup:
        return min(config.ema_decay, (1.0 + step) / (10.0 + step))
    return config.ema_decay


class Trainer:
    """Everything one training process holds: data stream, model, EMA, optimiser, RNG, step.

    train_step() runs one optimiser step of batch_size images (split over processes and, with
    batch_per_device, over accumulated micro-batches); state_dict() is what a checkpoint stores.
    class_conditional with mcfg.num_classes = 0 takes as many classes as the dataset has (self.mcfg
    then holds that number): the data is read here, behind the barrier below, not by the caller.
    """

    def __init__(self, cfg: DiffusionConfig, mcfg: ModelConfig, class_conditional: bool = False) -> None:
        self.cfg, self.mcfg = cfg, mcfg
        # Resolve everything that can fail on bad input before any work.
        self.dist, self.device = distributed.setup(resolve_device(cfg.device))

        def load() -> Dataset:
            return load_dataset(cfg.dataset_name, mcfg.image_size, mcfg.image_channels, cfg.data_root,
                                cfg.crop_mode, cfg.cache_dir, cfg.decode_workers, cfg.labels)

        # One process per node (local rank 0) decodes an image folder into the cache; the node's
        # others then find it there. Nodes that share a filesystem may build it at once: the cache
        # writes are atomic (image_files.cached_folder).
        if self.dist.local_rank == 0:
            self.dataset = load()
        distributed.barrier()
        if self.dist.local_rank != 0:
            self.dataset = load()
        if class_conditional and mcfg.num_classes == 0:
            self.mcfg = mcfg = dataclasses.replace(mcfg, num_classes=len(class_names_of(self.dataset, cfg.dataset_name)))
        self.num_classes = mcfg.num_classes
        self.class_names = self._check_labels() if self.num_classes else []
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
        self.channels_last = use_channels_last(cfg.channels_last, self.device, self.amp_dtype,
                                              mcfg.image_size // mcfg.patch_size)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).float().eval().requires_grad_(False)
        self._params = list(self.model.parameters())
        self.optimizer = adamw(self._params, cfg.learning_rate, cfg.weight_decay, self.device,
                               (cfg.adam_beta1, cfg.adam_beta2))
        # The fused kernel takes the clip factor and the skip flag as device tensors (_update).
        self._device_side_update = bool(self.optimizer.defaults.get("fused")) and not self.scaler.is_enabled()
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.max_steps, cfg.lr_decay))
        net: nn.Module = self.model
        if self.dist.enabled:
            net = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.net = torch.compile(net, mode=cfg.compile_mode) if cfg.compile_model else net

        self.stream = BatchStream(len(self.dataset), cfg.batch_size, cfg.seed, self.dist.rank, self.dist.world_size)
        # Timesteps, noise and flips are drawn for the whole global batch from one generator seeded
        # alike on every process, and each process keeps its slice: so N processes take exactly the
        # step one process would, and a run resumes exactly under any world size.
        self.generator = torch.Generator(device=self.device).manual_seed(self._generator_seed(0))
        if self.dist.enabled:
            self._reseed_dropout(0)
        self.step = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self._batches = None

    # Data ----------------------------------------------------------------------------------------

    def _check_labels(self) -> list[str]:
        """The class names of a class-conditional run, after checking the data has that many classes."""
        n, name = self.mcfg.num_classes, self.cfg.dataset_name
        if self.dataset.labels is None:
            hint = " (set labels='subfolders' to make each subfolder a class)" if name.startswith("folder:") else ""
            raise ConfigError(f"ModelConfig.num_classes={n} asks for a class-conditional model, but {name!r} has no "
                              f"labels{hint}; or set num_classes=0 for an unconditional model.")
        names = list(self.dataset.class_names)
        if len(names) != n:
            raise ConfigError(f"ModelConfig.num_classes={n}, but {name!r} has {len(names)} classes "
                              f"({', '.join(names[:12])}{', ...' if len(names) > 12 else ''}); set num_classes={len(names)}.")
        return names

    def _start_batches(self) -> None:
        """Batches of this process's share, from the stream's current position, on the device."""
        ds = self.dataset
        if isinstance(ds, TensorImages) or (isinstance(ds, ArrayImages) and ds.images.nbytes < IN_MEMORY_LIMIT_BYTES):
            # Small data: one tensor on the device, indexed per batch (uint8 stays uint8 until then).
            images = (ds.images if isinstance(ds, TensorImages) else ds.as_tensor()).to(self.device)
            labels = ds.labels.to(self.device) if self.num_classes else None
            self._batches = ((images[i], None if labels is None else labels[i])
                             for i in (idx.to(self.device) for idx in iter(self.stream.next_indices, None)))
        else:
            loader = DataLoader(WithLabels(ds) if self.num_classes else ds, batch_sampler=self.stream,
                                num_workers=self.cfg.num_workers, collate_fn=collate_batch,
                                pin_memory=self.device.type == "cuda", persistent_workers=self.cfg.num_workers > 0)
            self._batches = ((x.to(self.device, non_blocking=True), None if y is None else y.to(self.device))
                             for x, y in (b if isinstance(b, tuple) else (b, None) for b in loader))
        self._batches_consumed = self.stream.batches_consumed

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images, labels or None) of this step, on the device."""
        if self._batches is None:
            self._start_batches()
        self._batches_consumed += 1  # counted here: a DataLoader's sampler runs ahead of the loop
        x, y = next(self._batches)
        x = to_float(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    # One step ------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, torch.Tensor | float | bool]:
        """One optimiser step. Returns the loss statistics and grad_norm as device tensors (read
        them at log steps only), ema_decay, and finite (whether the step was taken)."""
        cfg = self.cfg
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_total = torch.zeros((), device=self.device)
        bucket_sum = torch.zeros(NUM_LOSS_BUCKETS, device=self.device)
        bucket_count = torch.zeros(NUM_LOSS_BUCKETS, device=self.device)
        # This process's share of the batch, and all its random draws, are taken at once, so that
        # splitting it into accumulated micro-batches changes nothing but memory.
        x0, y = self._next_batch()
        mine = slice(self.dist.rank * x0.shape[0], (self.dist.rank + 1) * x0.shape[0])
        B, g = cfg.batch_size, self.generator
        if cfg.use_augmentation:
            x0 = apply_flip(x0, (torch.rand(B, device=self.device, generator=g) < 0.5)[mine])
        t = draw_timesteps(B, self.schedule.num_timesteps, cfg.timestep_sampling, self.device, g)[mine]
        noise = torch.randn((B, *x0.shape[1:]), device=self.device, dtype=x0.dtype, generator=g)[mine]
        if y is not None:  # classifier-free guidance training: some labels become "no class" (index num_classes)
            drop = (torch.rand(B, device=self.device, generator=g) < cfg.class_dropout)[mine]
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        ys = y.split(self.micro_batch) if y is not None else [None] * self.accumulation
        chunks = zip(x0.split(self.micro_batch), t.split(self.micro_batch), noise.split(self.micro_batch), ys,
                     strict=True)
        for micro, (x0_m, t_m, noise_m, y_m) in enumerate(chunks):
            sync = micro == self.accumulation - 1 or not self.dist.enabled
            with contextlib.nullcontext() if sync else self.net.no_sync(), autocast(self.device, self.amp_dtype):
                loss, per_image, _ = diffusion_loss(self.net, self.schedule, x0_m, t=t_m, noise=noise_m, y=y_m,
                                                    weighting=cfg.loss_weighting, snr_gamma=cfg.snr_gamma)
            self.scaler.scale(loss / self.accumulation).backward()
            loss_total += loss.detach() / self.accumulation
            bucket = t_m * NUM_LOSS_BUCKETS // self.schedule.num_timesteps
            bucket_sum.index_add_(0, bucket, per_image.detach())
            bucket_count.index_add_(0, bucket, torch.ones_like(per_image))

        grad_norm, finite, decay = self._update()
        return {"loss": loss_total, "bucket_sum": bucket_sum, "bucket_count": bucket_count,
                "grad_norm": grad_norm, "ema_decay": decay, "finite": finite}

    def _update(self) -> tuple[torch.Tensor, bool, float]:
        """Clip, AdamW and EMA for the accumulated gradients, unless they are non-finite (then the
        step is skipped and not counted). Returns the gradient norm before clipping (a device
        tensor), whether the step was taken, and the EMA decay used (NaN if skipped).

        With the fused AdamW kernel (CPU, CUDA) the whole update is decided on the device: the kernel
        divides the gradients by max(1, norm / grad_clip) as it reads them (clipping without a pass
        of its own) and skips the update where found_inf is set, and the EMA's lerp weight is zeroed
        likewise. The step's one host read, whether it was finite, comes after all of its work is
        queued, so a GPU never idles waiting for it mid-step.
        """
        cfg = self.cfg
        self.scaler.unscale_(self.optimizer)  # fp16: divide out the loss scale first
        grad_norm = nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None])
        finite = torch.isfinite(grad_norm)
        decay = ema_decay_at(self.step + 1, cfg)
        if self._device_side_update:
            opt = self.optimizer
            opt.grad_scale = (grad_norm / cfg.grad_clip).clamp(min=1.0) if cfg.grad_clip > 0 else None
            opt.found_inf = (~finite).float()
            try:
                opt.step()
            finally:
                del opt.grad_scale, opt.found_inf
            ema_update(self.ema, self.model, decay, apply=finite)
            took = bool(finite)  # the one host read
        else:  # fp16 (the GradScaler owns found_inf) and devices without the fused kernel
            if cfg.grad_clip > 0:
                nn.utils.clip_grads_with_norm_(self._params, cfg.grad_clip, grad_norm)
            took = bool(finite)
            if took or self.scaler.is_enabled():
                self.scaler.step(self.optimizer)  # with fp16 the scaler itself skips non-finite steps
                self.scaler.update()
            if took:
                ema_update(self.ema, self.model, decay)
        if took:
            self.lr_schedule.step()
            self.step += 1
            self.nonfinite_in_a_row = 0
            return grad_norm, True, decay
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        return grad_norm, False, float("nan")

    # Checkpoint state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: weights, optimiser, data position, RNG."""
        return {
            "format_version": FORMAT_VERSION,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "data": {**self.stream.state_dict(), "batches_consumed": self._consumed()},
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
                    "generator_device": self.generator.device.type,
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None},
            "nonfinite_total": self.nonfinite_total,
            "world_size": self.dist.world_size,
            "diffusion_config": config_to_dict(self.cfg),
            "model_config": config_to_dict(self.mcfg),
            "class_names": self.class_names,
        }

    def _reseed_dropout(self, step: int) -> None:
        """Give each process its own dropout masks (the global RNG), reproducibly from (seed, rank, step)."""
        torch.manual_seed(self.cfg.seed * 1000 + 7919 * step + 17 + self.dist.rank)

    def _generator_seed(self, step: int) -> int:
        """The training generator's seed at `step` (the same on every process): at 0 the run's start."""
        return self.cfg.seed * 1000 + 1 + 7919 * step

    def _consumed(self) -> int:
        return self._batches_consumed if self._batches is not None else self.stream.batches_consumed

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (written by any number of processes)."""
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the kernel is this machine's choice, not the checkpoint's
            group["fused"], group["foreach"] = self.optimizer.defaults["fused"], self.optimizer.defaults["foreach"]
            for p in group["params"]:  # the fused kernel keeps its step counts on the parameters' device
                state_p = self.optimizer.state.get(p, {})
                if "step" in state_p:
                    state_p["step"] = state_p["step"].to(p.device, torch.float32)
                # The fused kernel walks parameter and moments in memory order: moments saved by a run in the
                # other layout (channels_last changed on resume) would be paired with the wrong weights.
                for key, value in list(state_p.items()):
                    if key != "step" and torch.is_tensor(value) and value.shape == p.shape:
                        state_p[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.stream.load_state_dict(state["data"])
        self._batches = None
        self.step = int(state["step"])
        saved = state["rng"]["generator"].to("cpu")
        saved_device = state["rng"].get("generator_device") or (
            "cpu" if saved.numel() == CPU_GENERATOR_STATE_BYTES else "cuda")
        same_device = saved_device == self.device.type
        if same_device:
            self.generator.set_state(saved)
        else:
            # A CUDA (Philox) state and a CPU (Mersenne Twister) state are different generators: neither
            # can continue the other's stream. Restart it from (seed, step), so a resume stays reproducible.
            self.generator.manual_seed(self._generator_seed(self.step))
            warnings.warn(
                f"The checkpoint at step {self.step} was trained on {saved_device} and this run is on "
                f"{self.device.type}: a {saved_device} random state cannot continue on {self.device.type}, so the "
                f"training noise is re-seeded from (seed {self.cfg.seed}, step {self.step}). The run continues "
                f"reproducibly but not bit for bit as it would have on {saved_device}; resume with "
                f"device='{saved_device}' (--device {saved_device}) for that.", stacklevel=2)
        if same_device and self.dist.world_size == 1 and state.get("world_size", 1) == 1:
            # Dropout masks come from the global RNG; one process continues its own stream exactly.
            torch.set_rng_state(state["rng"]["torch"].cpu())
            if state["rng"].get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        else:
            self._reseed_dropout(self.step)
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
