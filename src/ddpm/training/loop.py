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

import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..checkpoint import FORMAT_VERSION, CheckpointWriteError, atomic_save, latest_valid_checkpoint
from ..config import (
    RESUME_MUTABLE_FIELDS,
    ConfigError,
    DiffusionConfig,
    ModelConfig,
    config_from_dict,
    config_to_dict,
    resume_mismatches,
)
from ..generation import rows_of_classes, sample_images
from ..images import forward_process_figure, grid_image, loss_curve_figure, save_grid, to_uint8
from ..monitor import Monitor
from ..quality import QualityEvaluator, best_row, quality_figure, quality_metric
from ..run_dir import RunDir, RunDirBusy
from ..runtime import precision_name
from ..samplers import get_sampler
from ..unet import count_parameters
from .trainer import NUM_LOSS_BUCKETS, Trainer

FORWARD_FIGURE_FRACTIONS = (0.0, 0.33, 0.66, 1.0)  # t / T in each run's forward.png (seed: 0, 66, 132, 200)


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


def _resume_state(run_dir: RunDir, cfg: DiffusionConfig, mcfg: ModelConfig, trainer: Trainer) -> dict[str, Any] | None:
    """The checkpoint to continue, after checking that it belongs to this configuration."""
    found = run_dir.checkpoints()
    if not found:
        if cfg.resume:
            tqdm.write(f"ddpm: resume: no checkpoint in {run_dir.checkpoints_dir} yet, starting from step 0.")
        return None
    if not cfg.resume:
        raise ConfigError(f"{run_dir} already holds checkpoints ({found[-1].name}); pass "
                          "resume=True (--resume) to continue that run, or choose another out_dir (--out).")
    state, path = latest_valid_checkpoint(run_dir, map_location=trainer.device)
    # Read the saved configs through config_from_dict, so fields added since compare at their defaults.
    saved_model = config_to_dict(config_from_dict(ModelConfig, state["model_config"]))
    saved_diff = config_to_dict(config_from_dict(DiffusionConfig, state["diffusion_config"]))
    problems = resume_mismatches(saved_model, config_to_dict(mcfg))
    problems += resume_mismatches(saved_diff, config_to_dict(cfg), RESUME_MUTABLE_FIELDS)
    if problems:
        raise ConfigError(f"Cannot resume {path}: its configuration differs in " + "; ".join(problems)
                          + ". Resume with the run's own settings (see config.json) or train into a new out_dir.")
    return {**state, "_path": path}


def train_diffusion(diff_config: DiffusionConfig, model_config: ModelConfig, class_conditional: bool = False) -> Path:
    """Train a DDPM as the configs describe and return the run folder.

    The run folder (DiffusionConfig.out_dir, else runs/<dataset>-<time>) receives config.json,
    forward.png, metrics.jsonl, tensorboard/, checkpoints/step_*.pt, samples/step_*.png and loss.png.
    Everything that can fail on bad input (dataset, device, configs) fails before training starts.
    Under torchrun, every process calls this; only rank 0 writes files. class_conditional with
    ModelConfig.num_classes = 0 trains a class-conditional model over the dataset's own classes.
    """
    cfg, mcfg = diff_config, model_config
    if not isinstance(cfg, DiffusionConfig) or not isinstance(mcfg, ModelConfig):
        raise TypeError("train_diffusion(diff_config, model_config) takes a DiffusionConfig and a ModelConfig.")
    trainer = Trainer(cfg, mcfg, class_conditional)
    try:
        return _run(trainer, cfg, trainer.mcfg)
    finally:
        distributed.teardown(trainer.dist)


def _run(trainer: Trainer, cfg: DiffusionConfig, mcfg: ModelConfig) -> Path:
    run_dir = RunDir(cfg.out_dir) if cfg.out_dir else RunDir.default_for(cfg.dataset_name)
    # One trainer per run folder: rank 0 holds the folder's lock for the whole run, and every
    # process stops at once if another trainer has it.
    busy = None
    if trainer.dist.is_main:
        try:
            run_dir.acquire()
        except RunDirBusy as err:
            busy = err
    if distributed.broadcast_flag(busy is not None, trainer.device):
        raise busy or RunDirBusy(f"{run_dir} is already being trained by another process (see rank 0's error).")
    try:
        return _train(trainer, cfg, mcfg, run_dir)
    finally:
        run_dir.release()


