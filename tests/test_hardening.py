"""Bad numbers, a busy run folder, failed checkpoint writes and a damaged cache: each is refused or
survived with a clear message, and nothing already written is lost."""

from __future__ import annotations

import errno
import math
import os
import re
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
from ddpm.config import (
    EMBEDDING_PLACEMENTS,
    LOSS_WEIGHTINGS,
    PRECISIONS,
    SAMPLE_VARIANCES,
    TIMESTEP_SAMPLINGS,
)
from ddpm.image_files import cached_folder
from ddpm.run_dir import RunDir, RunDirBusy
from ddpm.samplers import SAMPLERS
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
    if mount.returncode:  # only root may mount
        pytest.skip("a real full disk needs a 256 KB tmpfs, and mount failed here "
                    f"({mount.stderr.strip() or mount.returncode}); the patched-ENOSPC tests above cover the same "
                    "code path on every machine")
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
# Each field's documented range (its help text, so its --help), written out here independently of
# config.py: configs drawn inside every range must build, and a config with one or two fields drawn
# outside must raise a ConfigError that names one of them.

NAN_INF = st.sampled_from([math.nan, math.inf, -math.inf])
NOT_AN_INT = st.sampled_from(["3", 1.5, True, None, [1]])
NOT_A_NUMBER = st.sampled_from(["0.1", True, None, [0.1]])


def _ints(low: int, high: int = 10**9) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    """(inside, outside) for an integer field with values low .. high."""
    return st.integers(low, high), st.one_of(st.integers(-(10**9), low - 1), NOT_AN_INT)


def _floats(low: float, high: float | None = None, low_open: bool = False, high_open: bool = True):
    """(inside, outside) for a float field in [low, high) (or (low, ...]; None = no upper bound but
    finite): NaN and inf are outside."""
    inside = st.floats(low, high, exclude_min=low_open, exclude_max=high is not None and high_open,
                       allow_nan=False, allow_infinity=False)
    outside = [st.floats(max_value=low, exclude_max=not low_open, allow_infinity=False), NAN_INF, NOT_A_NUMBER]
    if high is not None:
        outside.append(st.floats(min_value=high, exclude_min=not high_open, allow_infinity=False))
    return inside, st.one_of(*outside)


def _choice(options) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    return st.sampled_from(sorted(options)), st.one_of(st.text(max_size=12).filter(lambda s: s not in options),
                                                       st.sampled_from([None, 1]))


DIFFUSION_RANGES = {
    "learning_rate": _floats(0.0, low_open=True),
    "ema_decay": _floats(0.0, 1.0),
    "grad_clip": _floats(0.0),
    "weight_decay": _floats(0.0),
    "adam_beta1": _floats(0.0, 1.0),
    "adam_beta2": _floats(0.0, 1.0),
    "snr_gamma": _floats(0.0, 1e6, low_open=True, high_open=False),
    "class_dropout": _floats(0.0, 1.0),
    "guidance_scale": _floats(0.0, 1000.0),
    "max_steps": _ints(1),
    "eval_samples": _ints(2),
    **{name: _ints(0) for name in ("warmup_steps", "log_every_steps", "checkpoint_every_steps", "sample_every_steps",
                                   "num_sample_images", "keep_checkpoints", "max_nonfinite_steps", "eval_every",
                                   "num_workers", "decode_workers")},
    "precision": _choice(PRECISIONS),
    "sampler": _choice(SAMPLERS),
    "sample_variance": _choice(SAMPLE_VARIANCES),
    "loss_weighting": _choice(LOSS_WEIGHTINGS),
    "timestep_sampling": _choice(TIMESTEP_SAMPLINGS),
    "crop_mode": _choice(("center", "pad")),
    "clip_x0": (st.booleans(), st.sampled_from([0, 1, "yes", None])),
}
# Fields whose range depends on another field: drawn together in diffusion_kwargs.
COUPLED = ("batch_size", "timesteps_diff", "beta_start", "beta_end", "sample_steps", "batch_per_device")


