"""Typed configuration: what to train (DiffusionConfig) and the network (ModelConfig).

Both are validated once, at construction, with errors that name the field, the value and the fix.
The resolved configs are written into the run folder and into every checkpoint, and a model is
rebuilt from its stored ModelConfig.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

EMBEDDING_PLACEMENTS = ("block_start", "after_conv1")
# Every named choice is defined here, once; the modules that implement them import these lists.
SAMPLE_VARIANCES = ("beta", "beta_tilde")
CROP_MODES = ("center", "pad")
# Where a sampler's timesteps lie (samplers/base.py, samplers/sigmas.py): the first two on the
# model's own timesteps, the last two between them.
SPACINGS = ("uniform", "logsnr", "karras", "exponential")
# The registered samplers (samplers/__init__.py builds its registry in this order and checks it).
SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp-2m", "dpmpp-2m-sde", "dpmpp-3m-sde", "euler", "euler-ancestral", "heun", "unipc")
# What the network predicts, how the loss weighs the timesteps, and the beta schedule
# (schedule.py and losses.py implement them; docs/results.md says which trains fastest).
PREDICTIONS = ("eps", "v", "x0")
LOSS_WEIGHTINGS = ("uniform", "min-snr", "soft-min-snr")
TIMESTEP_SAMPLINGS = ("uniform", "stratified")
BETA_SCHEDULES = ("linear", "cosine")
LR_DECAYS = ("none", "linear", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SAMPLE_PRECISIONS = ("auto", "fp32", "bf16")  # sampling and editing: no gradient scaler, so no fp16
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
LABEL_SOURCES = ("none", "subfolders")
# The sampler of `ddpm sample` and of the training grids when none is named (chosen by
# benchmarks/sampler_table.py; docs/results.md has the table).
DEFAULT_SAMPLER = "dpmpp-2m-sde"


class ConfigError(ValueError):
    """A configuration field holds a value that cannot work; the message names field, value, fix."""


def _f(default: Any, help: str) -> Any:
    """A config field with its --help text (the CLI builds each flag from the field and its type)."""
    return field(default=default, metadata={"help": help})


def _check_types(config: Any) -> None:
    """Every field holds a value of its annotated type (ints not bools, lists of ints for tuples)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(kind) if a is not type(None)]
            if value is None:
                continue
            kind = options[0]
        if kind is bool:
            ok, want = isinstance(value, bool), "True or False"
        elif kind is int:
            ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif kind is float:
            ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif kind is str:
            ok, want = isinstance(value, str), "a string"
        elif typing.get_origin(kind) is tuple:
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            want = "a list of integers"
        else:
            ok, want = isinstance(value, typing.get_origin(kind) or kind), str(kind)
        _require(ok, f"{type(config).__name__}.{f.name}={value!r} must be {want}.")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class ModelConfig:
    """The seed's U-Net (DDPM, Ho et al. 2020, Appendix B), one level per entry of dim_multiply."""

    lowest_resolution_size: int = _f(8, "side of the bottleneck feature map, in pixels (in patches when patch_size > 1)")
    dim_multiply: tuple[int, ...] = _f((1, 2, 2, 4, 8), "channel multiplier of base_dim per level")
    transformer_layers: tuple[int, ...] = _f((3,), "level indices (0 = the first level, at image_size / patch_size) with self-attention; the bottleneck always has it, so () (--transformer-layers \"\") means the bottleneck's only")
    base_dim: int = _f(64, "channels at level 0; the timestep MLP is 4 * base_dim wide")
    image_channels: int = _f(3, "1 = grayscale, 3 = RGB")
    num_res_blocks: int = _f(2, "ResNet blocks per level going down; going up has one more, each concatenating one skip (the seed's 2 down and 3 up; the count is tied so that every skip is used exactly once).")
    dropout: float = _f(0.1, "dropout inside ResNet blocks (paper: 0.1 on CIFAR10, 0.0 elsewhere)")
    norm_groups: int = _f(32, "GroupNorm groups; every channel count must be divisible by it")
    attention_heads: int = _f(1, "heads of each self-attention layer (paper: 1)")
    embedding_placement: str = _f("block_start", "Where the timestep embedding enters a ResNet block: \"block_start\" adds it to the block's input as the seed describes; \"after_conv1\" is the official DDPM placement.")
    num_classes: int = _f(0, "class-conditional model over this many classes (a learned class embedding added to the timestep embedding, plus a 'no class' entry); 0 = unconditional")
    # How the official DDPM models (google/ddpm-*, diffusers' UNet2DModel) differ in detail; the defaults
    # are this project's own, so that every earlier model is unchanged.
    norm_eps: float = _f(1e-5, "epsilon of every GroupNorm (PyTorch's default; the official DDPM models: 1e-6)")
    downsample_padding: int = _f(1, "padding of the stride-2 downsampling convolution: 1 = one pixel on every side; 0 = one pixel on the right and bottom only, TensorFlow's 'SAME' (the official DDPM models)")
    embedding_flip_sin_to_cos: bool = _f(False, "order of the sinusoidal timestep embedding: False = sines then cosines (the official DDPM code), True = cosines first")
    embedding_freq_shift: int = _f(1, "the timestep embedding's frequencies are 10000^(-i / (half - shift)), i = 0 .. half - 1, half = base_dim / 2: 1 = from 1 down to exactly 1/10000 (the official DDPM code); 0 = as in 'Attention is all you need'")
    patch_size: int = _f(1, "side of the square pixel patches the U-Net works on: 1 = pixels (the seed); 2 = each 2x2 patch becomes image_channels * 4 channels (pixel unshuffle, as in Hoogeboom et al.'s simple diffusion), so every level runs at half the resolution, a quarter of the compute at the same widths, and the output is shuffled back into pixels; the image side is then lowest_resolution_size * 2**(levels - 1) * patch_size")

    def __post_init__(self) -> None:
        _check_types(self)
        self.dim_multiply = tuple(int(m) for m in self.dim_multiply)
        self.transformer_layers = tuple(int(i) for i in self.transformer_layers)
        levels = len(self.dim_multiply)
        _require(levels >= 1, "ModelConfig.dim_multiply is empty; give one multiplier per level, e.g. [1, 2, 2, 4, 8].")
        _require(all(m >= 1 for m in self.dim_multiply),
                 f"ModelConfig.dim_multiply={list(self.dim_multiply)} has a multiplier below 1; use positive integers.")
        _require(self.lowest_resolution_size >= 1,
                 f"ModelConfig.lowest_resolution_size={self.lowest_resolution_size} must be a positive number of pixels (seed: 8).")
        _require(self.base_dim >= 1, f"ModelConfig.base_dim={self.base_dim} must be positive (seed: 64).")
        _require(self.image_channels >= 1,
                 f"ModelConfig.image_channels={self.image_channels} must be positive (1 = grayscale, 3 = RGB).")
        _require(self.num_res_blocks >= 1,
                 f"ModelConfig.num_res_blocks={self.num_res_blocks} must be at least 1 (seed: 2 down, so 3 up).")
        _require(0.0 <= self.dropout < 1.0, f"ModelConfig.dropout={self.dropout} must lie in [0, 1).")
        bad = [i for i in self.transformer_layers if not 0 <= i < levels]
        _require(not bad,
                 f"ModelConfig.transformer_layers={list(self.transformer_layers)} names level(s) {bad}, but "
                 f"dim_multiply has {levels} levels (indices 0..{levels - 1}, 0 = full resolution); "
                 f"list only those (the bottleneck always has attention).")
        _require(self.norm_groups >= 1, f"ModelConfig.norm_groups={self.norm_groups} must be positive.")
        _require(self.attention_heads >= 1, f"ModelConfig.attention_heads={self.attention_heads} must be positive (paper: 1).")
        for m in self.dim_multiply:
            ch = self.base_dim * m
            _require(ch % self.norm_groups == 0,
                     f"ModelConfig: level width base_dim * {m} = {ch} channels is not divisible by "
                     f"norm_groups={self.norm_groups}; pick base_dim a multiple of {self.norm_groups} "
                     "or lower norm_groups.")
            _require(ch % self.attention_heads == 0,
                     f"ModelConfig.attention_heads={self.attention_heads} does not divide {ch} channels.")
        _require(self.num_classes >= 0, f"ModelConfig.num_classes={self.num_classes} must be >= 0 (0 = unconditional).")
        _require(self.embedding_placement in EMBEDDING_PLACEMENTS,
                 f"ModelConfig.embedding_placement={self.embedding_placement!r}; choose one of {EMBEDDING_PLACEMENTS}.")
        _require(0.0 < self.norm_eps < 1.0, f"ModelConfig.norm_eps={self.norm_eps} must lie in (0, 1) (default 1e-5; official DDPM: 1e-6).")
        _require(self.downsample_padding in (0, 1),
                 f"ModelConfig.downsample_padding={self.downsample_padding}; choose 1 (every side) or 0 (right and bottom only).")
        _require(self.patch_size >= 1,
                 f"ModelConfig.patch_size={self.patch_size} must be a positive number of pixels (1 = no patches, the seed).")
        _require(self.embedding_freq_shift in (0, 1),
                 f"ModelConfig.embedding_freq_shift={self.embedding_freq_shift}; choose 1 (official DDPM) or 0.")

    @property
    def image_size(self) -> int:
        """Side of the square images the model takes: lowest_resolution_size * 2**(levels - 1) * patch_size."""
        return self.lowest_resolution_size * 2 ** (len(self.dim_multiply) - 1) * self.patch_size


