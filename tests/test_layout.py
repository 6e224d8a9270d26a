"""The contracts the refactor of 2026-11-29 must keep: old checkpoints load and sample as before (to float32 rounding),
format versions and renamed fields migrate, sampling-only fields may change on resume, the run
folder's paths have one owner, and concurrent cache builds do not collide."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_png_folder, tiny_diffusion_config, tiny_model_config
from safetensors.torch import save_file

import ddpm
import ddpm.checkpoint
from ddpm import DiffusionConfig, ModelConfig, train_diffusion
from ddpm.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    atomic_save,
    load_checkpoint,
    model_from_checkpoint,
)
from ddpm.cli.sample import default_grid_path
from ddpm.config import RENAMED_FIELDS, config_from_dict
from ddpm.generation import load_model, sample_images
from ddpm.image_files import cached_folder
from ddpm.run_dir import RunDir

FIXTURES = Path(__file__).parent / "fixtures"
# The settings each golden tensor was made with by the code before the refactor (make_fixture_v0.py).
GOLDEN = {"ddpm": dict(sampler="ddpm"), "ddpm_beta_tilde": dict(sampler="ddpm", variance="beta_tilde"),
          "ddim10": dict(sampler="ddim", num_steps=10), "ddim_eta1": dict(sampler="ddim", num_steps=7, eta=1.0),
          "ddpm_noclip": dict(sampler="ddpm", clip_x0=False)}


@pytest.mark.stored_reference
def test_the_version_0_checkpoint_loads_and_samples_as_before_to_float32_rounding():
    loaded = load_model(checkpoint=FIXTURES / "checkpoint_v0.pt")
    golden = torch.load(FIXTURES / "golden_samples_v0.pt", weights_only=True)
    T = loaded.schedule.num_timesteps
    assert loaded.step == 3 and T == 25
    for name, kw in GOLDEN.items():
        kw = {"variance": "beta", "clip_x0": True, **kw} if kw["sampler"] == "ddpm" else {"clip_x0": True, **kw}
        x = sample_images(loaded.model, loaded.schedule, 4, seed=5, batch_size=3, **kw)
        # The golden tensors came from another CPU, whose kernels sum in another order: each of the
        # <= T network calls and updates may round differently by a few float32 ulps (2^-23 relative)
        # of the images' scale, and with clipping (or the contracting posterior mean) those
        # differences add rather than grow. So allow 8 ulps per step of the largest value
        # (T = 25: 2.4e-5 relative; measured across CPUs: <= 1e-6, and 1e-3 of 6,230 without
        # clipping); a loader or sampler that changed would be off by whole percents. The tests' one
        # thread (conftest) sums in another order than the 2 the tensors were drawn with: <= 1.8e-7 here.
        scale = float(golden[name].abs().max().clamp(min=1.0))
        tolerance = T * 8 * 2.0**-23 * scale
        assert x.shape == golden[name].shape and x.dtype == golden[name].dtype, name
        err = float((x - golden[name]).abs().max())
        assert err <= tolerance, f"{name}: max |diff| {err:.3g} > {tolerance:.3g}"


def test_a_version_0_run_folder_resumes(tmp_path):
    state = load_checkpoint(FIXTURES / "checkpoint_v0.pt")
    assert state["format_version"] == FORMAT_VERSION  # migrated on load
    run = RunDir(tmp_path / "old")
    run.checkpoints_dir.mkdir(parents=True)
    shutil.copy(FIXTURES / "checkpoint_v0.pt", run.checkpoint_path(3))
    diff = config_from_dict(DiffusionConfig, state["diffusion_config"])
    diff.out_dir, diff.resume, diff.max_steps = str(run.path), True, 4
    diff.sample_variance = "beta_tilde"  # sampling-only: may change on resume
    train_diffusion(diff, config_from_dict(ModelConfig, state["model_config"]))
    assert load_checkpoint(run.checkpoint_path(4))["step"] == 4


def test_a_newer_format_is_refused_and_renamed_fields_are_read(tmp_path, monkeypatch):
    state = load_checkpoint(FIXTURES / "checkpoint_v0.pt")
    state["format_version"] = FORMAT_VERSION + 1
    atomic_save(state, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer than this ddpm reads"):
        load_checkpoint(tmp_path / "new.pt")
    monkeypatch.setitem(RENAMED_FIELDS, "DiffusionConfig", {"lr": "learning_rate"})
    assert config_from_dict(DiffusionConfig, {"lr": 0.5}).learning_rate == 0.5
    with pytest.raises(ddpm.ConfigError, match="unknown field"):
        config_from_dict(DiffusionConfig, {"lr2": 0.5})


def test_a_migration_may_rename_the_keys_that_loading_requires(tmp_path, monkeypatch):
    """Migrations run before the required keys are checked: here a future format 2 whose step from 1
    renames 'ema_state' and 'model_cfg' (as format 1 would have called them) to 'ema' and 'model_config'."""
    def lift_1_to_2(state: dict) -> dict:
        renames = {"ema_state": "ema", "model_cfg": "model_config"}
        return {renames.get(k, k): v for k, v in state.items()}

    monkeypatch.setattr(ddpm.checkpoint, "FORMAT_VERSION", FORMAT_VERSION + 1)
    monkeypatch.setitem(ddpm.checkpoint.MIGRATIONS, FORMAT_VERSION, lift_1_to_2)
    current = load_checkpoint(FIXTURES / "checkpoint_v0.pt")
    old = {{"ema": "ema_state", "model_config": "model_cfg"}.get(k, k): v for k, v in current.items()}
    old["format_version"] = FORMAT_VERSION
    atomic_save(old, tmp_path / "old.pt")
    state = load_checkpoint(tmp_path / "old.pt")
    assert state["format_version"] == FORMAT_VERSION + 1 and state["model_config"] == current["model_config"]
    model, *_ = model_from_checkpoint(tmp_path / "old.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, current["ema"][k]), k
    # An export of format 1 whose metadata names the config the old way.
    meta = {"model_cfg": current["model_config"], "diffusion_config": current["diffusion_config"],
            "step": current["step"], "format_version": FORMAT_VERSION}
    save_file({k: v.contiguous() for k, v in current["ema"].items()}, str(tmp_path / "old.safetensors"),
              metadata={k: json.dumps(v) for k, v in meta.items()})
    model, _, model_config, step = model_from_checkpoint(tmp_path / "old.safetensors")
    assert step == current["step"] and model_config == config_from_dict(ModelConfig, current["model_config"])


def test_sampling_only_fields_may_change_on_resume_and_others_may_not(tmp_path):
    cfg = tiny_diffusion_config(tmp_path, max_steps=2, num_sample_images=0, tensorboard=False)
    train_diffusion(cfg, tiny_model_config())
    again = tiny_diffusion_config(tmp_path, max_steps=3, num_sample_images=0, tensorboard=False, resume=True,
                                  sample_variance="beta_tilde", clip_x0=False)
    train_diffusion(again, tiny_model_config())
    bad = tiny_diffusion_config(tmp_path, max_steps=4, resume=True, learning_rate=1e-2)
    with pytest.raises(ddpm.ConfigError, match="learning_rate"):
        train_diffusion(bad, tiny_model_config())


def test_sample_grids_go_to_the_run_or_beside_the_file(tmp_path):
    run = RunDir(tmp_path / "r")
    assert default_grid_path(str(run.path), None, 3) == run.samples_dir / "sample_seed3.png"
    ckpt = run.checkpoint_path(10)
    assert default_grid_path(None, str(ckpt), 3).resolve() == (run.samples_dir / "sample_seed3.png").resolve()
    export = tmp_path / "models" / "x.safetensors"
    assert default_grid_path(None, str(export), 3) == tmp_path / "models" / "x_seed3.png"


def test_concurrent_cache_builds_of_one_folder_do_not_collide(tmp_path):
    folder = random_png_folder(tmp_path / "imgs", 40)
    results, errors = [], []

    def build():
        try:
            results.append(np.asarray(cached_folder(folder, 8, 3, "center", tmp_path / "cache", 1, False)[0]))
        except Exception as err:  # noqa: BLE001 - the test reports any failure
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(4)]  # one process: the same pid for all
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(np.array_equal(r, results[0]) for r in results) and results[0].shape == (40, 8, 8, 3)
    assert not list((tmp_path / "cache").glob(".*tmp*"))  # no temporary file left behind
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_public_api_is_declared_and_does_not_depend_on_import_order():
    import importlib
    import pkgutil
    import types

    # Importing every submodule first (as `from ddpm import load_model` imports ddpm.generation) must not
    # shadow a public name with a module of the same name.
    for info in pkgutil.walk_packages(ddpm.__path__, "ddpm."):
        if not info.name.endswith("__main__"):  # runs the CLI
            importlib.import_module(info.name)
    for name in ddpm.__all__:
        value = getattr(ddpm, name)
        assert value is not None and not isinstance(value, types.ModuleType), name
    from ddpm import generate

    assert callable(generate) and generate.__name__ == "generate"
    assert ddpm.SAMPLERS["dpmpp-2m"].default_steps == 10


def test_no_two_modules_import_each_other():
    """One direction per pair of modules (imports inside functions included): a circle means two
    concerns that should be one, or a third module both should use."""
    import ast

    root = Path(ddpm.__file__).parent
    imports: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        package = ("ddpm", *parts[:-1])
        name = ".".join(package if parts[-1] == "__init__" else (*package, parts[-1]))
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                found.add(".".join((*base, node.module)) if node.module else ".".join(base))
        imports[name] = found - {name}
    circles = sorted({tuple(sorted((a, b))) for a, deps in imports.items() for b in deps if a in imports.get(b, ())})
    assert not circles, circles
