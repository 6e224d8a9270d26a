"""Class-conditional training and classifier-free guidance: labels from every format, the null
class at its rate, guidance's end points, resume/export, refusals, and a model that tells classes apart."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
from conftest import tiny_diffusion_config, tiny_model_config
from PIL import Image
from test_cli import TINY, ddpm

from ddpm import train_diffusion
from ddpm.checkpoint import export_ema, load_checkpoint
from ddpm.data import load_dataset
from ddpm.generation import guided, load_model, sample_images
from ddpm.run_dir import RunDir
from ddpm.samplers import image_generators, run_sampler
from ddpm.schedule import NoiseSchedule
from ddpm.training import Trainer
from ddpm.unet import UNet


def _save(path, value, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def test_labels_from_digits_mnist_and_cifar(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_dataset("digits", 8, 1)
    assert digits.labels.tolist() == load_digits().target.tolist() and digits.class_names == tuple("0123456789")
    mnist = tmp_path / "MNIST"
    mnist.mkdir()
    images = np.zeros((3, 28, 28), np.uint8)
    (mnist / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(
        (2051).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (3, 28, 28)) + images.tobytes()))
    (mnist / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(
        (2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([7, 0, 9])))
    assert load_dataset("MNIST", 28, 1, root=str(tmp_path)).labels.tolist() == [7, 0, 9]
    cifar = tmp_path / "CIFAR10" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for i in (1, 2):
        with open(cifar / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"labels": [i, 9], b"data": np.zeros((2, 3072), np.uint8)}, f, protocol=2)
    with open(cifar / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{k}".encode() for k in range(10)]}, f, protocol=2)
    ds = load_dataset("CIFAR10", 8, 3, root=str(tmp_path))
    assert ds.labels.tolist() == [1, 9, 2, 9] and ds.class_names[9] == "c9"


def test_subfolders_are_classes_only_when_asked(tmp_path):
    for name, value in (("cat", 10), ("ant", 20), ("cat", 30)):
        _save(tmp_path / "imgs" / name / f"{value}.png", value)
    plain = load_dataset(f"folder:{tmp_path / 'imgs'}", 8, 1, cache_dir=str(tmp_path / "c"))
    assert plain.labels is None  # FFHQ's numbered subfolders never become classes by accident
    ds = load_dataset(f"folder:{tmp_path / 'imgs'}", 8, 1, cache_dir=str(tmp_path / "c"), labels="subfolders")
    assert ds.class_names == ("ant", "cat") and ds.labels.tolist() == [0, 1, 1]  # files in sorted order
    _save(tmp_path / "imgs" / "loose.png", 0)
    with pytest.raises(ValueError, match="loose.png"):
        load_dataset(f"folder:{tmp_path / 'imgs'}", 8, 1, cache_dir=str(tmp_path / "c"), labels="subfolders")


def test_the_null_class_is_used_at_the_configured_rate(tmp_path):
    cfg = tiny_diffusion_config(tmp_path, batch_size=64, class_dropout=0.3)
    trainer = Trainer(cfg, tiny_model_config(num_classes=10))
    seen = []
    trainer.model.register_forward_pre_hook(lambda module, args: seen.append(args[2].clone()))
    for _ in range(20):
        trainer.train_step()
    labels = torch.cat(seen)
    assert labels.numel() == 20 * 64
    assert abs((labels == 10).double().mean().item() - 0.3) < 0.05
    assert set(labels[labels < 10].tolist()) == set(range(10))


def test_guidance_one_is_conditional_and_zero_is_unconditional():
    torch.manual_seed(0)
    model = UNet(tiny_model_config(num_classes=3)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    s = NoiseSchedule(30, 1e-3, 0.3, warn=False)
    y = torch.tensor([0, 2])
    x_T = lambda: torch.stack([torch.randn(1, 8, 8, generator=g) for g in image_generators(4, [0, 1])])  # noqa: E731
    for w, reference in ((1.0, lambda x, t: model(x, t, y)), (0.0, lambda x, t: model(x, t))):
        got = sample_images(model, s, 2, seed=4, sampler="ddim", num_steps=5, y=y, guidance_scale=w)
        want = run_sampler("ddim", reference, s, x_T(), None, num_steps=5)
        assert torch.equal(got, want), w
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 9])
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 3))
        torch.testing.assert_close(guided(model, 3.0)(x, t, y), uncond + 3 * (cond - uncond), rtol=1e-5, atol=1e-6)


def test_a_conditional_checkpoint_resumes_exports_and_refuses_unknown_classes(tmp_path):
    cfg = tiny_diffusion_config(tmp_path, max_steps=2, num_sample_images=10, tensorboard=False)
    run = train_diffusion(cfg, tiny_model_config(num_classes=10))
    assert load_checkpoint(RunDir(run).checkpoint_path(2))["class_names"] == list("0123456789")
    again = tiny_diffusion_config(tmp_path, max_steps=3, num_sample_images=0, tensorboard=False, resume=True)
    train_diffusion(again, tiny_model_config(num_classes=10))
    out = export_ema(load_checkpoint(RunDir(run).checkpoint_path(3)), tmp_path / "m.safetensors")
    loaded = load_model(checkpoint=out)
    assert loaded.class_names == list("0123456789") and loaded.class_index("7") == 7
    with pytest.raises(ValueError, match="not one of this model's 10 classes"):
        loaded.class_index("eleven")
    r = ddpm("sample", "--checkpoint", str(out), "--classes", "1,x", "--out", str(tmp_path / "g.png"))
    assert r.returncode == 2 and "'x' is not one of" in r.stderr
    unconditional = tmp_path / "u"
    assert ddpm("train", *TINY, "--max-steps", "1", "--num-sample-images", "0", "--out", str(unconditional)).returncode == 0
    r = ddpm("sample", "--run", str(unconditional), "--class", "3", "--out", str(tmp_path / "g.png"))
    assert r.returncode == 2 and "unconditional model" in r.stderr
    r = ddpm("train", *TINY, "--num-classes", "4", "--max-steps", "1", "--out", str(tmp_path / "w"))
    assert r.returncode == 2 and "has 10 classes" in r.stderr


def test_a_tiny_model_trained_on_two_classes_draws_each(tmp_path):
    # Class "dark" is all black, class "light" all white: after a short training, guided samples of
    # each class must have the class's brightness.
    for i in range(8):
        _save(tmp_path / "imgs" / "dark" / f"{i}.png", 0)
        _save(tmp_path / "imgs" / "light" / f"{i}.png", 255)
    cfg = tiny_diffusion_config(tmp_path, dataset_name=f"folder:{tmp_path / 'imgs'}", labels="subfolders",
                                max_steps=150, batch_size=16, learning_rate=3e-3, num_sample_images=0,
                                tensorboard=False, cache_dir=str(tmp_path / "cache"), ema_decay=0.9)
    run = train_diffusion(cfg, tiny_model_config(num_classes=2))
    r = ddpm("sample", "--run", str(run), "--classes", "dark,light", "--num-images", "8", "--guidance-scale", "3",
             "--sampler", "dpmpp-2m", "--sample-steps", "10", "--npz", str(tmp_path / "s.npz"),
             "--out", str(tmp_path / "g.png"))
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "s.npz") as f:
        images, labels = f["arr_0"], f["arr_1"]
    assert labels.tolist() == [0] * 4 + [1] * 4
    dark, light = images[labels == 0].mean(), images[labels == 1].mean()
    assert light > dark + 40, (dark, light)  # 102 against 161 (of 255) when written
