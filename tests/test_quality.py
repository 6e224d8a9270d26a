"""Quality during training: --eval-every rows, quality.png, --keep-best, and the wall-clock they are plotted against."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from conftest import random_png_folder, tiny_diffusion_config, tiny_model_config

from ddpm import train_diffusion
from ddpm.checkpoint import atomic_save, load_checkpoint
from ddpm.cli import main
from ddpm.images import to_uint8
from ddpm.quality import QualityEvaluator, best_row, quality_metric
from ddpm.run_dir import RunDir


def digits16(**overrides):
    """The tiny model at 16x16: the size FD-digits scores (as `ddpm eval` does)."""
    return tiny_model_config(lowest_resolution_size=8, **overrides)


def test_evaluations_are_logged_plotted_and_the_best_checkpoint_is_kept(tmp_path, capsys):
    cfg = tiny_diffusion_config(tmp_path, max_steps=6, eval_every=3, eval_samples=16, keep_best=True,
                                num_sample_images=0, tensorboard=False, log_every_steps=3)
    began = time.perf_counter()
    run = RunDir(train_diffusion(cfg, digits16()))
    wall = time.perf_counter() - began
    rows = [r for r in run.metrics() if "fd_digits" in r]
    assert [r["step"] for r in rows] == [3, 6]
    for r in rows:
        assert r["eval_samples"] == 16 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and r["fd_digits"] > 0
    assert run.quality_figure_path.is_file()
    best = best_row(rows, "fd_digits")
    assert load_checkpoint(run.best_checkpoint_path)["step"] == best["step"]
    assert run.best_checkpoint_path not in run.checkpoints()  # never pruned, never resumed from
    # Training wall-clock grows along the run and leaves the evaluations out.
    train_s = [r["train_s"] for r in run.metrics() if "loss" in r]
    assert train_s == sorted(train_s) and train_s[0] > 0
    assert train_s[-1] + sum(r["eval_s"] for r in rows) <= wall
    assert "fd_digits" in capsys.readouterr().out


def test_a_best_checkpoint_from_past_the_resume_step_is_dropped(tmp_path):
    cfg = tiny_diffusion_config(tmp_path, max_steps=4, eval_every=2, eval_samples=8, keep_best=True,
                                checkpoint_every_steps=2, keep_checkpoints=0, num_sample_images=0, tensorboard=False)
    run = RunDir(train_diffusion(cfg, digits16()))
    run.checkpoint_path(4).unlink()  # as if the run had stopped after step 2, then best.pt of step 4 was kept
    state = load_checkpoint(run.best_checkpoint_path)
    state["step"] = 4
    atomic_save(state, run.best_checkpoint_path)
    run.keep_metrics_until(2)
    again = tiny_diffusion_config(tmp_path, max_steps=3, eval_every=2, eval_samples=8, keep_best=True, resume=True,
                                  checkpoint_every_steps=2, keep_checkpoints=0, num_sample_images=0, tensorboard=False)
    train_diffusion(again, digits16())
    assert load_checkpoint(run.best_checkpoint_path)["step"] <= 3


def test_the_evaluator_scores_as_ddpm_eval_does(tmp_path, capsys):
    # The same samples give the same FD-digits, precision and recall during training and from `ddpm eval`.
    x = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = (to_uint8(x).astype(np.float32) / 127.5 - 1).transpose(0, 3, 1, 2)  # what a .npz holds
    np.savez(tmp_path / "s.npz", arr_0=to_uint8(torch.from_numpy(x)))
    assert main(["eval", str(tmp_path / "s.npz"), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    got = QualityEvaluator("fd_digits")(torch.from_numpy(x))
    digits = report["digits"]
    assert got["fd_digits"] == pytest.approx(digits["fd_digits"], rel=1e-5)
    assert got["precision"] == pytest.approx(digits["precision"]) and got["recall"] == pytest.approx(digits["recall"])


def test_wall_clock_continues_on_resume(tmp_path):
    cfg = tiny_diffusion_config(tmp_path, max_steps=4, log_every_steps=2, num_sample_images=0, tensorboard=False)
    train_diffusion(cfg, tiny_model_config())
    first = [r["train_s"] for r in RunDir(cfg.out_dir).metrics() if "loss" in r]
    again = tiny_diffusion_config(tmp_path, max_steps=6, log_every_steps=2, num_sample_images=0, tensorboard=False, resume=True)
    train_diffusion(again, tiny_model_config())
    after = [r["train_s"] for r in RunDir(cfg.out_dir).metrics() if "loss" in r]
    assert after[:2] == first and after[2] > first[-1]


def test_runs_that_cannot_be_scored_say_so_once_and_train_on(tmp_path, capsys, monkeypatch):
    import ddpm.metrics

    monkeypatch.setattr(ddpm.metrics, "inception_status", lambda: "FID needs Inception-v3 (test).")
    assert quality_metric("digits", 1, 16) == ("fd_digits", None)
    assert quality_metric("digits", 1, 8)[0] is None  # `ddpm eval` scores only 16x16 digits
    assert quality_metric("folder:/x", 3, 16)[0] is None
    with pytest.raises(ddpm.ConfigError, match="keep_best"):
        train_diffusion(tiny_diffusion_config(tmp_path, eval_every=1, keep_best=True, tensorboard=False),
                        tiny_model_config())
    folder = random_png_folder(tmp_path / "imgs", 12)
    cfg = tiny_diffusion_config(tmp_path, dataset_name=f"folder:{folder}", max_steps=2, eval_every=1, eval_samples=4,
                                num_sample_images=0, tensorboard=False)
    run = RunDir(train_diffusion(cfg, tiny_model_config(image_channels=3)))
    assert capsys.readouterr().out.count("quality evaluation skipped: FID needs Inception-v3 (test).") == 1
    assert not any("fid" in r for r in run.metrics()) and not run.quality_figure_path.exists()
