"""Datasets: digits, image folders and their cache, CIFAR-10 and MNIST files in their real formats."""

from __future__ import annotations

import gzip
import os
import pickle
import time

import numpy as np
import pytest
import torch
from conftest import tiny_diffusion_config, tiny_model_config
from PIL import Image

import ddpm.training.trainer as trainer_module
from ddpm import train_diffusion
from ddpm.checkpoint import load_checkpoint
from ddpm.data import (
    DATASETS,
    ArrayImages,
    DatasetNotFoundError,
    TensorImages,
    load_dataset,
    random_flip,
    register,
)
from ddpm.image_files import list_images


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_digits_is_built_in_scaled_and_upscaled():
    ds = load_dataset("digits", 16, 3)
    assert len(ds) == 1797
    x = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.max() > 0.5 and x.min() < -0.9
    torch.testing.assert_close(x[0], x[2])  # grayscale replicated into RGB


@pytest.fixture
def mixed_folder(tmp_path):
    root = tmp_path / "imgs"
    wide = np.zeros((10, 30, 3), dtype=np.uint8)  # 30x10: black sides, white 10x10 centre
    wide[:, 10:20] = 255
    _save(root / "a" / "wide.png", wide)
    _save(root / "b.jpg", np.full((12, 12, 3), 128, dtype=np.uint8))
    _save(root / "gray.png", np.zeros((8, 8), dtype=np.uint8))  # mode L
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:4, ..., 3] = 255  # top half opaque red, bottom half transparent (composited onto white)
    _save(root / "c" / "d" / "rgba.png", rgba)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), "L").convert("P").save(root / "palette.gif")
    (root / "notes.txt").write_text("not an image")
    return root


def test_image_folder_formats_modes_crop_and_pad(mixed_folder):
    ds = load_dataset(f"folder:{mixed_folder}", 8, 3)
    assert isinstance(ds, ArrayImages) and len(ds) == 5
    by_name = {p.name: ds[i] for i, p in enumerate(list_images(mixed_folder))}
    assert all(x.shape == (3, 8, 8) and x.dtype == torch.float32 for x in by_name.values())
    torch.testing.assert_close(by_name["wide.png"], torch.ones(3, 8, 8))  # centre crop keeps only white
    assert by_name["gray.png"].max() == -1.0 and by_name["palette.gif"].max() == -1.0
    red = by_name["rgba.png"]
    torch.testing.assert_close(red[:, :4], torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 4, 8))
    torch.testing.assert_close(red[:, 4:], torch.ones(3, 4, 8))
    gray = load_dataset(f"folder:{mixed_folder}", 8, 1)
    assert gray[0].shape == (1, 8, 8)
    padded = load_dataset(f"folder:{mixed_folder}", 30, 3, crop="pad")
    wide = padded[[p.name for p in list_images(mixed_folder)].index("wide.png")]
    assert wide[:, :10].max() == -1.0 and wide[:, 10:20, 10:20].min() == 1.0  # black bands above and below


def test_cache_is_reused_then_rebuilt_when_the_folder_changes(mixed_folder, tmp_path):
    cache = tmp_path / "cache"
    first = load_dataset(f"folder:{mixed_folder}", 8, 3, cache_dir=str(cache))
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 1 and isinstance(first.images.base, np.memmap) or isinstance(first.images, np.memmap)
    mtime = files[0].stat().st_mtime_ns
    again = load_dataset(f"folder:{mixed_folder}", 8, 3, cache_dir=str(cache))
    assert sorted(cache.glob("*.npy")) == files and files[0].stat().st_mtime_ns == mtime  # not rewritten
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(first.images))
    _save(mixed_folder / "new.png", np.full((8, 8, 3), 255, dtype=np.uint8))
    grown = load_dataset(f"folder:{mixed_folder}", 8, 3, cache_dir=str(cache))
    assert len(grown) == 6 and len(list(cache.glob("*.npy"))) == 2
    time.sleep(0.01)
    os.utime(mixed_folder / "b.jpg")  # touched: re-cached
    load_dataset(f"folder:{mixed_folder}", 8, 3, cache_dir=str(cache))
    assert len(list(cache.glob("*.npy"))) == 3
    load_dataset(f"folder:{mixed_folder}", 16, 3, cache_dir=str(cache))  # another size: its own cache
    assert len(list(cache.glob("*.npy"))) == 4


