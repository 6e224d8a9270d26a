"""Samplers against closed forms: Gaussian data has an exact noise predictor and an exact ODE end point.

For x0 ~ N(mu, s^2 I), x_t = a x0 + sigma eps (a = sqrt(alphā), sigma = sqrt(1 - alphā)) is Gaussian
with variance v_t = a^2 s^2 + sigma^2, and the exact predictor is E[eps | x_t] = sigma (x_t - a mu) / v_t.
The probability-flow ODE keeps (x_t - a_t mu) / sqrt(v_t) constant, so from x at the first timestep
it reaches x_t0 = a_0 mu + sqrt(v_0) z at the last one; every sampler then takes the same final step
to alphā = 1, which returns E[x0 | x_t0].
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.samplers import SAMPLERS, resolve_steps, run_sampler, timestep_list
from ddpm.samplers.sigmas import SigmaTable
from ddpm.schedule import NoiseSchedule

MU, S = 0.3, 0.5


def gaussian_eps(schedule: NoiseSchedule):
    """The exact eps-predictor for x0 ~ N(MU, S^2 I), in float64, at any (fractional) timestep."""
    table = SigmaTable(schedule)

    def model(x, t):
        abar = {v: table.alpha_bar(v) for v in set(t.tolist())}
        ab = torch.tensor([abar[v] for v in t.tolist()], dtype=torch.float64).view(-1, 1, 1, 1)
        a, sig2 = ab.sqrt(), 1 - ab
        return sig2.sqrt() * (x.double() - a * MU) / (a * a * S * S + sig2)

    return model


def ode_end(schedule: NoiseSchedule, x: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
    """The exact ODE map from x at t_from to t_to, then E[x0 | x_t_to] (the shared last step)."""
    table = SigmaTable(schedule)
    ab = torch.tensor([table.alpha_bar(t_from), table.alpha_bar(t_to)], dtype=torch.float64)
    a0, a1 = ab[0].sqrt(), ab[1].sqrt()
    v0, v1 = a0**2 * S**2 + 1 - ab[0], a1**2 * S**2 + 1 - ab[1]
    x_to = a1 * MU + v1.sqrt() * (x.double() - a0 * MU) / v0.sqrt()
    return MU + a1 * S**2 / v1 * (x_to - a1 * MU)


def _sample(name, schedule, x_T, steps, spacing=None, seed=0, **options):
    # One generator for the batch: the noise of 4000 images is one draw a step, not 4000 (per-image
    # seeds are test_every_sampler_keeps_per_image_seeds_and_calls_hooks's business).
    gen = torch.Generator().manual_seed(seed)
    return run_sampler(name, gaussian_eps(schedule), schedule, x_T.double(), gen, num_steps=steps,
                       spacing=spacing, clip_x0=False, **options).double()


@pytest.mark.parametrize(("name", "order", "spacing", "calls", "slack"), [
    ("ddim", 1.0, "uniform", (10, 20, 40), 0.15),
    ("ddim", 1.0, "logsnr", (10, 20, 40), 0.15),
    ("dpmpp-2m", 2.0, "logsnr", (20, 40, 80), 0.15),
    # Uniform-in-t steps make the last log-SNR steps far longer than the ones before them, and the
    # multistep correction scales with that ratio: second order shows only with many steps.
    ("dpmpp-2m", 2.0, "uniform", (40, 80, 160), 0.5),
])
def test_deterministic_samplers_converge_at_their_order(name, order, spacing, calls, slack):
    schedule = NoiseSchedule(1000, 1e-4, 0.02)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    errors = []
    for k in calls:
        ts = timestep_list(schedule, k, spacing)
        # The solver's own order: without dpmpp-2m's default first-order step into t = 0, whose size
        # does not shrink with logsnr's integer timesteps (t = 1 -> 0 stays one step).
        x = _sample(name, schedule, x_T, k, spacing, **({"lower_order_final": False} if name == "dpmpp-2m" else {}))
        errors.append((x - ode_end(schedule, x_T, ts[0], ts[-1])).abs().max().item())
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
    assert errors[-1] < errors[0]
    # Halving the step divides the error by 2^order.
    assert all(order - slack < r < order + 0.3 for r in rates), (name, spacing, errors, rates)


def test_dpmpp_2m_beats_ddim_at_equal_calls():
    schedule = NoiseSchedule(1000, 1e-4, 0.02)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = timestep_list(schedule, 10, "logsnr")
    ref = ode_end(schedule, x_T, ts[0], ts[-1])
    err = {n: (_sample(n, schedule, x_T, 10, "logsnr") - ref).abs().max().item() for n in ("ddim", "dpmpp-2m")}
    assert err["dpmpp-2m"] < err["ddim"] / 5, err


# Ancestral sampling plugs in a point estimate of x0, so with few steps its beta_tilde variant
# under-disperses (variance 0.19 instead of 0.25 at 50 steps): it is tested at T steps only.
@pytest.mark.parametrize(("name", "steps", "options"), [
    ("ddpm", 200, {"variance": "beta_tilde"}),
    ("ddpm", 200, {"variance": "beta"}),
    ("ddpm", 50, {"variance": "beta"}),
    ("ddim", 200, {"eta": 1.0}),
    ("dpmpp-2m-sde", 50, {}),
    ("dpmpp-2m-sde", 20, {}),
])
def test_stochastic_samplers_reproduce_the_data_distribution(name, steps, options):
    schedule = NoiseSchedule(200, 5e-4, 0.1)  # the seed's T with the scaled betas
    n = 4000
    x_T = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = _sample(name, schedule, x_T, steps, seed=3, **options).flatten()
    # Sampling error of the mean is S / sqrt(n) = 0.008, of the variance S^2 sqrt(2 / n) = 0.0056.
    assert abs(x.mean().item() - MU) < 4 * S / math.sqrt(n)
    assert abs(x.var().item() - S**2) < 4 * S**2 * math.sqrt(2 / n) + 0.01


def test_respaced_ddpm_with_all_steps_is_todays_sampler():
    schedule = NoiseSchedule(50, 2e-3, 0.4)
    assert schedule.respace(range(50)) is schedule
    kept = [0, 3, 10, 49]
    r = schedule.respace(kept)
    # q(x_k | x_0) is unchanged at every kept step.
    torch.testing.assert_close(r.alphas_cumprod, schedule.alphas_cumprod[kept], rtol=1e-10, atol=0)
    assert r.timesteps.tolist() == kept


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_keeps_per_image_seeds_and_calls_hooks(name):
    schedule = NoiseSchedule(100, 1e-3, 0.15)
    model = gaussian_eps(schedule)
    x_T = torch.randn(6, 1, 2, 2, dtype=torch.float64)
    gens = lambda idx: [torch.Generator().manual_seed(100 + i) for i in idx]  # noqa: E731
    full = run_sampler(name, model, schedule, x_T, gens(range(6)), num_steps=8)
    part = run_sampler(name, model, schedule, x_T[2:4], gens([2, 3]), num_steps=8)
    torch.testing.assert_close(full[2:4], part, rtol=0, atol=1e-12)
    seen = []

    def hook(step):
        seen.append((step.t, step.t_next))
        return step.x_next * 0 if step.t_next == -1 else None  # the last step's output is replaced

    out = run_sampler(name, model, schedule, x_T, gens(range(6)), num_steps=8, hook=hook)
    ts = resolve_steps(name, schedule, 8)
    assert seen == list(zip(ts, ts[1:] + [-1], strict=True))
    assert torch.count_nonzero(out) == 0


def test_sampler_options_are_checked():
    schedule = NoiseSchedule(100, 1e-3, 0.15)
    x_T = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="takes no \\['eta'\\]"):
        run_sampler("dpmpp-2m", gaussian_eps(schedule), schedule, x_T, num_steps=5, eta=0.5)
    with pytest.raises(ValueError, match="choose one of"):
        run_sampler("euler-maruyama", gaussian_eps(schedule), schedule, x_T)
