"""Datasets: the built-in digits, image folders (FFHQ, folder:PATH), CIFAR-10 and MNIST; batch order.

Every dataset yields float32 images of shape (C, S, S) in [-1, 1], with C and S the model's
image_channels and image_size. Nothing is ever downloaded: named datasets are read from a local
folder (DiffusionConfig.data_root, else $DDPM_DATA_ROOT, else ./data):

    ./data/FFHQ/**/*.png|jpg|...                     FFHQ (any image files, any size)
    ./data/CIFAR10/cifar-10-batches-py/data_batch_*  CIFAR-10, python version
    ./data/MNIST/train-images-idx3-ubyte[.gz]        MNIST
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .image_files import (
    CROP_MODES,
    IMAGE_EXTENSIONS,
    cached_folder,
    read_cifar10,
    read_idx_images,
    resize_array,
)

DATA_ROOT_ENV = "DDPM_DATA_ROOT"
CACHE_ENV = "DDPM_CACHE"
IN_MEMORY_LIMIT_BYTES = 2 * 2**30  # uint8 datasets below this are indexed on the device directly


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for; the message says where and how to fix it."""


class TensorImages(Dataset):
    """Images held in memory as one (N, C, S, S) float tensor in [-1, 1]."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class ArrayImages(Dataset):
    """uint8 images (N, S, S, C), in memory or memory-mapped from the cache; items are (C, S, S) floats in [-1, 1].

    Batches fetched through a DataLoader stay uint8 (a quarter of the bytes to copy) and are
    converted on the device by to_float().
    """

    def __init__(self, images: np.ndarray, skipped: list[str] | None = None) -> None:
        self.images = images
        self.skipped = skipped or []

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_float(torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1))

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        """A uint8 (B, C, S, S) batch; reads sorted indices from the memory map, returns them in order."""
        idx = np.asarray(indices)
        order = np.argsort(idx)
        batch = np.empty((len(idx), *self.images.shape[1:]), np.uint8)
        batch[order] = self.images[idx[order]]
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()

    def as_tensor(self) -> torch.Tensor:
        """All images as one uint8 (N, C, S, S) tensor in memory."""
        return torch.from_numpy(np.array(self.images)).permute(0, 3, 1, 2).contiguous()


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images in 0..255 -> float32 in [-1, 1] (float input is returned as it is)."""
    return x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x


