"""Shared fixtures: tiny configs that train and sample in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import DiffusionConfig, ModelConfig

# One torch thread, here and in every subprocess: tiny models gain nothing from intra-op threads, and
# beside other jobs on a 2-core machine two spinning OpenMP threads per process made tests up to 40x
# slower (test_inpainting_keeps_the_known_pixels_exactly[3]: 69 s with 2 threads, 1.7 s with 1).
# Set here, not in a fixture, so that module-scoped fixtures' subprocesses have it too.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _seed_and_private_cache(tmp_path_factory, monkeypatch):
    """Seed torch, and keep dataset caches and the digits classifier out of the user's ~/.cache."""
    torch.manual_seed(0)
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path_factory.getbasetemp() / "ddpm-cache"))
    yield


def tiny_model_config(**overrides) -> ModelConfig:
    """8x8 images, two levels, 8 channels: a forward pass takes milliseconds."""
    values = dict(lowest_resolution_size=4, dim_multiply=(1, 2), transformer_layers=(0,), base_dim=8,
                  image_channels=1, norm_groups=4, dropout=0.0)
    values.update(overrides)
    return ModelConfig(**values)


def tiny_diffusion_config(tmp_path, **overrides) -> DiffusionConfig:
    values = dict(dataset_name="digits", batch_size=16, timesteps_diff=40, max_steps=10, warmup_steps=2,
                  log_every_steps=5, checkpoint_every_steps=0, num_sample_images=4, out_dir=str(tmp_path / "run"),
                  precision="fp32", learning_rate=2e-3)
    values.update(overrides)
    return DiffusionConfig(**values)


def random_png_folder(folder: Path, count: int, shape: tuple[int, ...] = (8, 8, 3)) -> Path:
    """A new folder of `count` random-pixel PNGs of shape (H, W, C), named 00.png, 01.png, ..."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder
