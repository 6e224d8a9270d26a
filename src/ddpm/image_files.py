"""Reading images from disk: folders (decoded once into a memory-mapped cache), CIFAR-10, MNIST.

Everything here returns uint8 arrays of shape (N, S, S, C); data.py wraps them as datasets.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import socket
import tempfile
import warnings
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .errors import UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused


def list_images(folder: Path) -> list[Path]:
    """All image files under folder, recursively, in a stable (sorted) order; hidden folders skipped."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1]))


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to "L" (channels=1) or "RGB" (3); transparency is composited onto white."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def square(img: Image.Image, crop: str) -> Image.Image:
    """Centre-crop ("center") or pad with black ("pad") to a square."""
    w, h = img.size
    if w == h:
        return img
    if crop == "center":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return img.crop((left, top, left + side, top + side))
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side))
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def decode_image(path: Path, image_size: int, channels: int, crop: str = "center") -> np.ndarray:
    """One image file -> (image_size, image_size, channels) uint8, resized with Lanczos (antialiased)."""
    with Image.open(path) as img:
        img.load()
        img = square(to_mode(img, channels), crop)
        if img.size[0] != image_size:
            img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _decode_or_error(job: tuple[str, int, int, str]) -> np.ndarray | str:
    path, size, channels, crop = job
    try:
        return decode_image(Path(path), size, channels, crop)
    except Exception as err:  # truncated, zero-byte, not an image: reported, never fatal
        return f"{path}: {type(err).__name__}: {err}"


def _cache_key(folder: Path, files: list[Path], image_size: int, channels: int, crop: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, image_size, channels, crop]).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _unique_tmp(folder: Path, stem: str, suffix: str) -> Path:
    """A new empty file in folder whose name no other process or node can pick (for atomic renames)."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{stem}.{socket.gethostname()}.", suffix=f".tmp{suffix}")
    os.close(fd)
    return Path(name)


def _valid_cache(data_path: Path, meta_path: Path, shape: tuple[int, ...]) -> dict | None:
    """The cache entry's metadata if the entry is whole and is what its key says, else None.

    A truncated .npy, or one whose header does not match (a crash mid-copy, a disk error, a
    hand-edited file), is reported and decoded again rather than trained on.
    """
    if not (data_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arr = np.load(data_path, mmap_mode="r")
        ok = arr.shape == shape and arr.dtype == np.uint8 and 0 <= int(meta["count"]) <= shape[0]
    except (OSError, ValueError, KeyError, TypeError) as err:  # unreadable header, truncated data, bad JSON
        ok, arr = False, err
    if not ok:
        warnings.warn(f"The dataset cache {data_path} is damaged or does not match its folder "
                      f"({arr if isinstance(arr, Exception) else f'shape {arr.shape}, expected {shape}'}); "
                      "decoding the folder again.", stacklevel=3)
        return None
    return meta


def cached_folder(folder: Path, image_size: int, channels: int, crop: str, cache_dir: Path,
                  decode_workers: int = 0, progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Every image under folder as a (N, S, S, C) uint8 array memory-mapped from a one-time cache.

    The cache is keyed by the folder's listing, file sizes and mtimes, and by S, C and the crop
    mode: a changed folder is decoded again. Decoding streams into the file, so a folder larger
    than RAM works. Unreadable files are skipped and returned (and warned about once).

    Returns:
        (images, skipped): the memory-mapped array and "path: reason" of every skipped file.
    """
    files = list_images(folder)
    if not files:
        return np.zeros((0, image_size, image_size, channels), np.uint8), []
    key = _cache_key(folder, files, image_size, channels, crop)
    stem = f"{folder.name or 'root'}-{image_size}x{image_size}x{channels}-{crop}-{key}"
    data_path, meta_path = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    meta = _valid_cache(data_path, meta_path, (len(files), image_size, image_size, channels))
    if meta is not None:
        skipped = meta["skipped"]
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Processes on several nodes may build the same entry at once on a shared filesystem: each
        # writes under its own unique temporary names and renames atomically; the copies are equal.
        tmp = _unique_tmp(cache_dir, stem, ".npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), image_size, image_size, channels))
        jobs = [(str(p), image_size, channels, crop) for p in files]
        workers = decode_workers or os.cpu_count() or 1
        count, skipped = 0, []
        bar = tqdm(total=len(jobs), desc=f"caching {folder.name} at {image_size}px", disable=not progress, unit="img")
        with Pool(workers) if workers > 1 and len(jobs) > 256 else _Serial() as pool:
            for result in pool.imap(_decode_or_error, jobs, chunksize=64):
                if isinstance(result, str):
                    skipped.append(result)
                else:
                    out[count] = result
                    count += 1
                bar.update(1)
        bar.close()
        out.flush()
        del out
        os.replace(tmp, data_path)
        meta = {"folder": str(folder.resolve()), "count": count, "skipped": skipped, "image_size": image_size,
                "channels": channels, "crop": crop}
        tmp_meta = _unique_tmp(cache_dir, stem, ".json")
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, meta_path)  # the metadata, written last, marks the cache complete
    if skipped:
        shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"{len(skipped)} of {len(files)} files in {folder} could not be read and are skipped: {shown}",
                      stacklevel=2)
    images = np.load(data_path, mmap_mode="r")[: meta["count"]]
    return images, skipped