@dataclass
class DiffusionConfig:
    """What to train on and how: data, noise schedule, optimisation, outputs.

    Defaults follow the paper (Ho et al. 2020, Sec. 4 and Appendix B) where it gives one.
    """

    dataset_name: str = _f("digits", "\"digits\" (built in), \"FFHQ\", \"CIFAR10\", \"MNIST\" or \"folder:PATH\"")
    data_root: str | None = _f(None, "folder holding named datasets; None = $DDPM_DATA_ROOT or ./data")
    learning_rate: float = _f(2e-4, "peak Adam learning rate (paper: 2e-4; the seed's 1e-3 also works)")
    batch_size: int = _f(128, "images per optimiser step (paper: 128)")
    use_augmentation: bool = _f(False, "random horizontal flips")
    timesteps_diff: int = _f(1000, "T, the number of diffusion steps (paper: 1000; seed: 200)")
    beta_start: float | None = _f(None, "first beta of the linear schedule. None = the paper's 1e-4 and 0.02 scaled by 1000 / T, so x_T is pure noise for any T (the seed's T = 200 with the unscaled range keeps 37% of the signal amplitude).")
    beta_end: float | None = _f(None, "last beta of the linear schedule. None = the paper's 0.02 scaled by 1000 / T (see beta_start).")
    beta_schedule: str = _f("linear", "\"linear\" (DDPM: beta_start .. beta_end) or \"cosine\" (Nichol & Dhariwal 2021: alphā(t) = f(t) / f(0), f(t) = cos²((t/T + 0.008) / 1.008 · π/2); less noise early, so fewer steps are spent on nearly clean images)")
    schedule_shift: float = _f(0.0, "add this to the schedule's log-SNR at every t: alphā'(t) = sigmoid(log SNR(t) + shift) (Hoogeboom et al. 2023, \"simple diffusion\"). Negative = more noise at every step, for large images, whose pixels stay recognisable under more noise (their rule for the cosine schedule: 2 ln(64 / image_size), -1.39 at 128x128); positive = less, for small ones. 0 = the schedule as it is.")
    zero_terminal_snr: bool = _f(False, "rescale the schedule so that alphā_T = 0 exactly (Lin et al. 2024): x_T is pure noise, with no signal left. Needs prediction v or x0, since eps carries no information about x_0 there.")
    prediction: str = _f("eps", "what the network predicts: \"eps\" (the noise, DDPM), \"v\" (sqrt(alphā) eps - sqrt(1 - alphā) x_0, Salimans & Ho 2022: well scaled at every t) or \"x0\" (the clean image)")
    loss_weighting: str = _f("uniform", "weight of each t in the loss: \"uniform\" (plain MSE of the prediction, DDPM's L_simple for eps), \"min-snr\" (Hang et al. 2023: the x_0 error weighted by min(SNR, gamma); converges faster) or \"soft-min-snr\" (SNR gamma / (SNR + gamma), a smooth min; k-diffusion)")
    snr_gamma: float = _f(5.0, "gamma of min-snr and soft-min-snr (Hang et al. 2023: 5)")
    timestep_sampling: str = _f("uniform", "how a batch's timesteps are drawn: \"uniform\" (each t independently, DDPM) or \"stratified\" (one t from each of batch_size equal slices of [0, T), shuffled: each t is still uniform, but a batch covers the noise levels evenly, so the loss and its gradient vary less from step to step; a variant of Kingma et al. 2021's low-discrepancy sampler, which shares one offset across the slices)")
    max_steps: int = _f(800_000, "optimiser steps to train for (paper: 800k on CIFAR10)")
    warmup_steps: int = _f(5000, "linear learning-rate warm-up (paper: 5000)")
    lr_decay: str = _f("none", "learning rate after the warm-up: \"none\" (constant, as the paper), \"linear\" or \"cosine\" (falls to 0 at max_steps: a short run ends on a settled model instead of wherever the last steps left it; changing max_steps on resume re-scales the fall from the current step, so a larger one makes the rate jump back up: 4000 -> 8000 resumes at about half the peak)")
    grad_clip: float = _f(1.0, "max global gradient norm; 0 = no clipping (paper: 1.0)")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay (paper: none)")
    adam_beta1: float = _f(0.9, "Adam's beta1, the decay of its gradient average (the paper's code: 0.9)")
    adam_beta2: float = _f(0.999, "Adam's beta2, the decay of its squared-gradient average (the paper's code: 0.999, a ~1000-step memory; 0.99, lucidrains' default, forgets the large gradients of a run's first steps ~10x sooner; on the demo it measured no gain, docs/time_to_quality.md)")
    ema_decay: float = _f(0.9999, "EMA of the weights used for sampling (paper: 0.9999)")
    ema_warmup: bool = _f(True, "EMA warm-up: the decay used at step s is min(ema_decay, (1 + s) / (10 + s)), so short runs are not dominated by the random initialisation.")
    precision: str = _f("auto", "\"auto\" = bf16 autocast where the device does bf16 natively, else fp32; \"fp32\"; \"bf16\"; \"fp16\" (autocast with a gradient scaler, for GPUs without bf16).")
    batch_per_device: int = _f(0, "Images per process per forward pass; several of them are accumulated into one step of batch_size images. 0 = batch_size / processes at once (no accumulation).")
    activation_checkpointing: bool = _f(False, "recompute ResNet blocks in backward: less memory, ~30% more time")
    compile_model: bool = _f(False, "torch.compile the U-Net (~80 s to compile the seed model on an H200; slower on CPUs)")
    compile_mode: str = _f("default", "torch.compile mode: \"default\" (fused kernels), \"reduce-overhead\" (also CUDA graphs: for small models whose GPU steps are bound by kernel launches) or \"max-autotune\".")
    channels_last: bool | None = _f(None, "NHWC memory layout. None = auto: on for fp32 training on a CPU when the U-Net runs at 32x32 or less (image_size / patch_size <= 32), where it measured 7-13% faster (the demo, AVX2); off elsewhere, since bf16 and large images are slower in NHWC (GroupNorm lacks a fast NHWC path). --channels-last / --no-channels-last force it.")
    device: str = _f("auto", "\"auto\" = CUDA if available, else CPU; or any torch device string")
    seed: int = _f(0, "seeds data order, timesteps, noise and the initialisation")
    out_dir: str | None = _f(None, "run folder; None = runs/<dataset>-<date>-<time>")
    log_every_steps: int = _f(50, "steps between lines of metrics.jsonl")
    checkpoint_every_steps: int = _f(5000, "steps between checkpoints; 0 = only at the end")
    keep_checkpoints: int = _f(3, "newest checkpoints kept in RUN_DIR/checkpoints; 0 = keep all")
    resume: bool = _f(False, "Continue the newest valid checkpoint in out_dir (same configs; max_steps and the logging, checkpoint and sampling intervals may change). False refuses an out_dir that holds checkpoints.")
    max_nonfinite_steps: int = _f(20, "consecutive NaN/inf losses (each skipped) before training stops")
    tensorboard: bool = _f(True, "also write TensorBoard event files (needs the tensorboard package)")
    sample_every_steps: int = _f(0, "steps between sample grids; 0 = only at the end")
    num_sample_images: int = _f(64, "images in each fixed-seed sample grid; 0 = no grids")
    eval_every: int = _f(0, "steps between quality evaluations: the EMA model draws eval_samples images with `sampler` and ddpm eval's metrics (FD-digits, precision, recall for digits; FID where Inception is installed) go to metrics.jsonl, TensorBoard and quality.png; 0 = off")
    eval_samples: int = _f(500, "images drawn at each quality evaluation (more: less noisy scores, more time; at 500, FD-digits of real held-out digits ranges 6-12 from one subset to the next, so compare runs at 2000 or more)")
    keep_best: bool = _f(False, "with eval_every: also keep the checkpoint of the best evaluation as checkpoints/best.pt")
    sampler: str = _f(DEFAULT_SAMPLER, "sampler of the training-time sample grids, by name (see `ddpm sample --help`)")
    sample_steps: int = _f(0, "network calls per image of that sampler; 0 = its default")
    guidance_scale: float = _f(1.0, "classifier-free guidance of a class-conditional model's samples: 0 = unconditional, 1 = plain conditional, > 1 = guided")
    sample_variance: str = _f("beta", "reverse-process variance: \"beta\" or \"beta_tilde\" (posterior)")
    clip_x0: bool = _f(True, "clip the predicted x_0 to [-1, 1] while sampling")
    num_workers: int = _f(0, "DataLoader worker processes for data over 2 GB (0 = load in the training process)")
    decode_workers: int = _f(0, "processes that decode an image folder into the cache, once (0 = all cores)")
    crop_mode: str = _f("center", "non-square images: \"center\" crop, or \"pad\" to a square with black")
    labels: str = _f("none", "class labels of an image folder: 'subfolders' = each immediate subfolder is a class (names sorted); 'none'. digits, MNIST and CIFAR10 carry their own")
    class_dropout: float = _f(0.1, "class-conditional training: the fraction of images whose label is swapped for 'no class', so one model also learns the unconditional case (classifier-free guidance)")
    cache_dir: str | None = _f(None, "Where image folders are decoded once into a memory-mapped uint8 cache; None = $DDPM_CACHE/datasets, else ~/.cache/ddpm/datasets.")
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "free-form notes stored with the run"})

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.dataset_name.strip() != "",
                 "DiffusionConfig.dataset_name is empty; use 'digits', 'FFHQ', 'CIFAR10', 'MNIST' or 'folder:PATH'.")
        _require(0 < self.learning_rate < math.inf,
                 f"DiffusionConfig.learning_rate={self.learning_rate} must be positive and finite (paper: 2e-4).")
        _require(self.batch_size >= 1, f"DiffusionConfig.batch_size={self.batch_size} must be at least 1.")
        _require(self.timesteps_diff >= 2, f"DiffusionConfig.timesteps_diff={self.timesteps_diff} must be at least 2 (paper: 1000).")
        for name in ("beta_start", "beta_end"):
            v = getattr(self, name)
            _require(v is None or 0.0 < v < 1.0, f"DiffusionConfig.{name}={v} must lie in (0, 1), or be None for the scaled default.")
        b0, b1 = self.resolved_betas()
        if self.beta_schedule == "linear":
            _require(b0 <= b1, f"DiffusionConfig.beta_start={b0} is above beta_end={b1}; the linear schedule must increase.")
            _require(b1 < 1.0, f"DiffusionConfig: beta_end resolves to {b1} >= 1 for timesteps_diff={self.timesteps_diff}; "
                     "the scaled default needs T >= 21; use more timesteps or give beta_end explicitly.")
        _require(self.beta_schedule in BETA_SCHEDULES,
                 f"DiffusionConfig.beta_schedule={self.beta_schedule!r}; choose one of {BETA_SCHEDULES}.")
        _require(self.beta_schedule == "linear" or (self.beta_start is None and self.beta_end is None),
                 f"DiffusionConfig: beta_start/beta_end are set, but beta_schedule={self.beta_schedule!r} does not use "
                 "them; unset them, or use beta_schedule='linear'.")
        _require(math.isfinite(self.schedule_shift) and abs(self.schedule_shift) <= 10,
                 f"DiffusionConfig.schedule_shift={self.schedule_shift} must be a log-SNR shift in [-10, 10] "
                 "(0 = none; simple diffusion's rule for cosine is 2 ln(64 / image_size)).")
        _require(self.prediction in PREDICTIONS, f"DiffusionConfig.prediction={self.prediction!r}; choose one of {PREDICTIONS}.")
        _require(not (self.zero_terminal_snr and self.prediction == "eps"),
                 "DiffusionConfig.zero_terminal_snr=True with prediction='eps': at alphā_T = 0, x_T is pure noise, so "
                 "predicting its noise says nothing about x_0 (x_0 = (x_T - eps) / 0). Use prediction='v' (or 'x0').")
        _require(self.loss_weighting in LOSS_WEIGHTINGS,
                 f"DiffusionConfig.loss_weighting={self.loss_weighting!r}; choose one of {LOSS_WEIGHTINGS}.")
        _require(self.timestep_sampling in TIMESTEP_SAMPLINGS,
                 f"DiffusionConfig.timestep_sampling={self.timestep_sampling!r}; choose one of {TIMESTEP_SAMPLINGS}.")
        _require(0.0 < self.snr_gamma <= 1e6, f"DiffusionConfig.snr_gamma={self.snr_gamma} must lie in (0, 1e6] (paper: 5).")
        _require(self.lr_decay in LR_DECAYS, f"DiffusionConfig.lr_decay={self.lr_decay!r}; choose one of {LR_DECAYS}.")
        _require(self.max_steps >= 1, f"DiffusionConfig.max_steps={self.max_steps} must be at least 1.")
        for name in ("warmup_steps", "log_every_steps", "checkpoint_every_steps", "sample_every_steps",
                     "num_sample_images", "num_workers", "decode_workers", "sample_steps", "keep_checkpoints", "batch_per_device", "max_nonfinite_steps",
                     "eval_every"):
            v = getattr(self, name)
            _require(isinstance(v, int) and v >= 0, f"DiffusionConfig.{name}={v!r} must be a non-negative integer.")
        _require(self.eval_samples >= 2, f"DiffusionConfig.eval_samples={self.eval_samples} must be at least 2 (a covariance needs 2).")
        _require(not self.keep_best or self.eval_every > 0,
                 "DiffusionConfig.keep_best=True needs eval_every > 0: the best checkpoint is chosen by those evaluations.")
        _require(self.batch_per_device == 0 or self.batch_size % self.batch_per_device == 0,
                 f"DiffusionConfig.batch_per_device={self.batch_per_device} does not divide batch_size="
                 f"{self.batch_size}; pick a divisor (or 0 for no gradient accumulation).")
        _require(self.resume is False or self.out_dir is not None,
                 "DiffusionConfig.resume=True needs out_dir: the run folder whose checkpoints to continue.")
        _require(0 <= self.grad_clip < math.inf, f"DiffusionConfig.grad_clip={self.grad_clip} must be finite and >= 0 (0 = off).")
        _require(0 <= self.weight_decay < math.inf, f"DiffusionConfig.weight_decay={self.weight_decay} must be finite and >= 0.")
        for name in ("adam_beta1", "adam_beta2"):
            beta = getattr(self, name)
            _require(0.0 <= beta < 1.0, f"DiffusionConfig.{name}={beta} must lie in [0, 1) (the paper's code: 0.9 and 0.999).")
        _require(0.0 <= self.ema_decay < 1.0, f"DiffusionConfig.ema_decay={self.ema_decay} must lie in [0, 1) (paper: 0.9999).")
        _require(self.precision in PRECISIONS, f"DiffusionConfig.precision={self.precision!r}; choose one of {PRECISIONS}.")
        _require(self.compile_mode in COMPILE_MODES,
                 f"DiffusionConfig.compile_mode={self.compile_mode!r}; choose one of {COMPILE_MODES}.")
        _require(self.labels in LABEL_SOURCES, f"DiffusionConfig.labels={self.labels!r}; choose one of {LABEL_SOURCES}.")
        _require(0.0 <= self.class_dropout < 1.0, f"DiffusionConfig.class_dropout={self.class_dropout} must lie in [0, 1).")
        _require(0.0 <= self.guidance_scale < 1e3, f"DiffusionConfig.guidance_scale={self.guidance_scale} must lie in [0, 1000).")
        _require(self.crop_mode in CROP_MODES, f"DiffusionConfig.crop_mode={self.crop_mode!r}; choose one of {CROP_MODES}.")
        _require(self.sampler in SAMPLER_NAMES, f"DiffusionConfig.sampler={self.sampler!r}; choose one of {sorted(SAMPLER_NAMES)}.")
        _require(self.sample_steps <= self.timesteps_diff,
                 f"DiffusionConfig.sample_steps={self.sample_steps} exceeds timesteps_diff={self.timesteps_diff}; "
                 "use 1 .. T, or 0 for the sampler's default.")
        _require(self.sample_variance in SAMPLE_VARIANCES,
                 f"DiffusionConfig.sample_variance={self.sample_variance!r}; choose one of {SAMPLE_VARIANCES}.")

    def resolved_betas(self) -> tuple[float, float]:
        """(beta_start, beta_end) after scaling the paper's range by 1000 / T where not given."""
        scale = 1000.0 / self.timesteps_diff
        b0 = self.beta_start if self.beta_start is not None else 1e-4 * scale
        b1 = self.beta_end if self.beta_end is not None else 0.02 * scale
        return float(b0), float(b1)


