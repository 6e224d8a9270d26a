"""The README is executable: every `ddpm ...` and `python ...` command in its code blocks runs here,
as a newcomer would run it, each block in a fresh folder with an empty HOME. The blocks share one
cache that starts empty, as on a newcomer's machine (the digits classifier ships with the package
since 2026-12-04, so no command trains it).

Documented overrides keep it fast (README, "Testing the README"):
- `ddpm train` gets `--max-steps 3 --num-sample-images 4 --eval-samples 16` appended (the last flag wins);
- `ddpm sample` gets `--num-images 16` appended, `ddpm edit inpaint` `--resample 1 --num-images 2`;
- `runs/demo` is a demo-preset run trained for 2 steps, made once and copied in.
Commands that need data this machine lacks (a folder under ~ or /data) must fail with the error
the README documents, and so must commands on the run folder such a command would have made.
A command added to the README is picked up without editing this file.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
RUNNERS = ("ddpm", "python")
OVERRIDES = {"train": ["--max-steps", "3", "--num-sample-images", "4", "--eval-samples", "16"], "sample": ["--num-images", "16"],
             "inpaint": ["--resample", "1", "--num-images", "2"]}
MISSING_DATA = "not found: no folder at"  # the README's documented error for a missing dataset folder
MISSING_RUN = "No checkpoint in"  # ... and for a run folder without checkpoints


def code_blocks(language: str) -> list[str]:
    """The README's fenced code blocks in one language, in order."""
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """The ddpm/python command lines of a block (continuations joined, comments dropped), as argv."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[0] in RUNNERS:
            out.append(argv)
    return out


BLOCKS = [cmds for cmds in map(commands, code_blocks("bash")) if cmds]


def expected_failure(argv: list[str], cwd: Path) -> str | None:
    """The documented error a command must stop with here, or None if it must succeed."""
    if any(a.startswith(("folder:~", "folder:/data")) for a in argv):
        return MISSING_DATA
    for flag in ("--run", "--run-dir"):
        if flag in argv and not (cwd / argv[argv.index(flag) + 1] / "checkpoints").is_dir():
            return MISSING_RUN
    return None


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """runs/demo as `make demo` leaves it, but trained for 2 steps."""
    root = tmp_path_factory.mktemp("demo")
    r = subprocess.run([sys.executable, "-m", "ddpm", "train", "--preset", "demo", "--out", "runs/demo",
                        "--max-steps", "2", "--num-sample-images", "0"], cwd=root, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "DDPM_CACHE": str(root / "cache")})
    assert r.returncode == 0, r.stderr
    return root / "runs" / "demo"


def test_the_readme_has_the_commands_a_user_needs():
    names = {tuple(argv[:2]) for block in BLOCKS for argv in block}
    for needed in (("ddpm", "train"), ("ddpm", "sample"), ("ddpm", "eval"), ("ddpm", "export"), ("ddpm", "noise")):
        assert needed in names, needed
    assert MISSING_DATA in README and MISSING_RUN in README  # the errors the failing commands must show


@pytest.fixture(scope="module")
def newcomer_cache(tmp_path_factory) -> Path:
    """The README's cache: empty before the first block, then shared by all of them."""
    return tmp_path_factory.mktemp("newcomer-cache")


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}:" + "_".join(b[0][:2]) for i, b in enumerate(BLOCKS)])
def test_readme_commands_run_as_documented(block, demo_run, newcomer_cache, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(demo_run, work / "runs" / "demo")
    env = {**os.environ, "DDPM_CACHE": str(newcomer_cache), "HOME": str(tmp_path / "home"),
           "DDPM_DATA_ROOT": str(tmp_path / "data")}
    for argv in block:
        full = [sys.executable, "-m", "ddpm", *argv[1:]] if argv[0] == "ddpm" else [sys.executable, *argv[1:]]
        full += OVERRIDES.get(argv[2] if argv[1] == "edit" else argv[1], []) if argv[0] == "ddpm" else []
        failure = expected_failure(argv, work)
        r = subprocess.run(full, cwd=work, capture_output=True, text=True, timeout=600, env=env)
        shown = " ".join(argv)
        if failure is None:
            assert r.returncode == 0, f"{shown}\n{r.stderr[-3000:]}"
        else:
            assert r.returncode == 2 and failure in r.stderr, f"{shown} should fail with {failure!r}\n{r.stderr[-3000:]}"
            assert "Traceback" not in r.stderr, shown


def _snippet() -> str:
    (snippet,) = [b for b in code_blocks("python") if "train_diffusion(diff_config, model_config)" in b]
    return snippet


def test_the_seed_snippet_as_written_stops_without_ffhq(tmp_path):
    r = subprocess.run([sys.executable, "-c", _snippet()], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "DDPM_DATA_ROOT": str(tmp_path), "DDPM_CACHE": str(tmp_path / "cache")})
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ddpm.data.DatasetNotFoundError: FFHQ " + MISSING_DATA)
    assert str(tmp_path / "FFHQ") in last and "folder:" in last  # where it looked, and another way
    assert "site-packages/torch" not in r.stderr  # no traceback from inside PyTorch


@pytest.mark.slow
def test_the_seed_snippet_trains_on_digits(tmp_path):
    code = _snippet().replace('dataset_name = "FFHQ"', 'dataset_name = "digits", max_steps = 2, num_sample_images = 1, '
                              f'out_dir = {str(tmp_path / "run")!r}')
    assert code != _snippet()
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "DDPM_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "checkpoints" / "step_00000002.pt").is_file()
    assert (tmp_path / "run" / "samples" / "step_00000002.png").is_file()
