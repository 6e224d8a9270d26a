"""Turning tensors into files a person or an evaluator reads: grids, .npz, figures."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import UsageError
from .schedule import NoiseSchedule


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, H, W) images in [-1, 1] -> (N, H, W, C) uint8 in 0..255; an (N, H, W, C) uint8 array
    (already converted, as generate() returns images) is returned as it is."""
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return x
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid_image(images: np.ndarray, nrow: int | None = None, pad: int = 2, min_side: int = 64) -> Image.Image:
    """Tile (N, H, W, C) uint8 images into one PIL image, nearest-upscaled so tiles are >= min_side."""
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    scale = max(1, math.ceil(min_side / max(h, w)))
    H, W = h * scale, w * scale
    canvas = np.full((ncol * (H + pad) + pad, nrow * (W + pad) + pad, c), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        tile = images[k].repeat(scale, axis=0).repeat(scale, axis=1)
        canvas[pad + r * (H + pad): pad + r * (H + pad) + H, pad + q * (W + pad): pad + q * (W + pad) + W] = tile
    return Image.fromarray(canvas[:, :, 0] if c == 1 else canvas)


def save_grid(x: torch.Tensor | np.ndarray, path: str | Path, nrow: int | None = None) -> Path:
    """Save (N, C, H, W) images in [-1, 1] (or to_uint8's (N, H, W, C) uint8) as one PNG grid; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(to_uint8(x), nrow).save(path)
    return path


def save_npz(x: torch.Tensor | np.ndarray, path: str | Path, meta: dict | None = None, labels: torch.Tensor | None = None) -> Path:
    """Save images as guided-diffusion's evaluation .npz: arr_0 uint8 (N, H, W, C) in 0..255, and
    arr_1 the class asked for of each image (class-conditional samples).

    meta (how the samples were made: sampler, network calls, seed, ...) goes in as a JSON string
    under the key "meta"; evaluators that read arr_0 ignore it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if meta is None else {"meta": np.array(json.dumps(meta))}
    if labels is not None:
        extra["arr_1"] = np.asarray(labels, np.int64)
    np.savez(path, arr_0=to_uint8(x), **extra)
    return path


def read_npz_meta(path: str | Path) -> dict:
    """The "meta" a samples .npz was saved with ({} if none)."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"])) if "meta" in data.files else {}


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, img: np.ndarray) -> None:
    """Draw one (H, W, C) uint8 image on an axis without ticks."""
    ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, save at 100 dpi (creating the folder) and close a matplotlib figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


def forward_process_figure(
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    path: str | Path,
    seed: int = 0,
) -> Path:
    """The seed's figure: each row an image, each column x_t ~ q(x_t | x_0) at one t.

    Args:
        x0: (N, C, H, W) clean images in [-1, 1].
        timesteps: paper timesteps; 0 is the clean image, T the last step.
    """
    plt = pyplot()
    T = schedule.num_timesteps
    bad = [t for t in timesteps if not 0 <= t <= T]
    if bad:
        raise ValueError(f"timesteps {bad} lie outside 0..{T} (0 = the clean image, {T} = x_T).")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=gen)  # one noise draw per image, shared across columns
    n = x0.shape[0]
    fig, axes = plt.subplots(n, len(timesteps), figsize=(2.0 * len(timesteps), 2.0 * n + 0.3), squeeze=False)
    for j, t in enumerate(timesteps):
        if t == 0:
            x_t = x0
        else:  # paper step t is array index t - 1
            x_t = schedule.q_sample(x0, torch.full((n,), t - 1, dtype=torch.long), noise)
        imgs = to_uint8(x_t)
        for i in range(n):
            ax = axes[i][j]
            _show(ax, imgs[i])
            if i == 0:
                signal = 1.0 if t == 0 else float(schedule.alphas_cumprod[t - 1])
                ax.set_title(f"t = {t}\n" + r"$\bar\alpha_t$" + f" = {signal:.3f}", fontsize=9)
    fig.suptitle(f"Forward process q(x_t | x_0), T = {T}", fontsize=10)
    return save_figure(fig, path)


def loss_curve_figure(steps: Sequence[int], losses: Sequence[float], path: str | Path) -> Path:
    """Training loss against step, log-scaled, as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("noise-prediction MSE")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def save_png_folder(x: torch.Tensor | np.ndarray, folder: str | Path, first_index: int = 0) -> Path:
    """Save each image (as save_grid takes them) as FOLDER/NNNNNN.png (numbered from first_index)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(to_uint8(x)):
        Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(folder / f"{first_index + i:06d}.png")
    return folder


def load_labels(path: str | Path) -> torch.Tensor | None:
    """arr_1 of a samples .npz (the class asked for of each image), or None."""
    if Path(path).suffix != ".npz":
        return None
    with np.load(path) as f:
        return torch.from_numpy(f["arr_1"]).long() if "arr_1" in f.files else None


def load_images(path: str | Path) -> torch.Tensor:
    """Images from an .npz (arr_0: uint8 N,H,W,C) or a folder of PNGs, as (N, C, H, W) floats in [-1, 1]."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        try:
            f = np.load(path)
        except (OSError, ValueError) as err:  # not a zip, or pickled objects
            raise UsageError(f"{path} cannot be read as an .npz file ({err}).") from None
        with f:
            if "arr_0" not in f:
                raise UsageError(f"{path} has no arr_0; samples .npz files hold arr_0: uint8 (N, H, W, C).")
            arr = f["arr_0"]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise UsageError(f"{path} holds no .png files.")
        arrays = [np.asarray(Image.open(p)) for p in files]
        shapes = sorted({a.shape for a in arrays})
        if len(shapes) > 1:
            raise UsageError(f"the PNGs in {path} differ in size or mode ({shapes[0]} and {shapes[1]}); "
                             "samples to score must all have one shape.")
        arr = np.stack(arrays)
        if arr.ndim == 3:
            arr = arr[..., None]
    else:
        raise UsageError(f"{path} is neither an .npz file nor a folder of PNGs.")
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise UsageError(f"{path}: expected uint8 images of shape (N, H, W, C), got {arr.dtype} {arr.shape}.")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def trajectory_figure(frames: Sequence[tuple[int, torch.Tensor, torch.Tensor]], path: str | Path) -> Path:
    """Rows x_t and predicted x_0 of one image at a few t: frames are (paper t, x_t, x0_hat) with (C, H, W)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(frames), figsize=(1.8 * len(frames), 4.0), squeeze=False)
    for j, (t, x_t, x0) in enumerate(frames):
        for i, img in enumerate(to_uint8(torch.stack([x_t, x0]))):
            ax = axes[i][j]
            _show(ax, img)
            if i == 0:
                ax.set_title(f"t = {t:.4g}", fontsize=9)
        if j == 0:
            axes[0][0].set_ylabel("x_t")
            axes[1][0].set_ylabel("predicted x_0")
    fig.suptitle("Reverse process: x_t and the model's x_0 estimate", fontsize=10)
    return save_figure(fig, path)