# DiffusionConfig fields a resumed run may change; any other difference from the checkpoint's
# config is an error, because the run would silently stop being the run it claims to continue.
RESUME_MUTABLE_FIELDS = frozenset({
    "max_steps", "out_dir", "resume", "data_root", "cache_dir", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "sample_every_steps", "num_sample_images", "num_workers", "device", "tensorboard", "extra",
    "batch_per_device", "activation_checkpointing", "compile_model", "compile_mode", "channels_last",
    "max_nonfinite_steps", "decode_workers", "eval_every", "eval_samples", "keep_best",
    # Sampling-only settings: no training state depends on them.
    "sample_variance", "clip_x0", "sampler", "sample_steps", "guidance_scale",
})

# Config fields renamed since the first checkpoints: {class name: {old name: new name}}. Old
# checkpoints and config.json files are read through it, so a rename never orphans a run.
RENAMED_FIELDS: dict[str, dict[str, str]] = {"DiffusionConfig": {}, "ModelConfig": {}}


def resume_mismatches(saved: dict[str, Any], current: dict[str, Any], mutable: frozenset[str] = frozenset()) -> list[str]:
    """'field: saved -> current' for every field that differs and may not change on resume.

    saved may come from an earlier version (read it through config_from_dict first).
    """
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in mutable:
            continue
        a, b = saved.get(key), current.get(key)
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def config_to_dict(config: DiffusionConfig | ModelConfig) -> dict[str, Any]:
    """A JSON-ready dict of a config (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type, values: dict[str, Any]):
    """Rebuild a config from config_to_dict output of this or an earlier version.

    Renamed fields are read under their new names and fields added since take their defaults;
    keys that are neither are an error naming them.
    """
    renames = RENAMED_FIELDS.get(cls.__name__, {})
    values = {renames.get(k, k): v for k, v in values.items()}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    _require(not unknown, f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(names)}.")
    return cls(**values)


# Named starting points. "seed" is the seed's 128x128 model; "demo" is tuned for minutes of 2-core CPU
# training on the built-in digits (see README: "make demo"). Since 2026-12-04 the demo is the half-width
# model with one ResNet block a level and attention in the bottleneck only (0.28M parameters), the cosine
# schedule, min-SNR weighting with gamma 20 (it spares all but the least noisy steps; gamma 5 bought
# precision with recall) and the learning rate falling linearly to 0 over 3,000 steps: over seven training
# runs and six sampling draws it ends where the linear schedule with 8x8 attention did in 4,000
# (docs/time_to_quality.md, recipe narrow-1block-eps-minsnr20-cosine-noattn-decay-3k), and that where the
# 1.68M model with a constant rate over 4,000 steps did, at ~4.4x cheaper fp32 steps.
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "seed": (
        dict(dataset_name="FFHQ", learning_rate=1e-3, batch_size=16, use_augmentation=False, timesteps_diff=200),
        dict(lowest_resolution_size=8, dim_multiply=(1, 2, 2, 4, 8), transformer_layers=(3,), base_dim=64),
    ),
    "demo": (
        dict(dataset_name="digits", learning_rate=1e-3, batch_size=64, timesteps_diff=200, max_steps=3000,
             beta_schedule="cosine", warmup_steps=200, lr_decay="linear", loss_weighting="min-snr", snr_gamma=20.0, ema_decay=0.999,
             log_every_steps=100, checkpoint_every_steps=1000, num_sample_images=64),
        # One ResNet block a level going down (two up), where the seed has 2 and 3, and attention in the
        # bottleneck only (the seed's also at 16x16; no 8x8 level attention since 2026-12-04): chosen by
        # benchmarks/time_to_quality.py (docs/time_to_quality.md), the `seed` preset keeps the seed's.
        dict(lowest_resolution_size=4, dim_multiply=(1, 2, 2), transformer_layers=(), base_dim=16,
             image_channels=1, dropout=0.0, norm_groups=4, num_res_blocks=1),
    ),
}