def collate_batch(batch: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """DataLoader collate: ArrayImages.__getitems__ already returns one batch tensor."""
    return batch if isinstance(batch, torch.Tensor) else torch.stack(batch)


@dataclass(frozen=True)
class DataSpec:
    """How a dataset is to be delivered: the model's size and channels, and where files live."""

    image_size: int
    channels: int
    root: Path
    crop: str = "center"  # non-square images: "center" crop or "pad" to a square
    cache_dir: Path | None = None  # None = $DDPM_CACHE/datasets or ~/.cache/ddpm/datasets
    decode_workers: int = 0  # processes decoding a folder into the cache (0 = all cores)

    @property
    def cache(self) -> Path:
        return self.cache_dir or cache_root() / "datasets"


def cache_root() -> Path:
    """The project's cache folder: $DDPM_CACHE, else ~/.cache/ddpm."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ddpm")


DATASETS: dict[str, Callable[[DataSpec], Dataset]] = {}


def register(name: str) -> Callable[[Callable[[DataSpec], Dataset]], Callable[[DataSpec], Dataset]]:
    """Register a dataset loader under a case-insensitive name: adding a dataset is one function."""

    def wrap(fn: Callable[[DataSpec], Dataset]) -> Callable[[DataSpec], Dataset]:
        DATASETS[name.lower()] = fn
        return fn

    return wrap


def data_root(configured: str | None) -> Path:
    """Where named datasets live: the config field, else $DDPM_DATA_ROOT, else ./data."""
    return Path(configured or os.environ.get(DATA_ROOT_ENV) or "data").expanduser()


def _where(spec: DataSpec, name: str, expected: str) -> str:
    return (f"Put {expected} in {(spec.root / name).resolve()}, or set DiffusionConfig.data_root / "
            f"${DATA_ROOT_ENV} to the folder that holds {name}/, or train on any folder of images with "
            "dataset_name='folder:/path/to/images'.")


def load_digits_dataset(image_size: int, channels: int) -> TensorImages:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), upscaled bilinearly to image_size."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images).float()[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 2.0 - 1.0).expand(-1, channels, -1, -1).contiguous()
    return TensorImages(images)


@register("digits")
def _digits(spec: DataSpec) -> Dataset:
    return load_digits_dataset(spec.image_size, spec.channels)


def image_folder(folder: Path, spec: DataSpec, what: str, fix: str) -> ArrayImages:
    """Every image under folder, decoded once into the cache; errors name the folder and the fix."""
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{what} not found: no folder at {folder.resolve()}. {fix}")
    images, skipped = cached_folder(folder, spec.image_size, spec.channels, spec.crop, spec.cache,
                                    spec.decode_workers)
    if len(images) == 0:
        reason = f" ({len(skipped)} files could not be read)" if skipped else f" ({', '.join(IMAGE_EXTENSIONS)})"
        raise DatasetNotFoundError(f"{what}: the folder {folder.resolve()} holds no usable images{reason}. {fix}")
    return ArrayImages(images, skipped)


@register("ffhq")
def _ffhq(spec: DataSpec) -> Dataset:
    return image_folder(spec.root / "FFHQ", spec, "FFHQ",
                        _where(spec, "FFHQ", "the FFHQ images (any size, e.g. the 128x128 thumbnails; subfolders are fine)"))


@register("cifar10")
def _cifar10(spec: DataSpec) -> Dataset:
    fix = _where(spec, "CIFAR10", "the python version of CIFAR-10 (the data_batch_1..5 files of cifar-10-batches-py)")
    for folder in (spec.root / "CIFAR10" / "cifar-10-batches-py", spec.root / "CIFAR10", spec.root / "cifar-10-batches-py"):
        if list(folder.glob("data_batch_*")):
            return ArrayImages(resize_array(read_cifar10(folder), spec.image_size, spec.channels))
    raise DatasetNotFoundError(f"CIFAR10 not found: no data_batch_* files in {(spec.root / 'CIFAR10').resolve()}. {fix}")


@register("mnist")
def _mnist(spec: DataSpec) -> Dataset:
    fix = _where(spec, "MNIST", "MNIST's train-images-idx3-ubyte (or .gz)")
    for folder in (spec.root / "MNIST", spec.root / "MNIST" / "raw"):
        for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "train-images.idx3-ubyte"):
            if (folder / name).is_file():
                return ArrayImages(resize_array(read_idx_images(folder / name), spec.image_size, spec.channels))
    raise DatasetNotFoundError(f"MNIST not found: no train-images-idx3-ubyte[.gz] in {(spec.root / 'MNIST').resolve()}. {fix}")


def load_dataset(name: str, image_size: int, channels: int, root: str | None = None, crop: str = "center",
                 cache_dir: str | None = None, decode_workers: int = 0) -> Dataset:
    """The dataset called `name`, as (C, S, S) float images in [-1, 1].

    Args:
        name: "digits", "FFHQ", "CIFAR10", "MNIST" (case-insensitive) or "folder:PATH".
        image_size: S, the model's image side.
        channels: C, the model's image channels (1 or 3).
        root: folder of named datasets (None = $DDPM_DATA_ROOT or ./data).
        crop: non-square images are "center"-cropped or "pad"-ded to a square.
        cache_dir: where decoded folders are cached (None = $DDPM_CACHE/datasets or ~/.cache/ddpm/datasets).
        decode_workers: processes that decode a folder into the cache (0 = all cores).
    Raises:
        DatasetNotFoundError: the files are missing; the message says where they were looked for.
    """
    if crop not in CROP_MODES:
        raise ValueError(f"crop={crop!r}; choose one of {CROP_MODES}.")
    spec = DataSpec(image_size, channels, data_root(root), crop, Path(cache_dir) if cache_dir else None, decode_workers)
    if name.startswith("folder:"):
        folder = Path(name[len("folder:"):]).expanduser()
        return image_folder(folder, spec, f"Image folder {name!r}", "Give dataset_name='folder:/path/to/a/folder/of/images'.")
    loader = DATASETS.get(name.lower())
    if loader is None:
        known = sorted(DATASETS) + ["folder:PATH"]
        raise DatasetNotFoundError(f"DiffusionConfig.dataset_name={name!r} is not a known dataset; choose one of {known}.")
    return loader(spec)


class BatchStream:
    """Batches of dataset indices, forever: the concatenation of per-epoch permutations, cut in batches.

    Epoch e's order is torch.randperm(N) under seed (seed, e), so the whole stream is a function of
    the seed, and its position is one number: the batches consumed. Resuming from a checkpoint
    restores that number and continues with exactly the batches an uninterrupted run would see.
    With several processes, each takes its own slice of every global batch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if num_items < 1:
            raise ValueError("the dataset is empty.")
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} must be divisible by the number of processes ({world_size}).")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_consumed = 0
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.num_items, generator=gen)
        return self._order

    def next_indices(self) -> torch.Tensor:
        """This process's indices of the next global batch, as a (batch_size / world_size,) tensor."""
        start = self.batches_consumed * self.batch_size
        chunks, pos, need = [], start, self.batch_size
        while need:
            epoch, offset = divmod(pos, self.num_items)
            take = min(need, self.num_items - offset)
            chunks.append(self._epoch_order(epoch)[offset:offset + take])
            pos, need = pos + take, need - take
        self.batches_consumed += 1
        per_rank = self.batch_size // self.world_size
        return torch.cat(chunks)[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_indices().tolist()

    def state_dict(self) -> dict[str, int]:
        return {"batches_consumed": self.batches_consumed, "seed": self.seed, "batch_size": self.batch_size,
                "num_items": self.num_items}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("seed", "batch_size", "num_items"):
            if state[key] != getattr(self, key):
                raise ValueError(f"the checkpoint's data stream had {key}={state[key]}, this run has "
                                 f"{getattr(self, key)}; resume with the same dataset, batch_size and seed.")
        self.batches_consumed = int(state["batches_consumed"])


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of a (B, C, H, W) batch horizontally with probability 1/2."""
    return apply_flip(x, torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5)


def apply_flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Flip the images of a (B, C, H, W) batch horizontally where the (B,) bool mask is True."""
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
