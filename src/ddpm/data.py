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

from .config import CROP_MODES
from .errors import UsageError
from .image_files import (
    IMAGE_EXTENSIONS,
    cached_folder,
    list_images,
    read_cifar10,
    read_idx_images,
    read_idx_labels,
    resize_array,
    subfolder_labels,
)

DATA_ROOT_ENV = "DDPM_DATA_ROOT"
CACHE_ENV = "DDPM_CACHE"
IN_MEMORY_LIMIT_BYTES = 2 * 2**30  # uint8 datasets below this are indexed on the device directly


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for; the message says where and how to fix it."""


class Labelled:
    """What every dataset has besides its images: per-image class labels, where the data has them."""

    labels: torch.Tensor | None = None  # (N,) int64 class indices, or None for unlabelled data
    class_names: tuple[str, ...] = ()  # name of each class index

    def _set_labels(self, labels: np.ndarray | torch.Tensor | None, class_names: list[str] | tuple[str, ...]) -> None:
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.class_names = tuple(class_names)
        if self.labels is not None and len(self.labels) != len(self):
            raise ValueError(f"{len(self.labels)} labels for {len(self)} images")


class TensorImages(Dataset, Labelled):
    """Images held in memory as one (N, C, S, S) float tensor in [-1, 1]."""

    def __init__(self, images: torch.Tensor, labels=None, class_names=()) -> None:
        self.images = images
        self._set_labels(labels, class_names)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class ArrayImages(Dataset, Labelled):
    """uint8 images (N, S, S, C), in memory or memory-mapped from the cache; items are (C, S, S) floats in [-1, 1].

    Batches fetched through a DataLoader stay uint8 (a quarter of the bytes to copy) and are
    converted on the device by to_float().
    """

    def __init__(self, images: np.ndarray, skipped: list[str] | None = None, labels=None, class_names=()) -> None:
        self.images = images
        self.skipped = skipped or []
        self._set_labels(labels, class_names)

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


def collate_batch(batch):
    """DataLoader collate: ArrayImages.__getitems__ (and WithLabels') already return whole batches."""
    return batch if isinstance(batch, (torch.Tensor, tuple)) else torch.stack(batch)


class WithLabels(Dataset):
    """A labelled ArrayImages whose batches are (uint8 images, labels), for the DataLoader path."""

    def __init__(self, dataset: ArrayImages) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.__getitems__(indices), self.dataset.labels[torch.as_tensor(indices)]


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
    return TensorImages(images, load_digits().target, [str(i) for i in range(10)])


@register("digits")
def _digits(spec: DataSpec) -> Dataset:
    return load_digits_dataset(spec.image_size, spec.channels)


def image_folder(folder: Path, spec: DataSpec, what: str, fix: str, labels: str = "none") -> ArrayImages:
    """Every image under folder, decoded once into the cache; errors name the folder and the fix.

    labels="subfolders" makes each immediate subfolder a class (names sorted); "none" reads no labels.
    """
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{what} not found: no folder at {folder.resolve()}. {fix}")
    images, skipped = cached_folder(folder, spec.image_size, spec.channels, spec.crop, spec.cache,
                                    spec.decode_workers)
    if len(images) == 0:
        reason = f" ({len(skipped)} files could not be read)" if skipped else f" ({', '.join(IMAGE_EXTENSIONS)})"
        raise DatasetNotFoundError(f"{what}: the folder {folder.resolve()} holds no usable images{reason}. {fix}")
    if labels == "subfolders":
        return ArrayImages(images, skipped, *subfolder_labels(folder, list_images(folder), skipped))
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
            images, labels, names = read_cifar10(folder)
            return ArrayImages(resize_array(images, spec.image_size, spec.channels), None, labels, names)
    raise DatasetNotFoundError(f"CIFAR10 not found: no data_batch_* files in {(spec.root / 'CIFAR10').resolve()}. {fix}")


@register("mnist")
def _mnist(spec: DataSpec) -> Dataset:
    fix = _where(spec, "MNIST", "MNIST's train-images-idx3-ubyte (or .gz)")
    for folder in (spec.root / "MNIST", spec.root / "MNIST" / "raw"):
        for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "train-images.idx3-ubyte"):
            if (folder / name).is_file():
                images = resize_array(read_idx_images(folder / name), spec.image_size, spec.channels)
                labels = folder / name.replace("images", "labels").replace("idx3", "idx1")
                if not labels.is_file():  # the images alone still train an unconditional model
                    return ArrayImages(images)
                return ArrayImages(images, None, read_idx_labels(labels), [str(i) for i in range(10)])
    raise DatasetNotFoundError(f"MNIST not found: no train-images-idx3-ubyte[.gz] in {(spec.root / 'MNIST').resolve()}. {fix}")


