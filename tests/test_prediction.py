"""Prediction types (eps, v, x0), SNR loss weightings and the cosine / zero-terminal-SNR schedules,
against closed forms: the exact denoiser of Gaussian data, the papers' formulas, float64."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_diffusion_config, tiny_model_config
from test_samplers_gaussian import MU, S, gaussian_eps, ode_end

import ddpm
from ddpm import DiffusionConfig, train_diffusion
from ddpm.config import PREDICTIONS
from ddpm.generation import load_model, sample_images
from ddpm.losses import diffusion_loss, draw_timesteps, slice_timestep, snr_weight
from ddpm.samplers import SAMPLERS, run_sampler, timestep_list
from ddpm.samplers.sigmas import SigmaTable
from ddpm.schedule import NoiseSchedule, cosine_betas, rescale_zero_terminal_snr, shift_log_snr

FIXTURES = Path(__file__).parent / "fixtures"


def gaussian_model(schedule: NoiseSchedule):
    """The exact denoiser of x0 ~ N(MU, S^2 I), written in the schedule's own parametrization
    (derived here from E[x0 | x_t], not through schedule.split), at any (fractional) timestep."""
    table = SigmaTable(schedule)

    def model(x, t):
        x = x.double()
        ab = torch.tensor([table.alpha_bar(v) for v in t.tolist()], dtype=torch.float64).view(-1, 1, 1, 1)
        a, s2 = ab.sqrt(), 1 - ab
        x0 = MU + a * S * S / (a * a * S * S + s2) * (x - a * MU)  # E[x0 | x_t]
        eps = s2.sqrt() * (x - a * MU) / (a * a * S * S + s2)  # E[eps | x_t]
        return {"eps": eps, "x0": x0, "v": a * eps - s2.sqrt() * x0}[schedule.prediction]

    return model


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_each_prediction_gives_the_x0_and_eps_of_the_epsilon_form(prediction):
    schedule = NoiseSchedule(1000, 1e-4, 0.02, prediction=prediction)
    eps_schedule = NoiseSchedule(1000, 1e-4, 0.02)
    x = torch.randn(16, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.arange(0, 1000, 64)
    x0, eps = schedule.split(x, t, gaussian_model(schedule)(x, t))
    x0_ref, eps_ref = eps_schedule.split(x, t, gaussian_eps(eps_schedule)(x, t))
    torch.testing.assert_close(eps, eps_ref, rtol=1e-9, atol=1e-9)
    # x0 from eps divides by sqrt(alphā) (0.006 at t = T): float64 rounding grows by that much.
    torch.testing.assert_close(x0, x0_ref, rtol=1e-9, atol=1e-9 / float(eps_schedule.sqrt_alphas_cumprod[-1]))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_training_target_is_what_split_inverts(prediction):
    schedule = NoiseSchedule(200, 5e-4, 0.1, prediction=prediction)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(8, 1, 4, 4, dtype=torch.float64, generator=g) * 2 - 1, torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=g)
    t = torch.randint(0, 200, (8,), generator=g)
    x_t = schedule.q_sample(x0, t, noise)
    target = schedule.target(x0, t, noise)
    if prediction == "v":  # Salimans & Ho 2022, Sec. 4: v = alpha eps - sigma x0
        a, s = schedule.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1), (1 - schedule.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        torch.testing.assert_close(target, a * noise - s * x0)
    x0_back, eps_back = schedule.split(x_t, t, target)
    torch.testing.assert_close(eps_back, noise, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(x0_back, x0, rtol=1e-8, atol=1e-7)


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize(("name", "spacing", "order"), [("ddim", "uniform", 1.0), ("dpmpp-2m", "logsnr", 2.0)])
def test_deterministic_samplers_converge_with_every_prediction_as_with_eps(prediction, name, spacing, order):
    schedule = NoiseSchedule(1000, 1e-4, 0.02, prediction=prediction)
    eps_schedule = NoiseSchedule(1000, 1e-4, 0.02)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    errors = []
    for k in (20, 40, 80):
        ts = timestep_list(schedule, k, spacing)
        x = run_sampler(name, gaussian_model(schedule), schedule, x_T, None, num_steps=k, spacing=spacing, clip_x0=False)
        x_eps = run_sampler(name, gaussian_eps(eps_schedule), eps_schedule, x_T, None, num_steps=k, spacing=spacing,
                            clip_x0=False)
        # The same trajectory as the eps form, up to the float32 the network output is cast to.
        torch.testing.assert_close(x, x_eps, rtol=1e-5, atol=1e-5)
        errors.append((x.double() - ode_end(schedule, x_T, ts[0], ts[-1])).abs().max().item())
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
    assert all(order - 0.5 < r < order + 0.3 for r in rates), (errors, rates)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ancestral_sampling_reproduces_the_data_distribution_with_every_prediction(prediction):
    schedule = NoiseSchedule(100, 1e-3, 0.2, prediction=prediction)
    x_T = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = run_sampler("ddpm", gaussian_model(schedule), schedule, x_T, torch.Generator().manual_seed(3),
                    clip_x0=False, variance="beta_tilde").double()
    # Mean and standard deviation of 4,000 samples: standard errors 0.008 and 0.006.
    assert abs(x.mean().item() - MU) < 0.04 and abs(x.std().item() - S) < 0.04, (x.mean().item(), x.std().item())


def test_weightings_equal_their_formulas_for_each_target():
    snr = torch.tensor([1e-3, 0.1, 1.0, 4.9, 5.0, 5.1, 30.0, 1e4], dtype=torch.float64)
    gamma = 5.0
    scale = {"eps": snr, "v": snr + 1, "x0": torch.ones_like(snr)}  # ||target err||^2 / ||x0 err||^2
    for p in PREDICTIONS:
        torch.testing.assert_close(snr_weight(snr, p, "uniform", gamma), torch.ones_like(snr))
        # Hang et al. 2023: eps min(SNR, g) / SNR, v min(SNR, g) / (SNR + 1), x0 min(SNR, g).
        want = torch.tensor([min(v, gamma) for v in snr.tolist()], dtype=torch.float64) / scale[p]
        torch.testing.assert_close(snr_weight(snr, p, "min-snr", gamma), want)
        soft = torch.tensor([1 / (1 / v + 1 / gamma) for v in snr.tolist()], dtype=torch.float64) / scale[p]
        torch.testing.assert_close(snr_weight(snr, p, "soft-min-snr", gamma), soft)
        # With gamma = inf, both are L_simple's weighting of the x0 error (SNR), for every target.
        for w in ("min-snr", "soft-min-snr"):
            torch.testing.assert_close(snr_weight(snr, p, w, math.inf), snr / scale[p])
    torch.testing.assert_close(snr_weight(snr, "eps", "min-snr", math.inf), snr_weight(snr, "eps", "uniform"))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_weighted_loss_is_the_same_x0_loss_whatever_the_prediction(prediction):
    # A model whose x0 error is the same for every prediction type gives the same min-SNR loss.
    schedule = NoiseSchedule(200, 5e-4, 0.1, prediction=prediction)
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.rand(32, 1, 4, 4, dtype=torch.float64, generator=g), torch.randn(32, 1, 4, 4, dtype=torch.float64, generator=g)
    t = torch.randint(0, 200, (32,), generator=g)
    x0_err = 0.3 * torch.randn(32, 1, 4, 4, dtype=torch.float64, generator=g)

    def model(x_t, t_):  # predicts x0 + x0_err, written in this parametrization
        a, s = schedule.sqrt_alphas_cumprod[t_].view(-1, 1, 1, 1), schedule.sqrt_one_minus_alphas_cumprod[t_].view(-1, 1, 1, 1)
        x0_hat = x0 + x0_err
        eps_hat = (x_t - a * x0_hat) / s
        return {"eps": eps_hat, "x0": x0_hat, "v": a * eps_hat - s * x0_hat}[prediction]

    _, per_image, _ = diffusion_loss(model, schedule, x0, t=t, noise=noise, weighting="min-snr", snr_gamma=5.0)
    snr = schedule.snr[t]
    want = snr.clamp(max=5.0) * x0_err.pow(2).mean(dim=(1, 2, 3))
    # The loss is taken in float32: errors subtract from targets of size ~1 at 2^-24 each.
    torch.testing.assert_close(per_image.double(), want, rtol=1e-4, atol=1e-9)


def test_the_cosine_schedule_is_nichol_and_dhariwals():
    T, s = 1000, 0.008
    sched = NoiseSchedule.from_betas(cosine_betas(T))

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    # Index i is the paper's step i + 1: alphā = f(i + 1) / f(0) wherever no beta was clipped at 0.999.
    for i in (0, 1, 10, 250, 500, 900, 990):
        assert sched.alphas_cumprod[i].item() == pytest.approx(f(i + 1) / f(0), rel=1e-12)
    assert cosine_betas(T).max().item() == pytest.approx(0.999)
    assert sched.signal_at_T < 1e-6
    try:  # diffusers' betas_for_alpha_bar("cosine"), where installed
        from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar
    except ImportError:
        return
    torch.testing.assert_close(cosine_betas(T).float(), betas_for_alpha_bar(T, alpha_transform_type="cosine"))


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_zero_terminal_snr_ends_at_pure_noise_and_keeps_the_first_step(kind):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64) if kind == "linear" else cosine_betas(1000)
    before = torch.cumprod(1 - betas, 0)
    after = NoiseSchedule.from_betas(rescale_zero_terminal_snr(betas), prediction="v")
    assert after.alphas_cumprod[-1].item() == 0.0 and after.snr[-1].item() == 0.0
    assert after.alphas_cumprod[0].item() == pytest.approx(before[0].item(), rel=1e-12)
    # Lin et al. 2024, Algorithm 1: sqrt(alphā) shifted and scaled linearly.
    r = before.sqrt()
    torch.testing.assert_close(after.sqrt_alphas_cumprod, (r - r[-1]) * r[0] / (r[0] - r[-1]))
    assert bool((after.alphas_cumprod[1:] < after.alphas_cumprod[:-1]).all())


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("shift", [-2.0, 1.5])
def test_a_schedule_shift_adds_to_the_log_snr_at_every_step(kind, shift):
    base = DiffusionConfig(timesteps_diff=200, beta_schedule=kind)
    before = NoiseSchedule.from_config(base).alphas_cumprod
    after = NoiseSchedule.from_config(dataclasses.replace(base, schedule_shift=shift)).alphas_cumprod
    # Hoogeboom et al. 2023: SNR'(t) = SNR(t) e^shift, recomputed per step with the math module.
    for i in (0, 1, 50, 100, 150, 198, 199):
        snr = before[i].item() / (1 - before[i].item()) * math.exp(shift)
        assert after[i].item() == pytest.approx(snr / (1 + snr), rel=1e-9), i
    assert bool((after[1:] < after[:-1]).all())
    # Shift 0 is the schedule as it was, bit for bit; shift_log_snr(betas, 0) itself is exact to rounding.
    unshifted = NoiseSchedule.from_config(base)
    if kind == "linear":
        assert torch.equal(unshifted.betas, NoiseSchedule(200, *base.resolved_betas()).betas)
    else:
        assert torch.equal(unshifted.betas, cosine_betas(200))
    torch.testing.assert_close(shift_log_snr(unshifted.betas, 0.0), unshifted.betas, rtol=1e-9, atol=0)


def test_a_shifted_schedule_keeps_zero_terminal_snr_warns_where_x_T_keeps_signal_and_samples():
    cfg = DiffusionConfig(timesteps_diff=100, beta_schedule="cosine", schedule_shift=-1.5, zero_terminal_snr=True,
                          prediction="v")
    shifted = shift_log_snr(cosine_betas(100), -1.5)
    # Shifted first, then rescaled (diffusers' order for trained betas with rescale_betas_zero_snr).
    torch.testing.assert_close(NoiseSchedule.from_config(cfg).betas, rescale_zero_terminal_snr(shifted), rtol=0, atol=0)
    assert NoiseSchedule.from_config(cfg).alphas_cumprod[-1].item() == 0.0
    with pytest.warns(UserWarning, match=r"log-SNR shift 5\).*Fix: lower schedule_shift=5; or use zero_terminal_snr"):
        NoiseSchedule.from_config(DiffusionConfig(timesteps_diff=200, schedule_shift=5.0))  # 0.0045 of the signal at T
    for bad in (math.nan, 11.0):
        with pytest.raises(ddpm.ConfigError, match=f"schedule_shift={bad}"):
            DiffusionConfig(schedule_shift=bad)
    schedule = NoiseSchedule.from_config(dataclasses.replace(cfg, zero_terminal_snr=False, prediction="eps"))
    x_T = torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for name in ("ddpm", "ddim", "dpmpp-2m"):
        x = run_sampler(name, gaussian_model(schedule), schedule, x_T, torch.Generator().manual_seed(6),
                        num_steps=20, clip_x0=False).double()
        assert abs(x.mean().item() - MU) < 0.05 and abs(x.std().item() - S) < 0.08, (name, x.mean().item(), x.std().item())


def test_zero_terminal_snr_samples_with_v_and_is_refused_with_eps():
    with pytest.raises(ddpm.ConfigError, match="zero_terminal_snr.*prediction='v'"):
        DiffusionConfig(zero_terminal_snr=True)
    with pytest.raises(ddpm.ConfigError, match="beta_start"):
        DiffusionConfig(beta_schedule="cosine", beta_start=1e-4)
    cfg = DiffusionConfig(timesteps_diff=100, beta_schedule="cosine", zero_terminal_snr=True, prediction="v")
    schedule = NoiseSchedule.from_config(cfg)
    assert schedule.prediction == "v" and schedule.alphas_cumprod[-1].item() == 0.0
    x_T = torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for name, spacing in [(n, None) for n in SAMPLERS] + [(n, "karras") for n in ("dpmpp-2m", "euler", "heun", "unipc")]:
        x = run_sampler(name, gaussian_model(schedule), schedule, x_T, torch.Generator().manual_seed(6),
                        num_steps={"euler-ancestral": 100, "heun": 59}.get(name, 20), spacing=spacing,
                        clip_x0=False).double()
        assert torch.isfinite(x).all(), (name, spacing)
        # At t = T the exact v-model returns x0 = E[x0] = MU, from which the samplers reach the data.
        assert abs(x.mean().item() - MU) < 0.05 and abs(x.std().item() - S) < 0.08, (name, x.mean().item(), x.std().item())


def test_a_v_min_snr_cosine_run_trains_stores_its_recipe_and_samples(tmp_path):
    cfg = tiny_diffusion_config(tmp_path, max_steps=4, num_sample_images=0, tensorboard=False, prediction="v",
                                loss_weighting="min-snr", snr_gamma=5.0, beta_schedule="cosine", zero_terminal_snr=True,
                                schedule_shift=-1.0)
    run = train_diffusion(cfg, tiny_model_config())
    stored = json.loads((Path(str(run)) / "config.json").read_text())["diffusion_config"]
    assert (stored["prediction"], stored["loss_weighting"], stored["beta_schedule"], stored["zero_terminal_snr"],
            stored["schedule_shift"]) == ("v", "min-snr", "cosine", True, -1.0)
    loaded = load_model(run=run)
    assert loaded.schedule.prediction == "v" and loaded.schedule.alphas_cumprod[-1].item() == 0.0
    assert torch.equal(loaded.schedule.betas, NoiseSchedule.from_config(cfg).betas)
    x = sample_images(loaded.model, loaded.schedule, 3, seed=0, sampler="dpmpp-2m", num_steps=5)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


def test_an_old_checkpoint_loads_as_an_epsilon_model():
    loaded = load_model(checkpoint=FIXTURES / "checkpoint_v0.pt")
    cfg = loaded.diffusion_config
    assert (cfg.prediction, cfg.loss_weighting, cfg.beta_schedule, cfg.zero_terminal_snr, cfg.schedule_shift) == (
        "eps", "uniform", "linear", False, 0.0)
    assert loaded.schedule.prediction == "eps"


def test_the_trainer_trains_with_the_configured_weighting(tmp_path, monkeypatch):
    import ddpm.training.trainer as trainer_module

    seen = []
    real = trainer_module.diffusion_loss

    def spy(*args, **kwargs):
        seen.append((kwargs.get("weighting"), kwargs.get("snr_gamma"), args[1].prediction))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "diffusion_loss", spy)
    cfg = tiny_diffusion_config(tmp_path, max_steps=1, num_sample_images=0, tensorboard=False, prediction="x0",
                                loss_weighting="soft-min-snr", snr_gamma=2.5)
    train_diffusion(cfg, tiny_model_config())
    assert seen and set(seen) == {("soft-min-snr", 2.5, "x0")}


def test_uniform_timesteps_are_the_random_stream_they_always_were():
    # Runs made before stratified sampling existed resume onto the same random draws.
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(draw_timesteps(64, 200, "uniform", generator=a), torch.randint(0, 200, (64,), generator=b))


@pytest.mark.parametrize("batch,T", [(64, 200), (7, 1000), (200, 200), (8, 3), (3, 8)])
def test_each_slice_maps_onto_its_own_timesteps_and_all_of_them_equally_often(batch, T):
    # Exhaustively, over every slot k and every r: slot k gives only timesteps inside its slice
    # [k T / B, (k + 1) T / B), floored, and each of the T timesteps comes from exactly B (k, r) pairs,
    # so a uniform slot and a uniform r give an exactly uniform t (a float version would not).
    k, r = torch.arange(batch)[:, None], torch.arange(T)[None, :]
    t = slice_timestep(k, r, T, batch)
    slices = torch.arange(batch, dtype=torch.float64)[:, None]
    assert ((t >= torch.floor(slices * T / batch)) & (t <= torch.ceil((slices + 1) * T / batch) - 1)).all()
    assert torch.equal(torch.bincount(t.flatten(), minlength=T), torch.full((T,), batch))


@pytest.mark.parametrize("batch,T", [(64, 200), (7, 1000), (200, 200), (8, 3)])
def test_stratified_timesteps_take_one_t_per_slice_and_each_t_stays_uniform(batch, T):
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([draw_timesteps(batch, T, "stratified", generator=g) for _ in range(4000)])
    assert draws.dtype == torch.long and draws.min() >= 0 and draws.max() <= T - 1
    # Sorted, the k-th timestep of every batch lies in slice k, [k T / B, (k + 1) T / B), floored.
    k = torch.arange(batch, dtype=torch.float64)
    lo, hi = torch.floor(k * T / batch).long(), torch.ceil((k + 1) * T / batch).long() - 1
    ordered = draws.sort(dim=1).values
    assert ((ordered >= lo) & (ordered <= hi)).all()
    # Each position on its own is uniform on {0..T-1} (the slots are shuffled): a chi-square test of the
    # first position's counts against 1 / T, and its mean against (T - 1) / 2.
    first = torch.bincount(draws[:, 0], minlength=T).double()
    expected = len(draws) / T
    chi2 = ((first - expected) ** 2 / expected).sum().item()
    dof = T - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof), (chi2, dof)
    mean_sd = math.sqrt((T * T - 1) / 12 / len(draws))
    assert abs(draws[:, 0].double().mean().item() - (T - 1) / 2) < 5 * mean_sd
    # And positions are not tied to slices: the first position lands in the first slice ~1 / B of the time.
    assert (draws[:, 0] <= hi[0]).double().mean().item() < 0.5 + 1.0 / batch


def test_stratified_timesteps_estimate_a_batch_mean_with_less_variance():
    # What stratification is for: the batch mean of a per-t loss f(t) varies less from batch to batch. With
    # f(t) = t, independent draws give Var = (T^2 - 1) / 12 / B; one draw per slice leaves only the
    # within-slice spread, about B^2 times less.
    batch, T = 64, 200
    g = torch.Generator().manual_seed(1)
    means = {kind: torch.stack([draw_timesteps(batch, T, kind, generator=g).double().mean() for _ in range(3000)])
             for kind in ("uniform", "stratified")}
    var_uniform = (T * T - 1) / 12 / batch
    assert abs(means["uniform"].var().item() / var_uniform - 1) < 0.1
    assert means["stratified"].var().item() < var_uniform / 100
    assert abs(means["stratified"].mean().item() - (T - 1) / 2) < 0.05


def test_a_stratified_run_stores_its_sampling_and_the_trainer_uses_it(tmp_path, monkeypatch):
    import ddpm.training.trainer as trainer_module

    seen = []
    real = trainer_module.draw_timesteps

    def spy(*args, **kwargs):
        seen.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "draw_timesteps", spy)
    cfg = tiny_diffusion_config(tmp_path, max_steps=2, num_sample_images=0, tensorboard=False,
                                timestep_sampling="stratified")
    run = train_diffusion(cfg, tiny_model_config())
    assert seen == ["stratified", "stratified"]
    stored = json.loads((Path(str(run)) / "config.json").read_text())["diffusion_config"]
    assert stored["timestep_sampling"] == "stratified"
    with pytest.raises(ValueError, match="timestep_sampling='sobol'.*uniform.*stratified"):
        DiffusionConfig(timestep_sampling="sobol")
