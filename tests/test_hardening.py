"""Bad numbers, a busy run folder, failed checkpoint writes and a damaged cache: each is refused or
survived with a clear message, and nothing already written is lost."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import random_png_folder, tiny_diffusion_config, tiny_model_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import TINY

import ddpm.checkpoint as checkpoint_module
from ddpm import ConfigError, DiffusionConfig, ModelConfig, train_diffusion
from ddpm.checkpoint import CheckpointWriteError, atomic_save, load_checkpoint
from ddpm.cli import main as cli_main
from ddpm.image_files import cached_folder
from ddpm.run_dir import RunDir, RunDirBusy
from ddpm.training import Trainer

# The lock ----------------------------------------------------------------------------------------


def test_a_second_trainer_on_a_folder_stops_at_once_naming_the_holder(tmp_path):
    a, b = RunDir(tmp_path / "run"), RunDir(tmp_path / "run")
    a.acquire()
    with pytest.raises(RunDirBusy, match=f"process {os.getpid()}"):
        b.acquire()
    a.release()
    b.acquire()  # free again once released
    b.release()


def test_the_lock_dies_with_its_process_and_sampling_stays_allowed(tmp_path):
    cfg = tiny_diffusion_config(tmp_path, max_steps=2, num_sample_images=0, tensorboard=False)
    train_diffusion(cfg, tiny_model_config())
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ddpm.run_dir import RunDir; "
                               "d = RunDir(sys.argv[1]); d.acquire(); print('locked', flush=True); time.sleep(120)",
                               cfg.out_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        again = tiny_diffusion_config(tmp_path, max_steps=3, num_sample_images=0, tensorboard=False, resume=True)
        with pytest.raises(RunDirBusy, match=f"process {holder.pid} on"):
            train_diffusion(again, tiny_model_config())
        assert cli_main(["sample", "--run", cfg.out_dir, "--num-images", "2", "--sampler", "ddim",
                         "--sample-steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the OS drops the lock
        holder.wait()
    train_diffusion(again, tiny_model_config())
    assert RunDir(cfg.out_dir).checkpoints()[-1].name == "step_00000003.pt"


# Failed checkpoint writes -----------------------------------------------------------------------


def _failing_fsync(after: int, code: int):
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(code, os.strerror(code))
        return real(fd)

    return fsync


@pytest.mark.parametrize(("code", "says"), [(errno.ENOSPC, "disk is full"), (errno.EACCES, "permission denied"),
                                            (errno.ENOENT, "folder was removed")])
def test_a_failed_write_says_why_and_leaves_no_temporary_file(tmp_path, monkeypatch, code, says):
    monkeypatch.setattr(checkpoint_module.os, "fsync", _failing_fsync(0, code))
    with pytest.raises(CheckpointWriteError, match=says):
        atomic_save({"x": torch.ones(3)}, tmp_path / "c.pt")
    assert list(tmp_path.iterdir()) == []


def test_training_stops_resumable_when_a_checkpoint_cannot_be_written(tmp_path, monkeypatch):
    cfg = tiny_diffusion_config(tmp_path, max_steps=6, checkpoint_every_steps=2, num_sample_images=0, tensorboard=False)
    monkeypatch.setattr(checkpoint_module.os, "fsync", _failing_fsync(1, errno.ENOSPC))  # the 2nd write fails
    with pytest.raises(CheckpointWriteError, match=r"disk is full.*stopped at step 4.*step_00000002.pt, is intact"):
        train_diffusion(cfg, tiny_model_config())
    run = RunDir(cfg.out_dir)
    assert [p.name for p in run.checkpoints()] == ["step_00000002.pt"]
    assert not [p for p in run.checkpoints_dir.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    train_diffusion(tiny_diffusion_config(tmp_path, max_steps=6, checkpoint_every_steps=2, num_sample_images=0,
                                          tensorboard=False, resume=True), tiny_model_config())
    assert load_checkpoint(run.checkpoint_path(6))["step"] == 6


def test_a_really_full_disk(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True,
                           text=True)
    if mount.returncode:  # only root may mount; the patched-ENOSPC tests above cover the same code everywhere
        pytest.skip(f"a real full disk needs a 256 KB tmpfs, and mount failed here: {mount.stderr.strip() or mount.returncode}")
    try:
        atomic_save({"x": torch.zeros(1000)}, folder / "small.pt")
        with pytest.raises(CheckpointWriteError, match="disk is full"):
            atomic_save({"x": torch.zeros(200_000)}, folder / "big.pt")
        assert sorted(p.name for p in folder.iterdir()) == ["small.pt"]
        assert torch.equal(torch.load(folder / "small.pt")["x"], torch.zeros(1000))
    finally:
        subprocess.run(["umount", str(folder)], check=False)


# The dataset cache ------------------------------------------------------------------------------


def test_a_truncated_cache_is_rebuilt_not_used(tmp_path):
    folder = random_png_folder(tmp_path / "imgs", 6)
    first = np.asarray(cached_folder(folder, 8, 3, "center", tmp_path / "cache", 1, False)[0]).copy()
    (npy,) = (tmp_path / "cache").glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:-50])
    with pytest.warns(UserWarning, match="damaged"):
        again = np.asarray(cached_folder(folder, 8, 3, "center", tmp_path / "cache", 1, False)[0])
    np.testing.assert_array_equal(again, first)


# Every bad number --------------------------------------------------------------------------------

ints = st.one_of(st.integers(-3, 300), st.sampled_from([0, 1, 2, 10**9]))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1e-4, 0.5, 1.0]))


@settings(max_examples=150, deadline=None)
@given(batch_size=ints, timesteps=ints, lr=floats, beta_start=st.one_of(st.none(), floats), ema=floats,
       warmup=ints, keep=ints, grad_clip=floats, steps=ints, dropout=floats, base=ints, low=ints,
       mults=st.lists(st.integers(-1, 4), max_size=4), attn=st.lists(st.integers(-1, 4), max_size=3),
       groups=ints, wrong=st.sampled_from([None, "x", 1.5, True, [1]]))
def test_generated_configs_are_valid_or_a_config_error(batch_size, timesteps, lr, beta_start, ema, warmup, keep,
                                                        grad_clip, steps, dropout, base, low, mults, attn, groups, wrong):
    for build in (
        lambda: DiffusionConfig(batch_size=batch_size, timesteps_diff=timesteps, learning_rate=lr, beta_start=beta_start,
                                ema_decay=ema, warmup_steps=warmup, keep_checkpoints=keep, grad_clip=grad_clip,
                                max_steps=steps, sample_steps=min(steps, 5)),
        lambda: ModelConfig(dropout=dropout, base_dim=base, lowest_resolution_size=low, dim_multiply=mults,
                            transformer_layers=attn, norm_groups=groups),
        lambda: DiffusionConfig(max_steps=wrong),
        lambda: ModelConfig(base_dim=wrong),
    ):
        try:
            build()
        except ConfigError:
            pass


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from([4, 8]), levels=st.integers(1, 3), low=st.sampled_from([1, 2]), t=st.integers(21, 60),
       batch=st.integers(1, 4), placement=st.sampled_from(["block_start", "after_conv1"]))
def test_every_valid_tiny_config_builds_and_takes_a_step(tmp_path, base, levels, low, t, batch, placement):
    mcfg = ModelConfig(lowest_resolution_size=low, dim_multiply=tuple(range(1, levels + 1)), transformer_layers=(0,),
                       base_dim=base, image_channels=1, norm_groups=base // 4 if base % 4 == 0 else 1, dropout=0.0,
                       embedding_placement=placement)
    cfg = DiffusionConfig(timesteps_diff=t, batch_size=batch, max_steps=1, precision="fp32", tensorboard=False,
                          out_dir=str(tmp_path / "run"))
    trainer = Trainer(cfg, mcfg)
    out = trainer.train_step()
    assert out["finite"] and trainer.step == 1


FLAG_VALUES = st.sampled_from(["-5", "0", "1", "2", "abc", "1.5", "1e9", "nan", "-0.1", ",", "1,,2", "1,a"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from([
    ["sample", "--run", "nowhere", "--num-images"], ["sample", "--run", "nowhere", "--sample-steps"],
    ["sample", "--run", "nowhere", "--batch-size"], ["sample", "--run", "nowhere", "--eta"],
    ["sample", "--run", "nowhere", "--seed"], ["noise", "--timesteps"], ["noise", "--num-timesteps"],
    ["noise", "--image-size"], ["train", "--dry-run", "--dim-multiply"], ["train", "--dry-run", "--batch-size"],
    ["train", "--dry-run", "--timesteps-diff"], ["train", "--dry-run", "--learning-rate"],
    ["train", "--dry-run", "--max-steps"], ["edit", "img2img", "--run", "nowhere", "--image", "a.png", "--out",
                                            "o.png", "--strength"],
]), value=FLAG_VALUES)
def test_command_lines_with_bad_numbers_end_in_a_usage_error(command, value, capsys, tmp_path):
    # Every bad value ends as exit code 2 with a one-line message, never a traceback from torch or numpy.
    # (Good values reach the next check: a missing run folder or image, or a dry run of a tiny model.)
    if command[0] == "train":
        command = ["train", *TINY, *command[1:]]
    elif command[0] == "noise":
        command = ["noise", "--out", str(tmp_path / "f.png"), *command[1:]]
    argv = [*command, value]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = cli_main(argv)
        except SystemExit as exit_:
            code = exit_.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