class _Serial:
    """A stand-in for multiprocessing.Pool that decodes in this process."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def imap(fn, jobs, chunksize: int = 1):
        return map(fn, jobs)


def resize_array(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, S, S, channels) uint8: Lanczos resize and L/RGB conversion per image."""
    n, h, w, c = images.shape
    if h == w == image_size and c == channels:
        return np.ascontiguousarray(images)
    out = np.empty((n, image_size, image_size, channels), np.uint8)
    for i in range(n):
        img = Image.fromarray(images[i, :, :, 0] if c == 1 else images[i])
        img = img.convert("L" if channels == 1 else "RGB")
        if (h, w) != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
        arr = np.asarray(img)
        out[i] = arr[:, :, None] if arr.ndim == 2 else arr
    return out


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR batches, refusing anything but numpy arrays and builtin containers."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}  # bytes in protocol-2 pickles

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def read_cifar10(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CIFAR-10's 50,000 training images (N, 32, 32, 3) uint8, their labels (N,) and the class names.

    Read from the python pickle batches; the names come from batches.meta when it is there.
    """
    batches = sorted(folder.glob("data_batch_*"))
    if not batches:
        raise FileNotFoundError(f"no data_batch_* files in {folder}")
    arrays, labels = [], []
    for path in batches:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        data = batch.get(b"data", batch.get("data"))
        arrays.append(np.asarray(data, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch.get(b"labels", batch.get("labels", [-1] * len(arrays[-1]))), np.int64))
    names = [str(i) for i in range(10)]
    meta = folder / "batches.meta"
    if meta.is_file():
        with open(meta, "rb") as f:
            info = _ArraysOnly(f, encoding="bytes").load()
        raw = info.get(b"label_names", info.get("label_names")) or names
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    return np.concatenate(arrays), np.concatenate(labels), names


def read_idx_labels(path: Path) -> np.ndarray:
    """Labels from an IDX label file (MNIST's train-labels-idx1-ubyte; gzipped or not), (N,) int64."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    magic, n = int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:8], "big")
    if magic != 2049:
        raise UsageError(f"{path} is not an IDX label file (magic {magic}, expected 2049)")
    labels = np.frombuffer(raw[8:8 + n], np.uint8)
    if labels.size != n:
        raise UsageError(f"{path} is truncated: {labels.size} of {n} labels")
    return labels.astype(np.int64)


def subfolder_labels(folder: Path, files: list[Path], skipped: list[str]) -> tuple[np.ndarray, list[str]]:
    """The class of each decoded file (files minus the skipped ones) = its immediate subfolder, names sorted.

    Files directly in folder have no class: an error names one.
    """
    bad = {s.split(": ", 1)[0] for s in skipped}
    kept = [p for p in files if str(p) not in bad]
    loose = [p for p in kept if p.parent == folder]
    if loose:
        raise UsageError(f"labels='subfolders' makes each immediate subfolder of {folder} a class, but {loose[0]} "
                         f"(and {len(loose) - 1} more) lie in the folder itself; move them into a class folder.")
    names = sorted({p.relative_to(folder).parts[0] for p in kept})
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[p.relative_to(folder).parts[0]] for p in kept], np.int64), names


def read_idx_images(path: Path) -> np.ndarray:
    """Images from an IDX file (MNIST's format; gzipped or not), (N, rows, cols, 1) uint8."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    buf = io.BytesIO(raw)
    magic = int.from_bytes(buf.read(4), "big")
    if magic != 2051:
        raise UsageError(f"{path} is not an IDX image file (magic {magic}, expected 2051)")
    n, rows, cols = (int.from_bytes(buf.read(4), "big") for _ in range(3))
    data = np.frombuffer(buf.read(n * rows * cols), np.uint8)
    if data.size != n * rows * cols:
        raise UsageError(f"{path} is truncated: {data.size} of {n * rows * cols} pixel bytes")
    return data.reshape(n, rows, cols, 1)
