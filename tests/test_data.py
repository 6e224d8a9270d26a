"""Datasets: the built-in digits, image folders built on the fly, and clear errors when data is missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data import DatasetNotFoundError, load_dataset, random_flip


def test_digits_is_built_in_scaled_and_upscaled():
    ds = load_dataset("digits", 16, 3)
    assert len(ds) == 1797
    x = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.max() > 0.5 and x.min() < -0.9
    torch.testing.assert_close(x[0], x[2])  # grayscale replicated into RGB


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_mixed_formats_modes_and_centre_crop(tmp_path):
    root = tmp_path / "imgs"
    # 30x10 (W x H) image: black sides, white 10x10 centre; the centre crop keeps only white.
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, 10:20] = 255
    _save(root / "a" / "wide.png", wide)
    _save(root / "b.jpg", np.full((12, 12, 3), 128, dtype=np.uint8))
    _save(root / "gray.png", np.full((8, 8), 0, dtype=np.uint8))  # mode L
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    _save(root / "c" / "d" / "rgba.png", rgba)
    (root / "notes.txt").write_text("not an image")

    ds = load_dataset(f"folder:{root}", 8, 3)
    assert len(ds) == 4
    by_name = {p.name: ds[i] for i, p in enumerate(ds.files)}
    assert all(x.shape == (3, 8, 8) for x in by_name.values())
    torch.testing.assert_close(by_name["wide.png"], torch.ones(3, 8, 8))
    assert by_name["gray.png"].max() == -1.0
    torch.testing.assert_close(by_name["rgba.png"][0], torch.ones(8, 8))
    assert by_name["rgba.png"][1].max() == -1.0
    assert load_dataset(f"folder:{root}", 8, 1)[0].shape == (1, 8, 8)


def test_unreadable_file_is_skipped_with_a_warning(tmp_path):
    root = tmp_path / "imgs"
    _save(root / "good.png", np.zeros((8, 8, 3), dtype=np.uint8))
    (root / "bad.png").write_bytes(b"\x89PNG not really")
    ds = load_dataset(f"folder:{root}", 8, 3)
    bad = [i for i, p in enumerate(ds.files) if p.name == "bad.png"][0]
    with pytest.warns(UserWarning, match="bad.png"):
        x = ds[bad]
    assert x.shape == (3, 8, 8)


def test_missing_ffhq_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("DDPM_DATA_ROOT", raising=False)
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("FFHQ", 128, 3, root=str(tmp_path))
    text = str(err.value)
    assert "FFHQ not found" in text and str(tmp_path / "FFHQ") in text
    assert "DDPM_DATA_ROOT" in text and "folder:" in text


def test_ffhq_found_through_environment_variable(tmp_path, monkeypatch):
    _save(tmp_path / "FFHQ" / "00000" / "00000.png", np.zeros((16, 16, 3), dtype=np.uint8))
    monkeypatch.setenv("DDPM_DATA_ROOT", str(tmp_path))
    assert load_dataset("ffhq", 8, 3)[0].shape == (3, 8, 8)


def test_empty_folder_and_unknown_name_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="holds no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}", 8, 3)
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