@st.composite
def diffusion_kwargs(draw, broken: frozenset[str]) -> dict:
    """DiffusionConfig arguments, each field inside its range except those in `broken`."""
    kw = {name: draw(DIFFUSION_RANGES[name][name in broken]) for name in DIFFUSION_RANGES}
    bad_int = st.one_of(st.integers(-(10**9), 0), NOT_AN_INT)
    # batch_per_device divides batch_size; 0 = batch_size at once.
    per_device, batches = draw(st.integers(0, 10**4)), draw(st.integers(1, 10**4))
    kw["batch_size"] = draw(bad_int) if "batch_size" in broken else max(per_device, 1) * batches
    kw["batch_per_device"] = (draw(st.one_of(st.integers(-(10**9), -1), NOT_AN_INT,
                                             st.integers(kw["batch_size"] + 1, 2 * kw["batch_size"] + 1)))
                              if "batch_per_device" in broken and type(kw["batch_size"]) is int and kw["batch_size"] > 0
                              else per_device)
    # The linear schedule: 0 < beta_start <= beta_end < 1; unset, they scale as 1e-4 and 0.02 * 1000 / T,
    # which keeps beta_end below 1 from T = 21.
    t = draw(st.integers(21, 10**5)) if "timesteps_diff" not in broken else draw(st.one_of(st.integers(-5, 1), NOT_AN_INT))
    kw["timesteps_diff"] = t
    betas = sorted(draw(st.lists(st.floats(0.0, 1.0, exclude_min=True, exclude_max=True), min_size=2, max_size=2)))
    kw["beta_start"], kw["beta_end"] = draw(st.sampled_from([(None, None), tuple(betas)]))
    bad_beta = st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(math.nan), NOT_A_NUMBER.filter(bool))
    for name in ("beta_start", "beta_end"):
        if name in broken:
            kw[name] = draw(bad_beta)
    steps_above = st.integers(t + 1, t + 1000) if type(t) is int and t >= 2 else st.integers(-5, -1)
    kw["sample_steps"] = (draw(st.one_of(st.integers(-(10**9), -1), steps_above, NOT_AN_INT)) if "sample_steps" in broken
                          else draw(st.integers(0, max(t, 0) if type(t) is int else 0)))
    return kw


MODEL_RANGES = {
    "lowest_resolution_size": _ints(1),
    "image_channels": _ints(1),
    "num_res_blocks": _ints(1, 8),
    "num_classes": _ints(0),
    "dropout": _floats(0.0, 1.0),
    "embedding_placement": _choice(EMBEDDING_PLACEMENTS),
    "norm_eps": _floats(0.0, 1.0, low_open=True),
    "downsample_padding": (st.sampled_from([0, 1]), st.one_of(st.integers(-5, -1), st.integers(2, 5), NOT_AN_INT)),
    "embedding_freq_shift": (st.sampled_from([0, 1]), st.one_of(st.integers(-5, -1), st.integers(2, 5), NOT_AN_INT)),
    "embedding_flip_sin_to_cos": (st.booleans(), st.sampled_from([0, 1, "yes", None])),
}
MODEL_COUPLED = ("dim_multiply", "transformer_layers", "base_dim", "norm_groups", "attention_heads")