def _train(trainer: Trainer, cfg: DiffusionConfig, mcfg: ModelConfig, run_dir: RunDir) -> Path:
    main = trainer.dist.is_main
    state = _resume_state(run_dir, cfg, mcfg, trainer)
    if state is not None:
        trainer.load_state_dict(state)
    start = trainer.step
    schedule = trainer.schedule

    if main:
        run_dir.write_config({"diffusion_config": config_to_dict(cfg), "model_config": config_to_dict(mcfg),
                              "class_names": trainer.class_names, "format_version": FORMAT_VERSION})
        precision = precision_name(trainer.amp_dtype) + (" autocast" if trainer.amp_dtype is not None else "")
        precision += ", channels_last" if trainer.channels_last else ""
        procs = f" x {trainer.dist.world_size} processes" if trainer.dist.enabled else ""
        print(f"ddpm: {len(trainer.dataset)} images from {cfg.dataset_name!r} at {mcfg.image_size}x{mcfg.image_size}x"
              f"{mcfg.image_channels}; U-Net with {count_parameters(trainer.model):,} parameters; "
              f"T={schedule.num_timesteps}; {trainer.device.type}{procs} ({precision}); run folder {run_dir}")
        if state is not None:
            print(f"ddpm: resuming {state['_path']} at step {start}")
        if not run_dir.forward_figure_path.exists():
            n_fig = min(4, len(trainer.dataset))
            forward_ts = sorted({round(f * schedule.num_timesteps) for f in FORWARD_FIGURE_FRACTIONS})
            forward_process_figure(torch.stack([trainer.dataset[i] for i in range(n_fig)]), schedule, forward_ts,
                                   run_dir.forward_figure_path, seed=cfg.seed)
    monitor = Monitor(run_dir, cfg.tensorboard, resume_step=start) if main else None
    evaluator = _quality_evaluator(trainer, cfg, mcfg, run_dir) if cfg.eval_every else None
    # Training wall-clock (evaluations excluded), continued from the run's last logged row on resume.
    prior_train_s = 0.0
    if main and start:
        prior_train_s = next((r["train_s"] for r in reversed(run_dir.metrics()) if "train_s" in r), 0.0)
    loop_start, eval_s = time.perf_counter(), 0.0

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
                    row.update(lr=trainer.lr_schedule.get_last_lr()[0], grad_norm=float(out["grad_norm"]),
                               ema_decay=out["ema_decay"], nonfinite_steps=trainer.nonfinite_total)
                    row["peak_memory_gb"] = _peak_memory_gb(trainer.device)
                    row["train_s"] = prior_train_s + time.perf_counter() - loop_start - eval_s
                    if main:
                        monitor.scalars(step, row)
                        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
                if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                    _save_checkpoint(trainer, run_dir)
                    last_saved = step
                if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                    began = time.perf_counter()
                    _evaluate(trainer, run_dir, monitor, evaluator, prior_train_s + began - loop_start - eval_s)
                    eval_s += time.perf_counter() - began
                    window.start += time.perf_counter() - began  # images/s counts training only
                if cfg.sample_every_steps and step % cfg.sample_every_steps == 0 and step < cfg.max_steps:
                    _save_samples(trainer, run_dir, monitor)
                    distributed.barrier()
        except BaseException:
            if monitor is not None:
                monitor.close()
            raise
        finally:
            bar.close()
    try:
        return _finish(trainer, run_dir, monitor, stopped_for, last_saved)
    finally:
        if monitor is not None:
            monitor.close()


def _save_checkpoint(trainer: Trainer, run_dir: RunDir) -> Path:
    """Write the step's checkpoint (rank 0) and prune old ones; a failed write stops every process."""
    cfg, main = trainer.cfg, trainer.dist.is_main
    state = trainer.state_dict()  # every process reaches this point; only rank 0 writes
    path = run_dir.checkpoint_path(trainer.step)
    failed = None
    if main:
        try:
            atomic_save(state, path)
            run_dir.prune_checkpoints(cfg.keep_checkpoints)
        except CheckpointWriteError as err:
            failed = err
    # Training on without checkpoints would risk everything since the last one: stop, on every process.
    if distributed.broadcast_flag(failed is not None, trainer.device):
        kept = run_dir.checkpoints()
        raise CheckpointWriteError(
            f"{failed or 'Rank 0 could not write a checkpoint.'} Training stopped at step {trainer.step}; "
            + (f"the last checkpoint, {kept[-1]}, is intact: fix the cause and continue with --resume."
               if kept else "no checkpoint was written yet: fix the cause and start again."))
    distributed.barrier()
    return path