def test_bad_files_are_listed_skipped_and_counted_once(tmp_path):
    root = tmp_path / "imgs"
    _save(root / "good.png", np.zeros((8, 8, 3), dtype=np.uint8))
    (root / "zero.png").write_bytes(b"")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    buf = (root / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(buf[: len(buf) // 2])
    with pytest.warns(UserWarning, match="3 of 4 files") as record:
        ds = load_dataset(f"folder:{root}", 8, 3)
    assert len(record) == 1
    text = str(record[0].message)
    assert "zero.png" in text and "corrupt.jpg" in text and "truncated.png" in text
    assert len(ds) == 1 and len(ds.skipped) == 3


def test_folder_of_only_bad_files_and_empty_folder_are_errors_naming_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="holds no usable images"):
        load_dataset(f"folder:{tmp_path / 'empty'}", 8, 3)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(DatasetNotFoundError, match=r"bad.*1 files could not be read"):
        load_dataset(f"folder:{tmp_path / 'bad'}", 8, 3)


def test_missing_named_datasets_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("DDPM_DATA_ROOT", raising=False)
    for name in ("FFHQ", "CIFAR10", "MNIST"):
        with pytest.raises(DatasetNotFoundError) as err:
            load_dataset(name, 32, 3, root=str(tmp_path))
        text = str(err.value)
        assert f"{name} not found" in text and str(tmp_path / name) in text
        assert "DDPM_DATA_ROOT" in text and "folder:" in text


def test_ffhq_found_through_environment_variable(tmp_path, monkeypatch):
    _save(tmp_path / "FFHQ" / "00000" / "00000.png", np.zeros((16, 16, 3), dtype=np.uint8))
    monkeypatch.setenv("DDPM_DATA_ROOT", str(tmp_path))
    assert load_dataset("ffhq", 8, 3)[0].shape == (3, 8, 8)


def test_cifar10_from_its_pickle_batches(tmp_path):
    folder = tmp_path / "CIFAR10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 256, (3, 3072), dtype=np.uint8) for _ in range(2)]
    for i, d in enumerate(data, 1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"batch_label": b"x", b"labels": [0, 1, 2], b"data": d, b"filenames": [b"a", b"b", b"c"]}, f,
                        protocol=2)
    ds = load_dataset("CIFAR10", 32, 3, root=str(tmp_path))
    assert len(ds) == 6
    # Row layout: 1024 red, then green, then blue values, each row-major 32x32.
    expected = torch.from_numpy(data[1][2].reshape(3, 32, 32).astype(np.float32)) / 127.5 - 1
    torch.testing.assert_close(ds[5], expected)
    assert load_dataset("cifar10", 16, 1, root=str(tmp_path))[0].shape == (1, 16, 16)


def test_cifar_batch_that_runs_code_is_refused(tmp_path):
    folder = tmp_path / "CIFAR10"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("CIFAR10", 32, 3, root=str(tmp_path))


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_files(tmp_path, gz):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    raw = (2051).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (3, 28, 28)) + images.tobytes()
    folder = tmp_path / "MNIST"
    folder.mkdir()
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    (folder / name).write_bytes(gzip.compress(raw) if gz else raw)
    ds = load_dataset("MNIST", 28, 1, root=str(tmp_path))
    assert len(ds) == 3
    torch.testing.assert_close(ds[2][0], torch.from_numpy(images[2].astype(np.float32)) / 127.5 - 1)
    assert load_dataset("mnist", 32, 3, root=str(tmp_path))[1].shape == (3, 32, 32)


def test_a_new_dataset_is_one_registered_function():
    @register("Ones")
    def _ones(spec):
        return TensorImages(torch.ones(4, spec.channels, spec.image_size, spec.image_size))

    try:
        assert load_dataset("ones", 8, 1)[3].shape == (1, 8, 8)
    finally:
        DATASETS.pop("ones")


def test_unknown_name_is_a_clear_error():
    with pytest.raises(DatasetNotFoundError, match="not a known dataset"):
        load_dataset("imagenet-21k", 8, 3)


def test_random_flip_is_seeded_and_flips_whole_images():
    x = torch.arange(4 * 1 * 2 * 3, dtype=torch.float32).reshape(4, 1, 2, 3)
    a = random_flip(x, torch.Generator().manual_seed(0))
    b = random_flip(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    for i in range(4):
        assert torch.equal(a[i], x[i]) or torch.equal(a[i], x[i].flip(-1))
    flips = [not torch.equal(random_flip(x, torch.Generator().manual_seed(s))[0], x[0]) for s in range(64)]
    assert 16 < sum(flips) < 48


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_path_from_the_cache_trains_like_the_in_memory_path(tmp_path, monkeypatch, workers):
    folder = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for i in range(12):
        _save(folder / f"{i:02d}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    kw = dict(dataset_name=f"folder:{folder}", batch_size=4, max_steps=3, num_sample_images=0, use_augmentation=True,
              tensorboard=False)
    mem = train_diffusion(tiny_diffusion_config(tmp_path / "mem", **kw), tiny_model_config(image_channels=3))
    monkeypatch.setattr(trainer_module, "IN_MEMORY_LIMIT_BYTES", 0)  # force the DataLoader over the memory map
    disk = train_diffusion(tiny_diffusion_config(tmp_path / "disk", num_workers=workers, **kw),
                           tiny_model_config(image_channels=3))
    a = load_checkpoint(mem / "checkpoints" / "step_00000003.pt")
    b = load_checkpoint(disk / "checkpoints" / "step_00000003.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
