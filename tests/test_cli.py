"""The command line and the seed's snippet, run as a user would: in this process through
`ddpm.cli.main` (what the `ddpm` script calls), and in real subprocesses where the process is the
point (`python -m ddpm --help`, Ctrl-C)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm.checkpoint import load_checkpoint
from ddpm.images import read_npz_meta
from ddpm.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--lowest-resolution-size", "4", "--dim-multiply", "1,2", "--transformer-layers", "0",
        "--base-dim", "8", "--norm-groups", "4", "--image-channels", "1", "--timesteps-diff", "40",
        "--batch-size", "16", "--precision", "fp32"]


def ddpm(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`ddpm ARGS` run in this process: the exit code, stdout and stderr a user would see.

    argparse's exits become the exit code; any other exception propagates, so a crash fails the test
    with its traceback (a subprocess would have printed it to stderr). Warnings are printed to stderr
    under Python's default filters, as in a new process. Saves ~2 s of imports a call.
    """
    from ddpm.cli import main

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    out, err = io.StringIO(), io.StringIO()
    old_cwd, old_env = Path.cwd(), dict(os.environ)
    try:
        os.chdir(cwd or old_cwd)
        os.environ.update(env or {})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = show
            try:
                code = main(list(args))
            except SystemExit as exit_:
                code = exit_.code
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
    return subprocess.CompletedProcess(["ddpm", *args], code, out.getvalue(), err.getvalue())