@st.composite
def model_kwargs(draw, broken: frozenset[str]) -> dict:
    """ModelConfig arguments, each field inside its range except those in `broken`."""
    kw = {name: draw(MODEL_RANGES[name][name in broken]) for name in MODEL_RANGES}
    # Every level's width base_dim * m must divide into norm_groups groups and attention_heads heads.
    mults = draw(st.lists(st.integers(1, 8), min_size=1, max_size=5))
    groups, heads, k = draw(st.integers(1, 32)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    base = groups * heads * k
    widest = base * max(mults)
    kw["dim_multiply"] = (draw(st.one_of(st.just([]), st.lists(st.integers(-3, 0), min_size=1, max_size=3).map(lambda b: mults + b),
                                         st.sampled_from(["1,2", [1.5], [True]])))
                          if "dim_multiply" in broken else mults)
    kw["transformer_layers"] = draw(st.lists(st.integers(0, len(mults) - 1), max_size=3))
    if "transformer_layers" in broken:
        kw["transformer_layers"] = [*kw["transformer_layers"], draw(st.sampled_from([-1, len(mults), len(mults) + 5]))]
    kw["base_dim"] = draw(st.one_of(st.integers(-50, 0), NOT_AN_INT)) if "base_dim" in broken else base
    kw["norm_groups"] = draw(st.one_of(st.integers(-5, 0), st.just(widest + 1), NOT_AN_INT)) if "norm_groups" in broken else groups
    kw["attention_heads"] = draw(st.one_of(st.integers(-5, 0), st.just(widest + 1), NOT_AN_INT)) if "attention_heads" in broken else heads
    return kw


def _build_or_name(cls, fields, coupled, kwargs_strategy, data):
    names = st.sampled_from(sorted([*fields, *coupled]))
    broken = data.draw(st.one_of(st.just(frozenset()), st.frozensets(names, min_size=1, max_size=2)), label="broken")
    kwargs = data.draw(kwargs_strategy(broken), label="kwargs")
    if not broken:
        cls(**kwargs)  # inside every documented range: must build
        return
    with pytest.raises(ConfigError) as refused:
        cls(**kwargs)
    named = [name for name in broken if re.search(rf"\b{name}\b", str(refused.value))]
    assert named, (sorted(broken), str(refused.value))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_diffusion_configs_inside_the_documented_ranges_build_and_others_name_the_field(data):
    _build_or_name(DiffusionConfig, DIFFUSION_RANGES, COUPLED, diffusion_kwargs, data)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_model_configs_inside_the_documented_ranges_build_and_others_name_the_field(data):
    _build_or_name(ModelConfig, MODEL_RANGES, MODEL_COUPLED, model_kwargs, data)


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


# Each flag's range, as its --help states it: (command line before the flag, flag, kind, low, high);
# kind "int", "float" (finite; low excluded for --learning-rate) or "ints" (a comma list, every item in range).
FLAG_RANGES = [
    (["sample", "--run", "nowhere"], "--num-images", "int", 1, None),
    (["sample", "--run", "nowhere"], "--sample-steps", "int", 1, None),
    (["sample", "--run", "nowhere"], "--batch-size", "int", 1, None),
    (["sample", "--run", "nowhere"], "--seed", "int", 0, None),
    (["sample", "--run", "nowhere"], "--eta", "float", 0, None),
    (["noise"], "--timesteps", "ints", 0, 200),
    (["noise"], "--num-timesteps", "int", 2, None),
    (["noise"], "--image-size", "int", 1, 4096),
    (["train"], "--dim-multiply", "ints", 1, None),
    (["train"], "--batch-size", "int", 1, None),
    (["train"], "--timesteps-diff", "int", 21, None),  # the scaled default betas need T >= 21
    (["train"], "--learning-rate", "float", 0, None),
    (["train"], "--max-steps", "int", 1, None),
    (["edit", "img2img", "--run", "nowhere", "--image", "a.png", "--out", "o.png"], "--strength", "float", 0, 1),
]
SOME_VALUES = st.one_of(
    st.sampled_from(["abc", "1.5", "0.5", "1e9", "1e-3", "nan", "inf", "-inf", "-0.1", "", " 3", ",", "1,,2", "1,a",
                     "[1,2]", "0,66,200"]),
    st.integers(-3, 30).map(str), st.floats().map(repr))


def _in_range(text: str, kind: str, low: float, high: float | None, flag: str) -> bool:
    """Whether `text` is a value the flag's help allows (Python's int() and float() read the numbers)."""
    def allowed(item: str) -> bool:
        try:
            value = int(item) if kind in ("int", "ints") else float(item)
        except ValueError:
            return False
        above_low = low < value if flag == "--learning-rate" else low <= value
        return math.isfinite(value) and above_low and (high is None or value <= high)

    if kind != "ints":
        return allowed(text)
    body = text.strip().strip("[]()")
    return bool(body) and all(allowed(item) for item in body.split(","))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case_and_value=st.sampled_from(FLAG_RANGES).flatmap(
    lambda case: st.tuples(st.just(case), st.one_of(SOME_VALUES, st.sampled_from(
        [str(case[3] - 1), str(case[3])] + ([str(case[4] + 1)] if case[4] is not None else []))))))
def test_command_lines_with_bad_numbers_end_in_one_line_naming_the_flag(case_and_value, capsys, tmp_path):
    # A value outside the flag's range: exit code 2 and one error line that names the flag (after
    # argparse's usage synopsis, if the parser caught it). A value inside it gets past every check of
    # that value: the figure is drawn, or the next check fails in one line (no such run, image folder).
    # In-process, so any exception but SystemExit fails the test with its traceback.
    (prefix, flag, kind, low, high), value = case_and_value
    if prefix[0] == "train":  # both configs are checked before the missing folder is
        prefix = ["train", *TINY, "--dataset", f"folder:{tmp_path / 'none'}", "--out", str(tmp_path / "run")]
    elif prefix[0] == "noise":
        prefix = ["noise", "--out", str(tmp_path / "f.png"), "--num-images", "1", "--image-size", "8"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = cli_main([*prefix, flag, value])
        except SystemExit as exit_:
            code = exit_.code
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if re.match(r"ddpm [a-z0-9 ]+: error: ", line)]
    if _in_range(value, kind, low, high, flag):
        assert (code, errors) == (0, []) or (code == 2 and lines == errors and len(errors) == 1), (flag, value, code, lines)
        assert not re.search(rf"argument {flag}\b", "\n".join(errors)), (flag, value, errors)
        return
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], (flag, value, code, lines)
    assert all(line.startswith(("usage: ", " ")) for line in lines[:-1]), lines  # argparse's synopsis, if any
    names = [rf"{flag}(?![\w-])"] + ([rf"\b{flag[2:].replace('-', '_')}\b"] if prefix[0] == "train" else [])
    assert any(re.search(name, errors[0]) for name in names), (flag, value, errors[0])
