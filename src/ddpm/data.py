"""Datasets: the built-in digits, and local image folders (FFHQ, folder:PATH).

Every dataset yields float32 images of shape (C, S, S) in [-1, 1], with C and S the model's
image_channels and image_size. Nothing is ever downloaded: named datasets are read from a local
folder (DiffusionConfig.data_root, else $DDPM_DATA_ROOT, else ./data).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DATA_ROOT_ENV = "DDPM_DATA_ROOT"


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


class ImageFolder(Dataset):
    """Every image file under a folder, decoded with Pillow, centre-cropped square and resized."""

    def __init__(self, files: list[Path], image_size: int, channels: int) -> None:
        self.files = files
        self.image_size = image_size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        # A file that fails to decode is reported and replaced by the next one, so one bad image
        # never ends a run mid-epoch.
        for offset in range(min(len(self.files), 16)):
            path = self.files[(index + offset) % len(self.files)]
            try:
                return load_image(path, self.image_size, self.channels)
            except (OSError, ValueError) as err:
                warnings.warn(f"Skipping unreadable image {path}: {err}", stacklevel=2)
        raise OSError(f"16 consecutive images from {self.files[index]} on could not be read; check the folder.")


def load_image(path: Path, image_size: int, channels: int) -> torch.Tensor:
    """Decode one image to a (channels, image_size, image_size) float tensor in [-1, 1].

    Non-square images are centre-cropped to a square; resizing uses Lanczos (antialiased).
    """
    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if side != image_size:
            img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
        arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] != channels:  # e.g. grayscale source for an RGB model
        arr = np.repeat(arr[:, :, :1], channels, axis=2)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def list_images(folder: Path) -> list[Path]:
    """All image files under folder, recursively, in a stable (sorted) order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def data_root(configured: str | None) -> Path:
    """Where named datasets live: the config field, else $DDPM_DATA_ROOT, else ./data."""
    return Path(configured or os.environ.get(DATA_ROOT_ENV) or "data").expanduser()


def load_digits_dataset(image_size: int, channels: int) -> TensorImages:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), upscaled bilinearly to image_size."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images).float()[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 2.0 - 1.0).expand(-1, channels, -1, -1).contiguous()
    return TensorImages(images)


def _folder_dataset(folder: Path, image_size: int, channels: int, what: str, fix: str) -> ImageFolder:
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{what} not found: no folder at {folder.resolve()}. {fix}")
    files = list_images(folder)
    if not files:
        raise DatasetNotFoundError(
            f"{what}: the folder {folder.resolve()} holds no images ({', '.join(IMAGE_EXTENSIONS)}). {fix}"
        )
    return ImageFolder(files, image_size, channels)


def _ffhq(root: Path, image_size: int, channels: int) -> ImageFolder:
    fix = (
        f"Put the FFHQ images (any size, e.g. the 128x128 thumbnails; subfolders are fine) in {root.resolve() / 'FFHQ'}, "
        f"or set DiffusionConfig.data_root / ${DATA_ROOT_ENV} to the folder that holds FFHQ/, "
        "or train on any folder of images with dataset_name='folder:/path/to/images'."
    )
    return _folder_dataset(root / "FFHQ", image_size, channels, "FFHQ", fix)


DATASETS: dict[str, Callable[[Path, int, int], Dataset]] = {
    "digits": lambda root, size, ch: load_digits_dataset(size, ch),
    "ffhq": _ffhq,
}


def load_dataset(name: str, image_size: int, channels: int, root: str | None = None) -> Dataset:
    """The dataset called `name`, as (C, S, S) float images in [-1, 1].

    Args:
        name: "digits", "FFHQ" (case-insensitive) or "folder:PATH".
        image_size: S, the model's image side.
        channels: C, the model's image channels (1 or 3).
        root: folder of named datasets (None = $DDPM_DATA_ROOT or ./data).
    Raises:
        DatasetNotFoundError: the files are missing; the message says where they were looked for.
    """
    if name.startswith("folder:"):
        folder = Path(name[len("folder:"):]).expanduser()
        return _folder_dataset(folder, image_size, channels, f"Image folder {name!r}",
                               "Give dataset_name='folder:/path/to/a/folder/of/images'.")
    loader = DATASETS.get(name.lower())
    if loader is None:
        known = sorted(DATASETS) + ["folder:PATH"]
        raise DatasetNotFoundError(f"DiffusionConfig.dataset_name={name!r} is not a known dataset; choose one of {known}.")
    return loader(data_root(root), image_size, channels)


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

    @property
    def epoch(self) -> int:
        """The epoch the next batch starts in."""
        return self.batches_consumed * self.batch_size // self.num_items

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