def load_dataset(name: str, image_size: int, channels: int, root: str | None = None, crop: str = "center",
                 cache_dir: str | None = None, decode_workers: int = 0, labels: str = "none") -> Dataset:
    """The dataset called `name`, as (C, S, S) float images in [-1, 1].

    Args:
        name: "digits", "FFHQ", "CIFAR10", "MNIST" (case-insensitive) or "folder:PATH".
        image_size: S, the model's image side.
        channels: C, the model's image channels (1 or 3).
        root: folder of named datasets (None = $DDPM_DATA_ROOT or ./data).
        crop: non-square images are "center"-cropped or "pad"-ded to a square.
        cache_dir: where decoded folders are cached (None = $DDPM_CACHE/datasets or ~/.cache/ddpm/datasets).
        decode_workers: processes that decode a folder into the cache (0 = all cores).
        labels: for image folders, "subfolders" reads each immediate subfolder as a class; the
            named datasets with labels (digits, MNIST, CIFAR10) always carry theirs.
    Raises:
        DatasetNotFoundError: the files are missing; the message says where they were looked for.
    """
    if crop not in CROP_MODES:
        raise ValueError(f"crop={crop!r}; choose one of {CROP_MODES}.")
    spec = DataSpec(image_size, channels, data_root(root), crop, Path(cache_dir) if cache_dir else None, decode_workers)
    if name.startswith("folder:"):
        folder = Path(name[len("folder:"):]).expanduser()
        return image_folder(folder, spec, f"Image folder {name!r}", "Give dataset_name='folder:/path/to/a/folder/of/images'.",
                            labels)
    loader = DATASETS.get(name.lower())
    if loader is None:
        known = sorted(DATASETS) + ["folder:PATH"]
        raise DatasetNotFoundError(f"DiffusionConfig.dataset_name={name!r} is not a known dataset; choose one of {known}.")
    return loader(spec)


def class_names_of(dataset: Dataset, name: str) -> list[str]:
    """The class names of a loaded dataset (called `name` in errors), for a class-conditional model of it."""
    if dataset.labels is None:
        hint = " Add labels='subfolders' (--labels subfolders) to make each subfolder a class." \
            if name.startswith("folder:") else ""
        raise DatasetNotFoundError(f"{name!r} has no class labels, so it cannot train a class-conditional model.{hint}")
    return list(dataset.class_names)


class BatchStream:
    """Batches of dataset indices, forever: the concatenation of per-epoch permutations, cut in batches.

    Epoch e's order is torch.randperm(N) under seed (seed, e), so the whole stream is a function of
    the seed, and its position is one number: the batches consumed. Resuming from a checkpoint
    restores that number and continues with exactly the batches an uninterrupted run would see.
    With several processes, each takes its own slice of every global batch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if num_items < 1:
            raise UsageError("the dataset is empty.")
        if batch_size % world_size:
            raise UsageError(f"batch_size={batch_size} must be divisible by the number of processes ({world_size}).")
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
                raise UsageError(f"the checkpoint's data stream had {key}={state[key]}, this run has "
                                 f"{getattr(self, key)}; resume with the same dataset, batch_size and seed.")
        self.batches_consumed = int(state["batches_consumed"])


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of a (B, C, H, W) batch horizontally with probability 1/2."""
    return apply_flip(x, torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5)


def apply_flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Flip the images of a (B, C, H, W) batch horizontally where the (B,) bool mask is True."""
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
