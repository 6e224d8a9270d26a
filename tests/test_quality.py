"""Quality during training: --eval-every rows, quality.png, --keep-best, and the wall-clock they are plotted against."""

from __future__ import annotations

import pytest
import torch
from conftest import random_png_folder, tiny_diffusion_config, tiny_model_config

from ddpm import train_diffusion
from ddpm.checkpoint import load_checkpoint
from ddpm.metrics import digits_score, train_digits_classifier
from ddpm.quality import QualityEvaluator, best_row, quality_metric
from ddpm.run_dir import RunDir


def test_evaluations_are_logged_plotted_and_the_best_checkpoint_is_kept(tmp_path, capsys):
    cfg = tiny_diffusion_config(tmp_path, max_steps=6, eval_every=3, eval_samples=16, keep_best=True,
                                num_sample_images=0, tensorboard=False, log_every_steps=3)
    run = RunDir(train_diffusion(cfg, tiny_model_config()))
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
    assert "fd_digits" in capsys.readouterr().out


def test_the_evaluator_scores_as_ddpm_eval_does():
    # The same samples give the same FD-digits through the training-time evaluator and digits_score.
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    classifier, accuracy = train_digits_classifier()
    want = digits_score(x, classifier, accuracy)
    got = QualityEvaluator("fd_digits")(x)
    assert got["fd_digits"] == pytest.approx(want.fd_digits) and got["precision"] == want.precision


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
    assert quality_metric("digits", 1) == ("fd_digits", None)
    assert quality_metric("folder:/x", 3)[0] is None
    folder = random_png_folder(tmp_path / "imgs", 12)
    cfg = tiny_diffusion_config(tmp_path, dataset_name=f"folder:{folder}", max_steps=2, eval_every=1, eval_samples=4,
                                num_sample_images=0, tensorboard=False)
    run = RunDir(train_diffusion(cfg, tiny_model_config(image_channels=3)))
    assert capsys.readouterr().out.count("quality evaluation skipped: FID needs Inception-v3 (test).") == 1
    assert not any("fid" in r for r in run.metrics()) and not run.quality_figure_path.exists()
