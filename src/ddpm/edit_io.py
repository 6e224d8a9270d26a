"""Reading the images and masks `ddpm edit` works on, converted as training data is."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UsageError
from .image_files import decode_image, square


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist.")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(f"{what} {path} cannot be read as an image ({err}).") from None
    return img


def load_edit_inputs(images: Sequence[str | Path], mask: str | Path | None, image_size: int, channels: int,
                     crop: str = "center") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images (N, C, S, S) in [-1, 1], mask (1, 1, S, S) with 1 = fill, or None).

    Images of any size and mode are converted as training data is; the mask must have the size of
    the first image and goes through the same crop and resize (nearest), white (>= 128) = fill.
    """
    xs, first_size = [], None
    for p in map(Path, images):
        size = _open(p, "Image").size
        first_size = first_size or size
        pixels = decode_image(p, image_size, channels, crop).copy()  # writable: torch warns on a read-only array
        xs.append(torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1)
    m = None
    if mask is not None:
        img = _open(Path(mask), "Mask").convert("L")
        if img.size != first_size:
            raise UsageError(f"Mask {mask} is {img.size[0]}x{img.size[1]} but the image {images[0]} is "
                             f"{first_size[0]}x{first_size[1]}; draw the mask at the image's size (white = fill).")
        img = square(img, crop).resize((image_size, image_size), Image.Resampling.NEAREST)
        m = torch.from_numpy((np.asarray(img) >= 128).astype(np.float32))[None, None]
    return torch.stack(xs), m
