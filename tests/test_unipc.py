"""UniPC (samplers/unipc.py): its order on Gaussian data, where the ODE has a closed form, and
step-for-step parity with diffusers' UniPCMultistepScheduler.

For x0 ~ N(MU, S^2 I) the exact eps-predictor and the exact ODE end point are known
(test_samplers_gaussian.py), at fractional timesteps too, so that the steps can be spaced evenly
in log-SNR ("exponential") without rounding to the model's integer timesteps.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_samplers_gaussian import gaussian_eps, ode_end

from ddpm.samplers import timestep_list
from ddpm.samplers.dpmpp import dpmpp_sample
from ddpm.samplers.unipc import unipc_sample
from ddpm.schedule import NoiseSchedule, rescale_zero_terminal_snr


def _error(schedule, x_T, ts, sampler, **options) -> float:
    x = sampler(gaussian_eps(schedule), schedule, x_T, timesteps=ts, clip_x0=False, **options).double()
    return (x - ode_end(schedule, x_T, ts[0], ts[-1])).abs().max().item()


# UniPC-p is accurate to order p + 1 (the paper's Corollary 3.3): UniC adds one. With order 3 the
# first steps ramp up through UniPC-1 and -2, whose local errors cap the global order at 3 in theory;
# on these data their constants are small, and in float64 the rate reaches 3.9 at 160 -> 320 steps,
# but float32 rounding (an error floor near 3e-6) keeps the steps here to <= 80, where it is 3 to 3.5.
# Spacing: "exponential" is the log-SNR spacing unrounded. Rounded to integer timesteps ("logsnr"),
# the last steps cannot shrink below one timestep (t = 1 -> 0 alone is h = 0.4 in log-SNR), which
# floors the error near 6e-5 and hides order 3 and above.
@pytest.mark.parametrize(("order", "rate", "slack"), [(2, 3.0, 0.2), (3, 3.0, 0.2)])
def test_unipc_converges_at_its_order(order, rate, slack):
    schedule = NoiseSchedule(1000, 1e-4, 0.02)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    errors = [_error(schedule, x_T, timestep_list(schedule, k, "exponential"), unipc_sample, order=order,
                     lower_order_final=False) for k in (20, 40, 80)]
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
    # Halving the step divides the error by 2^rate (order 3: by up to 2^4).
    hi = rate + 0.3 if order == 2 else 4.3
    assert all(rate - slack < r < hi for r in rates), (order, errors, rates)


def test_unipc_beats_dpmpp_2m_at_equal_calls():
    # At 10 calls on these data neither wins: each step spans h = 1.07 in log-SNR, across the whole
    # transition of x0_hat from MU to the sample, and the errors (0.12 UniPC-2, 0.10 UniPC-3, 0.075
    # DPM-Solver++(2M)) are those of the extrapolation, not of the order. From 15 to 20 calls on the
    # order shows.
    schedule = NoiseSchedule(1000, 1e-4, 0.02)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    ts = timestep_list(schedule, 20, "logsnr")
    err = {"dpmpp-2m": _error(schedule, x_T, ts, dpmpp_sample, order=2),
           "unipc-2": _error(schedule, x_T, ts, unipc_sample, order=2),
           "unipc-3": _error(schedule, x_T, ts, unipc_sample, order=3)}
    assert err["unipc-2"] < err["dpmpp-2m"] and err["unipc-3"] < err["dpmpp-2m"] / 10, err


def _net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth, deterministic stand-in for a trained eps-network (any batch, float32)."""
    t = t.to(torch.float32).view(-1, *([1] * (x.dim() - 1)))
    return 0.3 * torch.tanh(x) * (1 + t / 1000) + 0.1 * torch.sin(x * (t / 500 + 1))


# diffusers 0.42 warns about numpy 2's copy keyword inside set_timesteps; not ours to fix.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("order", [2, 3])
def test_unipc_matches_diffusers(order, steps):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", solver_order=order,
        solver_type="bh2", predict_x0=True, thresholding=False, lower_order_final=True, final_sigmas_type="zero")
    scheduler.set_timesteps(steps)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(_net(x, t), t, x).prev_sample
    # diffusers computes alphā and every coefficient in float32, we in float64: our own schedule
    # (alphā from float64 betas) agrees to 6e-7 relative, and NoiseSchedule.from_betas of diffusers'
    # float32 betas only to 4e-7, so the float32 alphā is not what separates the two.
    # diffusers' lower_order_final counts its step to sigma = 0 as the last step; ours is the same
    # flag (there, for order 3, the step into the last timestep is second order; without it ours
    # differs by 1.5e-4 to 4.6e-4).
    ours = unipc_sample(_net, NoiseSchedule(1000, 1e-4, 0.02), x_T, timesteps=[int(t) for t in scheduler.timesteps],
                        clip_x0=False, order=order, lower_order_final=True)
    rel = ((ours - x).abs().max() / x.abs().max()).item()
    assert rel < 1e-4, rel


def test_unipc_checks_order_and_survives_zero_terminal_snr():
    schedule = NoiseSchedule(100, 1e-3, 0.15)
    x_T = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="order=4"):
        unipc_sample(gaussian_eps(schedule), schedule, x_T, timesteps=[99, 50, 0], order=4)
    # lambda = -inf at x_T: its x0_hat takes no part in a difference, so nothing becomes NaN.
    zsnr = NoiseSchedule.from_betas(rescale_zero_terminal_snr(schedule.betas), prediction="v")
    for order in (2, 3):
        out = unipc_sample(lambda x, t: 0.5 * x, zsnr, x_T, timesteps=timestep_list(zsnr, 6, "logsnr"), order=order)
        assert torch.isfinite(out).all()
