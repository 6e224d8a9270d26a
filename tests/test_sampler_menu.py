"""The sampler menu: sigma schedules, Euler / Heun / DPM++ 3M against closed forms, Brownian noise,
and parity with diffusers' schedulers where diffusers is installed.

Gaussian data x0 ~ N(MU, S^2 I) has an exact denoiser and an exact ODE end point
(test_samplers_gaussian.py), at fractional timesteps too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_samplers_gaussian import MU, S, gaussian_eps, ode_end

from ddpm.samplers import SAMPLERS, resolve_steps, run_sampler, timestep_list
from ddpm.samplers.dpmpp import dpmpp_sample
from ddpm.samplers.euler import euler_sample, heun_sample
from ddpm.samplers.noise import BrownianNoise
from ddpm.samplers.sigmas import KARRAS_RHO, MIN_SPACED_LOG_SNR, SigmaTable
from ddpm.schedule import NoiseSchedule, cosine_betas, rescale_zero_terminal_snr

# Sigma schedules ----------------------------------------------------------------------------------


def test_the_sigma_table_is_exact_on_timesteps_and_log_linear_between():
    schedule = NoiseSchedule(200, 5e-4, 0.1)
    table = SigmaTable(schedule)
    abar = schedule.alphas_cumprod
    for t in (0, 1, 57, 199):
        assert table.alpha_bar(t) == float(abar[t])
    t = 57.3
    lo, hi = (0.5 * torch.log((1 - abar[k]) / abar[k]) for k in (57, 58))
    assert table.log_sigma_at(t) == pytest.approx(float(0.7 * lo + 0.3 * hi), rel=1e-12)
    for t in (0.0, 3.25, 57.3, 198.9):
        assert table.t_of_sigma(table.sigma(t)) == pytest.approx(t, abs=1e-9)


@pytest.mark.parametrize("kind", ["karras", "exponential"])
def test_karras_and_exponential_sigmas_follow_their_formulas(kind):
    schedule = NoiseSchedule(200, 5e-4, 0.1)
    table = SigmaTable(schedule)
    n = 9
    ts = timestep_list(schedule, n, kind)
    assert ts[0] == 199 and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:], strict=False))
    lo, hi = table.sigma(0), table.sigma(199)
    i = np.arange(n) / (n - 1)
    if kind == "karras":  # Karras et al. 2022, Eq. 5
        want = (hi ** (1 / KARRAS_RHO) + i * (lo ** (1 / KARRAS_RHO) - hi ** (1 / KARRAS_RHO))) ** KARRAS_RHO
    else:
        want = np.exp(np.log(hi) + i * (np.log(lo) - np.log(hi)))
    np.testing.assert_allclose([table.sigma(t) for t in ts], want, rtol=1e-10)


def test_spacings_in_log_snr_start_from_the_floor_not_from_the_cosine_schedules_clipped_end():
    cosine = NoiseSchedule.from_betas(cosine_betas(200))
    table = SigmaTable(cosine)
    assert -2 * table.log_sigma[199] < -16 < -2 * table.log_sigma[198]  # the last beta, clipped at 0.999
    n, lam0 = 20, -2 * table.log_sigma[0]
    exponential, karras = timestep_list(cosine, n, "exponential"), timestep_list(cosine, n, "karras")
    assert exponential[0] == karras[0] == 199
    # After T-1, the steps lie where they would in a schedule that ended at the floor.
    want = np.linspace(MIN_SPACED_LOG_SNR, lam0, n)[1:]
    np.testing.assert_allclose([-2 * table.log_sigma_at(t) for t in exponential[1:]], want, rtol=1e-9)
    lo, hi = table.sigma(0) ** (1 / KARRAS_RHO), math.exp(-MIN_SPACED_LOG_SNR / 2) ** (1 / KARRAS_RHO)
    want = [(hi + i / (n - 1) * (lo - hi)) ** KARRAS_RHO for i in range(1, n)]
    np.testing.assert_allclose([table.sigma(t) for t in karras[1:]], want, rtol=1e-9)
    # logsnr is exponential rounded to the model's own timesteps (log sigma is linear in t between them).
    assert timestep_list(cosine, n, "logsnr") == [round(t) for t in exponential]
    # A schedule that ends above the floor (the seed's linear one) spreads from its own end, as before.
    linear = NoiseSchedule(200, 5e-4, 0.1)
    assert -2 * SigmaTable(linear).log_sigma[199] > MIN_SPACED_LOG_SNR
    lam = [-2 * SigmaTable(linear).log_sigma_at(t) for t in timestep_list(linear, n, "exponential")]
    np.testing.assert_allclose(lam, np.linspace(lam[0], lam[-1], n), rtol=1e-9)


def test_fractional_spacings_with_zero_terminal_snr_start_at_T_and_stay_finite():
    schedule = NoiseSchedule.from_betas(rescale_zero_terminal_snr(cosine_betas(100)), prediction="v")
    for kind in ("karras", "exponential"):
        ts = timestep_list(schedule, 6, kind)
        assert ts[0] == 99 and 98 >= ts[1] > ts[2]


@pytest.mark.parametrize(("T", "k", "kind", "start"), [(50, 30, "karras", None), (200, 150, "karras", None),
                                                    (1000, 700, "karras", 800), (200, 200, "exponential", None)])
def test_ddpm_rounds_a_fractional_spacing_to_distinct_timesteps_with_its_ends_kept(T, k, kind, start):
    schedule = NoiseSchedule(T, 0.1 / T, 20.0 / T)
    ts = resolve_steps("ddpm", schedule, k, kind, start)
    top = T - 1 if start is None else start
    assert all(isinstance(t, int) for t in ts) and len(set(ts)) == k and ts == sorted(ts, reverse=True)
    assert ts[0] == top and ts[-1] == 0  # x is at ts[0]'s noise level: rounding must not move it
    x = run_sampler("ddpm", gaussian_eps(schedule), schedule, torch.randn(2, 1, 2, 2, dtype=torch.float64),
                    num_steps=k, spacing=kind, start=start, variance="beta")
    assert torch.isfinite(x).all()


def test_samplers_give_the_network_a_respaced_schedules_own_timesteps():
    schedule = NoiseSchedule(100, 1e-3, 0.15).respace([0, 10, 30, 60, 99])
    seen = []

    def model(x, t):
        seen.append(float(t[0]))
        return torch.zeros_like(x)

    x_T = torch.randn(1, 1, 2, 2)
    run_sampler("ddim", model, schedule, x_T, num_steps=5)
    assert seen == [99, 60, 30, 10, 0]
    seen.clear()
    run_sampler("euler", model, schedule, x_T, num_steps=3, spacing="karras")
    assert seen[0] == 99 and seen[-1] == 0 and all(0 < t < 99 and t not in (10, 30, 60) for t in seen[1:-1])


def test_an_unlabelled_class_conditional_model_takes_fractional_timesteps():
    from ddpm.config import ModelConfig
    from ddpm.unet import UNet

    model = UNet(ModelConfig(lowest_resolution_size=4, dim_multiply=(1, 2), transformer_layers=(0,), base_dim=8,
                             norm_groups=4, image_channels=1, num_classes=3)).eval()
    torch.manual_seed(0)
    for p in model.parameters():  # the output conv starts at zero: give every weight a value
        p.data.normal_(0.0, 0.2)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out = model(x, torch.tensor([10.5, 10.5]))
        # No label is the "no class" entry (index num_classes), whatever the timestep's dtype.
        torch.testing.assert_close(out, model(x, torch.tensor([10.5, 10.5]), torch.tensor([3, 3])))
        assert not torch.equal(out, model(x, torch.tensor([10, 10])))


def test_heun_counts_two_calls_a_step_but_the_last():
    schedule = NoiseSchedule(100, 1e-3, 0.15)
    calls = []
    model = gaussian_eps(schedule)

    def counting(x, t):
        calls.append(1)
        return model(x, t)

    x_T = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    for asked in (9, 10):
        calls.clear()
        ts = resolve_steps("heun", schedule, asked)
        run_sampler("heun", counting, schedule, x_T, num_steps=asked)
        assert len(ts) == (asked + 1) // 2 and len(calls) == SAMPLERS["heun"].calls(len(ts)) == 2 * len(ts) - 1 <= asked


# Solvers against the Gaussian closed forms ----------------------------------------------------------


def _errors(fn, schedule, x_T, calls, spacing, **kw):
    out = []
    for k in calls:
        ts = timestep_list(schedule, k, spacing)
        x = fn(gaussian_eps(schedule), schedule, x_T, None, ts, clip_x0=False, **kw).double()
        out.append((x - ode_end(schedule, x_T, ts[0], ts[-1])).abs().max().item())
    return out


SOLVERS = [
    (euler_sample, {}, 1),
    (heun_sample, {}, 2),
    (dpmpp_sample, {"order": 2, "lower_order_final": False}, 2),
    (dpmpp_sample, {"order": 3, "eta": 0.0, "lower_order_final": False}, 3),
]
IDS = ["euler", "heun", "dpmpp-2m", "dpmpp-3m-ode"]


@pytest.mark.parametrize(("fn", "kw", "order"), SOLVERS[:3], ids=IDS[:3])
@pytest.mark.parametrize("spacing", ["karras", "exponential", "logsnr"])
def test_deterministic_solvers_converge_at_their_order_on_every_sigma_schedule(fn, kw, order, spacing):
    schedule = NoiseSchedule(1000, 1e-4, 0.02)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    errors = _errors(fn, schedule, x_T, (25, 50, 100), spacing, **kw)
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
    # Halving the step divides the error by 2^order (logsnr rounds to integer timesteps: its steps
    # are not exactly halved, hence the slack).
    assert all(order - 0.35 < r < order + 0.5 for r in rates), (errors, rates)


@pytest.mark.parametrize(("fn", "kw", "order"), SOLVERS, ids=IDS)
def test_one_step_of_each_solver_errs_by_h_to_the_order_plus_one(fn, kw, order):
    # Global convergence hides a multistep method's order behind its first-order first step (whose
    # O(h^2) error stays in the result: 3M converges globally at 2, as in k-diffusion and diffusers).
    # So put the exact ODE solution back after every step but the one into the last timestep:
    # what remains is that one step's local error, O(h^(order + 1)), from exact history.
    schedule = NoiseSchedule(1000, 1e-4, 0.02)
    table = SigmaTable(schedule)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    errors = []
    for k in (25, 50, 100):
        ts = timestep_list(schedule, k, "karras")
        a0, v0 = math.sqrt(table.alpha_bar(ts[0])), 1 - table.alpha_bar(ts[0]) * (1 - S**2)

        def exact(step, ts=ts, a0=a0, v0=v0):
            if step.index < len(ts) - 2:
                a1 = math.sqrt(table.alpha_bar(step.t_next))
                return a1 * MU + math.sqrt(1 - a1 * a1 * (1 - S**2)) * (x_T - a0 * MU) / math.sqrt(v0)
            return None

        x = fn(gaussian_eps(schedule), schedule, x_T, None, ts, clip_x0=False, hook=exact, **kw).double()
        errors.append((x - ode_end(schedule, x_T, ts[0], ts[-1])).abs().max().item())
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
    assert all(r > order + 1 - 0.7 for r in rates), (errors, rates)


@pytest.mark.parametrize("spacing", ["exponential", "logsnr"])
def test_dpmpp_3m_beats_2m_at_equal_calls(spacing):
    schedule = NoiseSchedule(1000, 1e-4, 0.02)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    e2 = _errors(dpmpp_sample, schedule, x_T, (25, 50), spacing, order=2, lower_order_final=False)
    e3 = _errors(dpmpp_sample, schedule, x_T, (25, 50), spacing, order=3, eta=0.0, lower_order_final=False)
    assert all(b < a / 1.8 for a, b in zip(e2, e3, strict=True)), (e2, e3)


def test_euler_is_ddim_step_for_step():
    schedule = NoiseSchedule(200, 5e-4, 0.1)
    x_T = torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(4))
    model = gaussian_eps(schedule)
    for spacing in ("uniform", "karras"):
        a = run_sampler("euler", lambda x, t: model(x, t).float(), schedule, x_T, num_steps=12, spacing=spacing)
        b = run_sampler("ddim", lambda x, t: model(x, t).float(), schedule, x_T, num_steps=12, spacing=spacing)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "steps", "options"), [
    # Ancestral Euler is first order: it under-disperses with few steps (variance 0.196 for 0.25 at
    # 50 steps, 0.230 at 200), as DDPM's beta_tilde variant does.
    ("euler-ancestral", 200, {}),
    ("dpmpp-3m-sde", 20, {}),
    ("dpmpp-2m-sde", 50, {"spacing": "karras"}),
    ("heun", 79, {"s_churn": 20.0, "spacing": "karras"}),
    ("heun", 199, {"s_churn": 40.0, "spacing": "karras"}),
])
def test_stochastic_solvers_reproduce_the_data_distribution(name, steps, options):
    schedule = NoiseSchedule(200, 5e-4, 0.1)
    n = 4000
    x_T = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    x = run_sampler(name, gaussian_eps(schedule), schedule, x_T, gen, num_steps=steps, clip_x0=False,
                    **options).double().flatten()
    assert abs(x.mean().item() - MU) < 4 * S / math.sqrt(n)
    assert abs(x.var().item() - S**2) < 4 * S**2 * math.sqrt(2 / n) + 0.01


# Noise that holds across step counts ----------------------------------------------------------------


def test_brownian_increments_add_up_and_are_standard_normal():
    noise = BrownianNoise(range(3000), (1,), 0.01, 100.0)
    z1, z2 = noise(50.0, 20.0), noise(20.0, 5.0)
    for z in (z1, z2):
        assert abs(z.mean().item()) < 4 / math.sqrt(3000) and abs(z.var().item() - 1) < 4 * math.sqrt(2 / 3000)
    assert abs(torch.corrcoef(torch.stack([z1.flatten(), z2.flatten()]))[0, 1].item()) < 4 / math.sqrt(3000)
    # A coarse step's increment is the sum of the fine steps' over the same interval.
    fresh = BrownianNoise(range(3000), (1,), 0.01, 100.0)
    d = [abs(fresh.tau(b) - fresh.tau(a)) ** 0.5 for a, b in ((50.0, 20.0), (20.0, 5.0), (50.0, 5.0))]
    torch.testing.assert_close(fresh(50.0, 5.0) * d[2], z1 * d[0] + z2 * d[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["dpmpp-2m-sde", "dpmpp-3m-sde", "euler-ancestral"])
def test_a_seed_keeps_its_image_across_step_counts(name):
    # The exact denoiser of Gaussian data: each sample's randomness is its x_T and its noise path.
    schedule = NoiseSchedule(200, 5e-4, 0.1)
    model = gaussian_eps(schedule)
    x_T = lambda s: torch.randn(200, 1, 2, 2, generator=torch.Generator().manual_seed(s), dtype=torch.float64)  # noqa: E731
    gens = lambda s: [torch.Generator().manual_seed(s * 1000 + i) for i in range(200)]  # noqa: E731
    run = lambda s, k: run_sampler(name, model, schedule, x_T(s), gens(s), num_steps=k, clip_x0=False).double()  # noqa: E731
    same_seed = (run(1, 20) - run(1, 50)).pow(2).mean().sqrt().item()
    other_seed = (run(2, 50) - run(1, 50)).pow(2).mean().sqrt().item()
    # Fresh noise per step would make 20 and 50 calls as different as two seeds (ratio ~1).
    assert same_seed < 0.35 * other_seed, (same_seed, other_seed)


# Parity with diffusers ----------------------------------------------------------------------------


def _smooth_net(x, t):
    """A deterministic stand-in for a network: smooth in x and t (t as a float)."""
    t = t.double().view(-1, 1, 1, 1) / 1000.0
    return (0.3 * torch.tanh(x.double()) * (1 + t) + 0.1 * torch.sin(x.double() * (t + 1))).to(x.dtype)


def _diffusers_run(scheduler, n, x_T, net):
    scheduler.set_timesteps(n)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        x = scheduler.step(net(inp, t.expand(x.shape[0])), t, x).prev_sample
    return x


def _our_schedule(scheduler) -> NoiseSchedule:
    # diffusers keeps alphā in float32; build ours from those very values (in float64), so that
    # the comparison is of the solvers, not of two roundings of the same schedule.
    ac = scheduler.alphas_cumprod.double()
    return NoiseSchedule.from_betas(torch.cat([1 - ac[:1], 1 - ac[1:] / ac[:-1]]))


@pytest.mark.parametrize(("name", "cls", "kw", "n"), [
    ("euler", "EulerDiscreteScheduler", {}, 10),
    ("euler", "EulerDiscreteScheduler", {"use_karras_sigmas": True}, 10),
    ("heun", "HeunDiscreteScheduler", {"use_karras_sigmas": True}, 10),
    ("heun", "HeunDiscreteScheduler", {}, 10),
    ("dpmpp-2m", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, 10),
    ("dpmpp-2m", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, 20),
])
def test_parity_with_diffusers(name, cls, kw, n):
    diffusers = pytest.importorskip("diffusers")
    scheduler = getattr(diffusers, cls)(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                        beta_schedule="linear", **kw)
    schedule = _our_schedule(scheduler)
    x_T = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    want = _diffusers_run(scheduler, n, x_T, _smooth_net)
    ts = [float(t) for t in scheduler.timesteps]
    if name == "heun":
        ts = ts[::2]  # diffusers lists each timestep after the first twice (predictor, corrector)
    net = _smooth_net
    if cls == "DPMSolverMultistepScheduler":
        # diffusers gives the network round(t) for Karras sigmas (and steps with the exact sigmas).
        net = lambda x, t: _smooth_net(x, t.double().round())  # noqa: E731
        assert ts[-1] == 0
        ts = [SigmaTable(schedule).t_of_sigma(float(s)) for s in scheduler.sigmas[:-1]]
        ts[-1] = 0.0
    np.testing.assert_allclose([SigmaTable(schedule).sigma(t) for t in ts],
                               scheduler.sigmas[:-1][::2 if name == "heun" else 1].double().numpy(), rtol=1e-5)
    fn = {"euler": euler_sample, "heun": heun_sample, "dpmpp-2m": dpmpp_sample}[name]
    extra = {"lower_order_final": False} if name == "dpmpp-2m" else {}
    got = fn(net, schedule, x_T, None, ts, clip_x0=False, **extra)
    err = (got - want).abs().max().item() / want.abs().max().item()
    assert err < 1e-4, err