def _ema_samples(trainer: Trainer, n: int, seed: int, y: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """n images of the EMA model with the run's sampler settings (grids and quality evaluations)."""
    cfg = trainer.cfg
    options = {"variance": cfg.sample_variance} if "variance" in get_sampler(cfg.sampler).options else {}
    return sample_images(trainer.ema, trainer.schedule, n, seed=seed, sampler=cfg.sampler,
                         num_steps=cfg.sample_steps or None, clip_x0=cfg.clip_x0, batch_size=batch_size, y=y,
                         guidance_scale=cfg.guidance_scale,
                         autocast_dtype=trainer.amp_dtype if trainer.amp_dtype == torch.bfloat16 else None, **options)


def _save_samples(trainer: Trainer, run_dir: RunDir, monitor: Monitor | None) -> Path | None:
    """The fixed-seed sample grid of the EMA model (rank 0), or None when grids are off."""
    cfg = trainer.cfg
    if not trainer.dist.is_main or cfg.num_sample_images == 0:
        return None
    # A class-conditional run's grid has one row per class.
    y, nrow = rows_of_classes(cfg.num_sample_images, range(trainer.num_classes)) if trainer.num_classes else (None, None)
    x = _ema_samples(trainer, len(y) if y is not None else cfg.num_sample_images, cfg.seed, y, min(cfg.batch_size, 64))
    path = save_grid(x, run_dir.sample_grid_path(trainer.step), nrow=nrow)
    monitor.image(trainer.step, "samples", _rgb(grid_image(to_uint8(x))))
    return path


def _finish(trainer: Trainer, run_dir: RunDir, monitor: Monitor | None, stopped_for: str | None, last_saved: int) -> Path:
    """Final checkpoint, loss curve and sample grid; the reason training stopped, if not max_steps."""
    cfg = trainer.cfg
    if last_saved != trainer.step:
        _save_checkpoint(trainer, run_dir)
    if stopped_for == "nonfinite":
        raise FloatingPointError(
            f"Training stopped: {cfg.max_nonfinite_steps} steps in a row had a non-finite loss or gradient "
            f"(last good step {trainer.step}, checkpoint {run_dir.checkpoint_path(trainer.step)}). Lower "
            "learning_rate, keep grad_clip on, or use precision='fp32'; then resume.")
    if not trainer.dist.is_main:
        return run_dir.path
    print(f"ddpm: checkpoint {run_dir.checkpoint_path(trainer.step)}")
    history = [(r["step"], r["loss"]) for r in run_dir.metrics() if "loss" in r]
    if history:
        print(f"ddpm: loss curve {loss_curve_figure(*zip(*history, strict=True), run_dir.loss_figure_path)}")
    print(f"ddpm: forward-process figure {run_dir.forward_figure_path}")
    if stopped_for == "signal":
        print(f"ddpm: stopped at step {trainer.step} of {cfg.max_steps}; continue with resume=True (--resume).")
        return run_dir.path
    grid = _save_samples(trainer, run_dir, monitor)
    if grid is not None:
        print(f"ddpm: sample grid {grid}")
    return run_dir.path


def _quality_evaluator(trainer: Trainer, cfg: DiffusionConfig, mcfg: ModelConfig, run_dir: RunDir) -> QualityEvaluator | None:
    """Rank 0's scorer of this run's samples (built once); None on other ranks, or with one message
    saying why the run cannot be scored. Every rank refuses keep_best when nothing can score it."""
    metric, why = quality_metric(cfg.dataset_name, mcfg.image_channels, mcfg.image_size)
    if metric is None and cfg.keep_best:
        raise ConfigError(f"DiffusionConfig.keep_best=True, but this run's samples cannot be scored ({why}); "
                          "drop keep_best, or make the metric available.")
    if not trainer.dist.is_main:
        return None
    if metric is None:
        tqdm.write(f"ddpm: {why}")
        return None
    # A best.pt from past the step resumed from belongs to a future that was dropped with its metrics rows.
    best = run_dir.best_checkpoint_path
    if best.is_file() and torch.load(best, map_location="cpu", weights_only=True, mmap=True)["step"] > trainer.step:
        best.unlink()
    real = None
    if metric == "fid":  # a seeded random subset: a folder sorted by class must not give one class
        n = min(cfg.eval_samples, len(trainer.dataset))
        order = torch.randperm(len(trainer.dataset), generator=torch.Generator().manual_seed(cfg.seed))[:n]
        real = torch.stack([trainer.dataset[int(i)] for i in order])
    return QualityEvaluator(metric, real)


def _evaluate(trainer: Trainer, run_dir: RunDir, monitor: Monitor | None, evaluator: QualityEvaluator | None,
              train_s: float) -> None:
    """One quality evaluation of the EMA model (rank 0 scores; with keep_best every rank joins the
    checkpoint of a new best): a row in metrics.jsonl, quality.png, and checkpoints/best.pt."""
    cfg, main = trainer.cfg, trainer.dist.is_main
    is_best = False
    if main and evaluator is not None:
        # An evaluation is advice: if it fails (memory, a metric's files), say so and train on.
        try:
            is_best = _score(trainer, run_dir, monitor, evaluator, train_s)
        except Exception as err:  # noqa: BLE001 - reported, and training goes on
            tqdm.write(f"ddpm: quality evaluation at step {trainer.step} failed ({type(err).__name__}: {err}); "
                       "training goes on.")
    if cfg.keep_best and distributed.broadcast_flag(is_best, trainer.device):
        state = trainer.state_dict()  # every process reaches this point; only rank 0 writes
        if main:
            try:
                atomic_save(state, run_dir.best_checkpoint_path)
            except CheckpointWriteError as err:  # the step checkpoints still protect the run
                tqdm.write(f"ddpm: could not keep the best checkpoint ({err}); training goes on.")
    distributed.barrier()


def _score(trainer: Trainer, run_dir: RunDir, monitor: Monitor, evaluator: QualityEvaluator, train_s: float) -> bool:
    """Draw and score eval_samples images; log the row and redraw quality.png. True if it is the best
    so far among evaluations made the same way."""
    cfg = trainer.cfg
    began = time.perf_counter()
    n = cfg.eval_samples
    x = _ema_samples(trainer, n, cfg.seed + 1, torch.arange(n) % trainer.num_classes if trainer.num_classes else None, 256)
    scores = evaluator(x)
    setting = f"{cfg.sampler}:{cfg.sample_steps or 'default'} calls:{n} images:guidance {cfg.guidance_scale:g}"
    earlier = best_row(run_dir.metrics(), evaluator.metric, setting)
    is_best = earlier is None or scores[evaluator.metric] < earlier[evaluator.metric]
    monitor.scalars(trainer.step, {**scores, "eval_samples": n, "eval_setting": setting, "train_s": train_s,
                                   "eval_s": time.perf_counter() - began})
    quality_figure([r for r in run_dir.metrics() if evaluator.metric in r], evaluator.metric, run_dir.quality_figure_path)
    tqdm.write(f"ddpm: step {trainer.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
               + (" (best so far)" if is_best else ""))
    return is_best


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


def dry_run(cfg: DiffusionConfig, mcfg: ModelConfig, steps: int = 3, class_conditional: bool = False) -> dict[str, Any]:
    """Build everything, time a few training steps, and report; writes nothing.

    Returns the resolved configs, parameter count, median seconds per step and peak memory.
    class_conditional is train_diffusion's.
    """
    trainer = Trainer(cfg, mcfg, class_conditional)
    mcfg = trainer.mcfg
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
            "precision": precision_name(trainer.amp_dtype),
            "channels_last": trainer.channels_last,
            "seconds_per_step": times[len(times) // 2],
            "images_per_s": cfg.batch_size / times[len(times) // 2],
            "peak_memory_gb": _peak_memory_gb(trainer.device),
        }
    finally:
        distributed.teardown(trainer.dist)
    return report


def _peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, else the peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB

