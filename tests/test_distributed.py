"""torchrun with 2 CPU processes (gloo): the same step as 1 process, one writer, resume, sampling."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_cli import TINY

from ddpm.checkpoint import load_checkpoint
from ddpm.run_dir import RunDir

# All-reduce sums gradients in another order than one process does: equal to float32 rounding.
ATOL = 1e-5


def launch(*args: str, nproc: int) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, "-m", "ddpm", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "ddpm", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 processes on 2 cores: no oversubscription
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def train(out, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    return launch("train", *TINY, "--out", str(out), "--checkpoint-every-steps", "2", "--log-every-steps", "1",
                  "--num-sample-images", "0", "--no-tensorboard", "--use-augmentation", *extra, nproc=nproc)


def assert_close_states(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], atol=ATOL, rtol=1e-4, msg=f"{part}.{k}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    train(root / "one", 1, "--max-steps", "4")
    r = train(root / "two", 2, "--max-steps", "4")
    train(root / "resumed", 1, "--max-steps", "2")
    train(root / "resumed", 2, "--max-steps", "4", "--resume")
    return root, r


def test_two_processes_take_the_same_steps_as_one(runs):
    root, _ = runs
    for step in (2, 4):
        name = f"step_{step:08d}.pt"
        assert_close_states(load_checkpoint(root / "one" / "checkpoints" / name),
                            load_checkpoint(root / "two" / "checkpoints" / name))
    one, two = RunDir(root / "one").metrics(), RunDir(root / "two").metrics()
    # The logged loss is all-reduced over processes: the global batch's mean, as in one process.
    np.testing.assert_allclose([r["loss"] for r in one], [r["loss"] for r in two], rtol=1e-4)


def test_only_rank_zero_writes(runs):
    root, r = runs
    assert [p.name for p in RunDir(root / "two").checkpoints()] == ["step_00000002.pt", "step_00000004.pt"]
    assert [row["step"] for row in RunDir(root / "two").metrics()] == [1, 2, 3, 4]
    assert r.stdout.count("ddpm: checkpoint") == 1 and "x 2 processes" in r.stdout
    assert not [p for p in (root / "two" / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_resume_a_one_process_checkpoint_with_two(runs):
    root, _ = runs
    state = load_checkpoint(root / "resumed" / "checkpoints" / "step_00000004.pt")
    assert state["world_size"] == 2 and state["step"] == 4
    assert_close_states(load_checkpoint(root / "one" / "checkpoints" / "step_00000004.pt"), state)


def test_distributed_sampling_equals_single_process(runs, tmp_path):
    root, _ = runs
    common = ["sample", "--run-dir", str(root / "one"), "--num-images", "5", "--seed", "2", "--batch-size", "2"]
    launch(*common, "--out", str(tmp_path / "a.png"), "--npz", str(tmp_path / "a.npz"), nproc=1)
    r = launch(*common, "--out", str(tmp_path / "b.png"), "--npz", str(tmp_path / "b.npz"), nproc=2)
    assert r.stdout.count("sample grid") == 1
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"])