def test_train_sample_noise_end_to_end(tmp_path):
    run = tmp_path / "run"
    r = ddpm("train", *TINY, "--max-steps", "8", "--log-every-steps", "4", "--num-sample-images", "4", "--out", str(run))
    assert r.returncode == 0, r.stderr
    assert f"sample grid {run / 'samples' / 'step_00000008.png'}" in r.stdout
    assert "parameters" in r.stdout

    r = ddpm("sample", "--run", str(run), "--num-images", "6", "--seed", "3", "--out", str(tmp_path / "g.png"),
             "--npz", str(tmp_path / "s.npz"))
    assert r.returncode == 0, r.stderr
    arr = np.load(tmp_path / "s.npz")["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (6, 8, 8, 1)
    assert Image.open(tmp_path / "g.png").size[0] > 0
    # The same seed reproduces the same images, through the DDIM path too.
    r2 = ddpm("sample", "--checkpoint", str(RunDir(run).checkpoints()[-1]), "--num-images", "6", "--seed", "3",
              "--batch-size", "4", "--out", str(tmp_path / "g2.png"), "--npz", str(tmp_path / "s2.npz"))
    assert r2.returncode == 0, r2.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "s2.npz")["arr_0"], arr)
    r3 = ddpm("sample", "--run", str(run), "--sampler", "ddim", "--sample-steps", "5", "--num-images", "3",
              "--out", str(tmp_path / "g3.png"), "--png-dir", str(tmp_path / "pngs"), "--trajectory",
              str(tmp_path / "traj.png"))
    assert r3.returncode == 0, r3.stderr
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert Image.open(tmp_path / "traj.png").size[0] > 200

    r = ddpm("noise", "--dataset", "digits", "--timesteps", "0,66,132,200", "--out", str(tmp_path / "fwd.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "fwd.png").size[0] > 300


def test_bad_cli_input_is_one_clear_line(tmp_path):
    r = ddpm("train", *TINY, "--transformer-layers", "7", "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert "transformer_layers" in r.stderr and "Traceback" not in r.stderr
    r = ddpm("sample", "--run", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "No checkpoint" in r.stderr


def test_few_step_samplers_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    assert ddpm("train", *TINY, "--max-steps", "2", "--num-sample-images", "0", "--out", str(run)).returncode == 0
    r = ddpm("sample", "--run", str(run), "--sampler", "dpmpp-2m", "--sample-steps", "7", "--num-images", "3",
             "--out", str(tmp_path / "g.png"), "--npz", str(tmp_path / "s.npz"), "--trajectory", str(tmp_path / "t.png"))
    assert r.returncode == 0, r.stderr
    assert "with dpmpp-2m, 7 network calls" in r.stdout
    meta = read_npz_meta(tmp_path / "s.npz")
    assert meta["network_calls"] == 7 and meta["sampler"] == "dpmpp-2m" and len(meta["timesteps"]) == 7
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (3, 8, 8, 1)
    r = ddpm("sample", "--run", str(run), "--sampler", "ddpm", "--sample-steps", "5", "--num-images", "2",
             "--out", str(tmp_path / "g2.png"))
    assert r.returncode == 0 and "with ddpm, 5 network calls" in r.stdout, r.stderr
    # The menu: Heun counts two calls a step but the last; fractional (Karras) timesteps go to the .npz.
    r = ddpm("sample", "--run", str(run), "--sampler", "heun", "--sigmas", "karras", "--sample-steps", "8",
             "--s-churn", "1", "--num-images", "2", "--out", str(tmp_path / "h.png"), "--npz", str(tmp_path / "h.npz"))
    assert r.returncode == 0 and "with heun, 7 network calls" in r.stdout, r.stderr
    meta = read_npz_meta(tmp_path / "h.npz")
    assert meta["network_calls"] == 7 and len(meta["timesteps"]) == 4 and meta["timesteps"][0] == 39
    assert any(t != int(t) for t in meta["timesteps"])
    r = ddpm("sample", "--run", str(run), "--sampler", "unipc", "--order", "3", "--spacing", "exponential",
             "--num-images", "2", "--out", str(tmp_path / "u.png"))
    assert r.returncode == 0 and "with unipc, 10 network calls" in r.stdout, r.stderr
    for bad, message in ((["--sampler", "dpmpp-2m", "--eta", "0.5"], "takes no ['eta']"),
                         (["--sampler", "dpmpp-2m", "--s-churn", "1"], "takes no ['s_churn']"),
                         (["--sampler", "unipc", "--order", "4"], "--order: 4 is out of range"),
                         (["--sample-steps", "0"], "--sample-steps: 0 is out of range: it must be at least 1"),
                         (["--sample-steps", "41"], "sample steps=41 must lie in 1 .. 40")):
        r = ddpm("sample", "--run", str(run), "--num-images", "2", "--out", str(tmp_path / "x.png"), *bad)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)


def test_help_is_the_manual():
    r = subprocess.run([sys.executable, "-m", "ddpm", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ddpm train --preset demo" in r.stdout, r.stderr  # the installed entry point
    for sub in (["train"], ["sample"], ["edit"], ["noise"], ["export"], ["eval"]):
        r = ddpm(*sub, "--help")
        assert r.returncode == 0 and r.stdout.startswith(f"usage: ddpm {sub[0]}"), sub
    r = ddpm("train", "--help")
    for flag in ("--dataset", "--learning-rate", "--timesteps-diff", "--dim-multiply", "--embedding-placement", "--preset",
                 "--sampler", "--decode-workers"):
        assert flag in r.stdout
    assert "side of the bottleneck feature map" in r.stdout  # help text from the field's metadata
    r = ddpm("sample", "--help")
    for name in ("dpmpp-2m-sde", "--sample-steps", "--spacing", "logsnr", "--sigmas", "karras", "heun", "unipc",
                 "--s-churn", "--lower-order-final"):
        assert name in r.stdout


def test_a_bad_list_item_is_named_with_its_flag(tmp_path):
    r = ddpm("train", *TINY, "--dim-multiply", "1,2,a", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--dim-multiply" in r.stderr and "'a'" in r.stderr and "Traceback" not in r.stderr


def test_sigint_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ddpm", "train", *TINY, "--max-steps", "100000",
                             "--log-every-steps", "2", "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").is_file() or \
            (run / "metrics.jsonl").is_file() and not (run / "metrics.jsonl").read_text():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    ckpts = RunDir(run).checkpoints()
    assert len(ckpts) == 1
    state = load_checkpoint(ckpts[-1])
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 2 <= state["step"] < 100000 and state["step"] >= logged[-1]
    assert "stopped at step" in out


@pytest.mark.parametrize("script", sorted(p.stem for p in (Path(__file__).parents[1] / "benchmarks").glob("*.py")))
def test_benchmark_scripts_import_and_explain_themselves(script, monkeypatch):
    # The benchmarks are run by hand (and on lent GPUs): at least their imports and --help must
    # keep working as the package changes under them.
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    module = importlib.import_module(script)
    assert module.__doc__ and callable(module.main)
    monkeypatch.setattr(sys, "argv", [module.__file__, "--help"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0 and "usage:" in out.getvalue(), out.getvalue()


def test_demo_preset_is_the_recipe_the_time_to_quality_benchmark_chose(monkeypatch):
    # The README's demo quality numbers are the benchmark's runs of DEMO_RECIPE: the preset must train exactly
    # that. And TODAY (the 2020 demo every recipe builds on) must spell out every training field the preset
    # sets, so that a changed preset cannot change an old recipe: without the preset it gives the same run.
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import time_to_quality as ttq

    from ddpm.cli import build_parser
    from ddpm.cli.args import configs_from_args
    from ddpm.config import RESUME_MUTABLE_FIELDS, config_to_dict, resume_mismatches

    def configs(*flags):
        return configs_from_args(build_parser().parse_args(["train", *flags]))

    assert configs("--preset", "demo") == configs("--preset", "demo", *ttq.TODAY, *ttq.RECIPES[ttq.DEMO_RECIPE])
    with_preset, without = configs("--preset", "demo", *ttq.TODAY), configs("--dataset", "digits", *ttq.TODAY)
    assert resume_mismatches(config_to_dict(without[0]), config_to_dict(with_preset[0]), RESUME_MUTABLE_FIELDS) == []
    assert resume_mismatches(config_to_dict(without[1]), config_to_dict(with_preset[1])) == []
    assert (without[0].beta_schedule, without[0].max_steps, without[1].base_dim) == ("linear", 4000, 32)


def test_compare_draws_averages_draws_then_checkpoints_and_refuses_conflicting_scores(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import compare_draws

    def row(p, r, fd, seed):
        return {"precision": p, "recall": r, "fd_digits": fd, "kd_digits": 0.0, "n": 2000, "seed": seed}

    draws = {7: {"a-s0@9": row(0.80, 0.90, 4.0, 7), "a-s1@9": row(0.84, 0.92, 6.0, 7), "b-s0@9": row(0.70, 0.95, 3.0, 7),
                 "b-s1@9": row(0.74, 0.93, 5.0, 7), "real held-out": {"precision": 0.9, "recall": 0.9, "fd_digits": 6.0}},
             8: {"a-s0@9": row(0.82, 0.94, 2.0, 8), "a-s1@9": row(0.86, 0.92, 8.0, 8)}}
    for seed, rows in draws.items():
        (tmp_path / f"seed{seed}.json").write_text(json.dumps(rows))
    files = [str(tmp_path / "seed7.json"), str(tmp_path / "seed8.json")]
    monkeypatch.setattr(sys, "argv", ["compare_draws", *files, "--group", "a=a-*", "--group", "b=b-s?@9"])
    compare_draws.main()
    out = capsys.readouterr().out
    # a: checkpoint means over draws (0.81, 0.85) -> 0.830, s.e. = stdev / sqrt(2) = 0.02; b: 0.720 +- 0.02.
    assert "| a-s0@9 | 2 | 0.810 | 0.920 | 3.00 |" in out and "| b-s1@9 | 1 | 0.740 | 0.930 | 5.00 |" in out
    assert "| a | 2 | 0.830 +- 0.020 | 0.920 +- 0.000 | 5.00 +- 2.00 |" in out
    assert "| b minus a | | -0.110 +- 0.028 | +0.020 +- 0.010 | -1.00 +- 2.24 |" in out
    draws[8]["a-s0@9"]["recall"] = 0.5
    (tmp_path / "other.json").write_text(json.dumps(draws[8]))
    monkeypatch.setattr(sys, "argv", ["compare_draws", *files, str(tmp_path / "other.json"), "--group", "a=a-*"])
    with pytest.raises(SystemExit, match="a-s0@9 at sampling seed 8 scores differently"):
        compare_draws.main()


def test_a_user_error_is_one_line_and_a_bug_shows_its_traceback(tmp_path, capsys, monkeypatch):
    from conftest import tiny_diffusion_config, tiny_model_config

    import ddpm.generation
    import ddpm.images
    from ddpm import train_diffusion
    from ddpm.cli import main

    run = str(train_diffusion(tiny_diffusion_config(tmp_path, max_steps=1, num_sample_images=0, tensorboard=False),
                              tiny_model_config()))
    capsys.readouterr()  # the training's progress
    np.savez(tmp_path / "no_arr0.npz", images=np.zeros((2, 8, 8, 1), np.uint8))
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    sample = ["sample", "--run", run, "--num-images", "2", "--out", str(tmp_path / "g.png")]
    for argv, message in (
        ([*sample, "--class", "3"], "unconditional model"),  # LoadedModel.class_index
        ([*sample, "--sample-steps", "41"], "sample steps=41 must lie in 1 .. 40"),  # timestep_list
        ([*sample, "--sampler", "dpmpp-2m", "--eta", "0.5"], "takes no ['eta']"),  # run_sampler's options
        ([*sample, "--guidance-scale", "2"], "give --class or --classes"),
        (["eval", str(tmp_path / "no_arr0.npz")], "has no arr_0"),
        (["eval", str(tmp_path / "garbage.npz")], "cannot be read as an .npz file"),
        (["edit", "img2img", "--run", run, "--image", str(tmp_path / "none.png"), "--strength", "0.5",
          "--out", str(tmp_path / "e.png")], "does not exist"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"ddpm {argv[0]}: error: ") and message in err and err.count("\n") == 1, (argv, err)

    def bug(*args, **kwargs):
        raise ValueError("an injected bug")

    # A ValueError that is not a user error is ours: it must reach the user with its traceback.
    monkeypatch.setattr(ddpm.generation, "sample_images", bug)
    with pytest.raises(ValueError, match="injected bug"):
        main(sample)
    monkeypatch.setattr(ddpm.images, "load_images", bug)
    with pytest.raises(ValueError, match="injected bug"):
        main(["eval", str(tmp_path / "no_arr0.npz")])


def test_train_without_a_preset_or_dataset_is_refused(tmp_path, capsys, monkeypatch):
    # The dataclass defaults are the seed's 128x128 model, 800k steps: on the default 8x8 digits that
    # is never what a user meant. The Python API (train_diffusion(DiffusionConfig(), ...)) is unchanged.
    import ddpm.training
    from ddpm.cli import main

    started = []
    monkeypatch.setattr(ddpm.training, "train_diffusion", lambda d, m, **kw: started.append((d, m)))
    monkeypatch.setattr(ddpm.training, "dry_run", lambda d, m, **kw: started.append((d, m)) or {})
    for extra in ([], ["--dry-run"], ["--max-steps", "10", "--learning-rate", "1e-4"]):
        assert main(["train", "--out", str(tmp_path / "run"), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(word in err for word in ("--preset demo", "--preset seed", "--dataset")), err
    assert started == [] and not (tmp_path / "run").exists()
    assert main(["train", "--preset", "demo", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "--dataset", "digits", "--out", str(tmp_path / "b")]) == 0
    assert [d.dataset_name for d, _ in started] == ["digits", "digits"] and started[0][1].image_size == 16
