"""torchrun with 2 CPU processes (gloo): the same step as 1 process, one writer, resume, sampling;
and ddpm inside a process group that the caller owns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import tiny_diffusion_config, tiny_model_config
from test_cli import TINY
from test_cli import ddpm as ddpm_in_process

from ddpm.checkpoint import load_checkpoint
from ddpm.generation import generate, load_model, sample_images
from ddpm.images import to_uint8
from ddpm.run_dir import RunDir
from ddpm.training import dry_run, train_diffusion

# All-reduce sums gradients in another order than one process does: equal to float32 rounding.
ATOL = 1e-5


def launch(*args: str, nproc: int, script: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`ddpm ARGS` (or `python SCRIPT ARGS`) in 1 process, or under torchrun with nproc."""
    if nproc == 1 and script is None:  # in this process: the same code path, without ~2 s of imports
        r = ddpm_in_process(*args)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        return r
    program = [script] if script else ["-m", "ddpm"]
    if nproc == 1:
        cmd = [sys.executable, *program, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *program, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 processes on 2 cores: no oversubscription
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
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


# A user's own torchrun script: it creates the process group, calls ddpm inside it, and reports
# per rank what it got back and whether its group survived.
USER_SCRIPT = """
import json, sys
import numpy as np
import torch
import torch.distributed as dist
from ddpm import distributed
from ddpm.cli import main
from ddpm.generation import generate

run, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
code = main(["sample", "--run-dir", run, "--num-images", "5", "--seed", "2", "--batch-size", "2",
             "--out", out + "/c.png", "--npz", out + "/c.npz"])
result = generate(run, num_images=5, seed=2, batch_size=2, progress=False)
mine = distributed.shard(5, distributed.DistInfo(rank, rank, 2))
gathered = distributed.gather_to_main(torch.full((len(mine), 1), rank, dtype=torch.uint8), 5)
if result.images is not None:
    np.save(out + "/generated.npy", result.images)
report = {"code": code, "still_initialized": dist.is_initialized(), "has_images": result.images is not None,
          "gathered": None if gathered is None else gathered.flatten().tolist()}
json.dump(report, open(out + f"/rank{rank}.json", "w"))
dist.barrier()
dist.destroy_process_group()
"""


def test_a_users_torchrun_script_keeps_its_group_and_rank_zero_alone_gets_the_uint8_images(runs, tmp_path):
    root, _ = runs
    launch("sample", "--run-dir", str(root / "one"), "--num-images", "5", "--seed", "2", "--batch-size", "2",
           "--out", str(tmp_path / "a.png"), "--npz", str(tmp_path / "a.npz"), nproc=1)
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT)
    # A rank left alone in a destroyed group waits for the other: a short timeout turns that into a failure.
    launch(str(root / "one"), str(tmp_path), nproc=2, script=str(script), timeout=180)
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero["code"] == one["code"] == 0
    assert zero["still_initialized"] and one["still_initialized"]
    # Shares of 3 and 2 images, in rank order, on rank 0 only: no rank holds every image but rank 0.
    assert zero["gathered"] == [0, 0, 0, 1, 1] and one["gathered"] is None
    assert zero["has_images"] and not one["has_images"]
    single = np.load(tmp_path / "a.npz")["arr_0"]
    generated = np.load(tmp_path / "generated.npy")
    assert generated.dtype == np.uint8
    np.testing.assert_array_equal(generated, single)
    np.testing.assert_array_equal(np.load(tmp_path / "c.npz")["arr_0"], single)


@pytest.fixture
def own_group(tmp_path):
    """A process group of one that the test (the 'user') creates and destroys, not ddpm."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_ddpm_leaves_a_process_group_it_did_not_create(tmp_path, own_group):
    cfg = tiny_diffusion_config(tmp_path, max_steps=2, num_sample_images=0, tensorboard=False)
    run = train_diffusion(cfg, tiny_model_config())
    assert dist.is_initialized()
    dry_run(cfg, tiny_model_config(), steps=1)
    assert dist.is_initialized()
    result = generate(run, num_images=3, seed=1, batch_size=2, precision="fp32", progress=False)
    assert dist.is_initialized()
    # generate's images are the uint8 (N, H, W, C) quantisation of sample_images' floats.
    loaded = load_model(run)
    sampler, num_steps, clip_x0, options = loaded.resolve(None, None, None, {})
    reference = to_uint8(sample_images(loaded.model, loaded.schedule, 3, seed=1, sampler=sampler, batch_size=2,
                                       num_steps=num_steps, clip_x0=clip_x0, **options))
    assert result.images.dtype == np.uint8
    np.testing.assert_array_equal(result.images, reference)
