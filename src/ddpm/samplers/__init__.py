"""The samplers, chosen by name here and nowhere else.

Each family lives in its own module as a free function (model, schedule, x_T, generator,
timesteps, ...). `run_sampler` turns a name and a step count into a timestep list and calls it.
A new sampler is one new module plus one entry in SAMPLERS.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..config import DEFAULT_SAMPLER, SAMPLER_NAMES, SPACINGS
from ..errors import UsageError
from ..schedule import NoiseSchedule
from .base import (
    Generators,
    Hook,
    Model,
    Step,
    image_generators,
    integer_timesteps,
    randn,
    timestep_list,
)
from .ddim import ddim_sample
from .ddpm import VARIANCES, ddpm_sample
from .dpmpp import dpmpp_2m_sample, dpmpp_sample
from .euler import euler_sample, heun_sample
from .unipc import unipc_sample


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function and what it takes besides the shared arguments."""

    name: str
    fn: Callable[..., torch.Tensor]
    summary: str  # one line for --help
    options: tuple[str, ...] = ()  # extra keyword options (e.g. "eta")
    stochastic: bool = False  # draws fresh noise at every step
    default_steps: int | None = None  # network calls when none are asked for; None = all T
    default_spacing: str = "uniform"
    calls_per_step: int = 1  # Heun: 2 (its last step, to the clean image, takes 1)
    integer_times: bool = False  # steps between the model's own timesteps only (ddpm: respaced chains)

    def calls(self, num_timesteps: int) -> int:
        """Network calls per image for a list of num_timesteps timesteps."""
        return self.calls_per_step * num_timesteps - (self.calls_per_step - 1)

    def timesteps_for(self, calls: int) -> int:
        """The most timesteps whose calls fit in `calls` (at least 1)."""
        return max((calls + self.calls_per_step - 1) // self.calls_per_step, 1)


_LOF = ("lower_order_final",)
SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec("ddpm", ddpm_sample, "ancestral sampling (Algorithm 2); all T steps, or K respaced ones",
                    options=("variance",), stochastic=True, integer_times=True),
        SamplerSpec("ddim", ddim_sample, "DDIM (eta = 0: deterministic)", options=("eta",), default_steps=50),
        # Uniform steps with a first-order step into t = 0, at any count: the sampler menu's best few-step
        # setting (docs/sampler_menu.md: 10 calls match DDIM-50's FD-digits and DDPM-200's precision).
        SamplerSpec("dpmpp-2m", functools.partial(dpmpp_2m_sample, lower_order_final=True),
                    "DPM-Solver++(2M): deterministic, second order; the fewest calls (default 10)",
                    options=_LOF, default_steps=10, default_spacing="uniform"),
        SamplerSpec("dpmpp-2m-sde", functools.partial(dpmpp_2m_sample, stochastic=True),
                    "SDE-DPM-Solver++(2M): stochastic, second order", options=("eta", "s_noise", *_LOF),
                    stochastic=True, default_steps=20, default_spacing="logsnr"),
        SamplerSpec("dpmpp-3m-sde", functools.partial(dpmpp_sample, order=3, eta=1.0),
                    "SDE-DPM-Solver++(3M): stochastic, third order on its ODE part", options=("eta", "s_noise", *_LOF),
                    stochastic=True, default_steps=20, default_spacing="logsnr"),
        SamplerSpec("euler", euler_sample, "Euler on the sigma ODE (= DDIM, eta 0)", default_steps=50),
        SamplerSpec("euler-ancestral", functools.partial(euler_sample, ancestral=True),
                    "Euler with ancestral noise (k-diffusion's)", options=("eta", "s_noise"), stochastic=True,
                    default_steps=50),
        SamplerSpec("heun", heun_sample, "Heun, second order (EDM Alg. 1; churn: Alg. 2); 2 calls a step",
                    options=("s_churn", "s_tmin", "s_tmax", "s_noise"), default_steps=19, default_spacing="karras",
                    calls_per_step=2),
        SamplerSpec("unipc", unipc_sample, "UniPC (bh2) predictor-corrector, order 2 or 3",
                    options=("order", *_LOF), default_steps=10, default_spacing="logsnr"),
    )
}
# config.py names the samplers without importing them (it stays light for --help); keep the two in step.
if tuple(SAMPLERS) != SAMPLER_NAMES:
    raise ImportError(f"config.SAMPLER_NAMES {SAMPLER_NAMES} differs from the registry {tuple(SAMPLERS)}: update it.")


def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler called name; a ValueError lists the choices."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise UsageError(f"sampler={name!r}; choose one of {sorted(SAMPLERS)}.") from None


def resolve_steps(name: str, schedule: NoiseSchedule, num_steps: int | None, spacing: str | None = None,
                  start: int | None = None) -> list[int]:
    """The timesteps sampler `name` visits for num_steps network calls (None = its default).

    Heun visits (num_steps + 1) // 2 (two calls each but the last); ddpm rounds fractional
    spacings (karras, exponential) to the model's own timesteps."""
    spec = get_sampler(name)
    top = schedule.num_timesteps if start is None else start + 1
    if num_steps is None:  # the sampler's default, but never more steps than there are
        num_steps = min(spec.default_steps or top, top)
    ts = timestep_list(schedule, spec.timesteps_for(num_steps), spacing or spec.default_spacing, start)
    return integer_timesteps(ts) if spec.integer_times else ts


def run_sampler(
    name: str,
    model: Model,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    generator: Generators = None,
    num_steps: int | None = None,
    spacing: str | None = None,
    start: int | None = None,
    clip_x0: bool = True,
    y: torch.Tensor | None = None,
    hook: Hook | None = None,
    progress: bool = False,
    **options: Any,
) -> torch.Tensor:
    """Run sampler `name` from x_T (at timestep `start`, default T-1) down to x_0.

    Args:
        num_steps: network calls (None = the sampler's default: all T for ddpm, 50 for ddim, ...).
        spacing: one of SPACINGS (None = the sampler's default).
        options: sampler-specific settings (variance for ddpm, eta for ddim, ...); None values are
            left at the sampler's default, and a setting the sampler does not take is an error.
    """
    spec = get_sampler(name)
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        raise UsageError(f"sampler {name!r} takes no {unknown}; it takes {list(spec.options) or 'no options'}.")
    ts = resolve_steps(name, schedule, num_steps, spacing, start)
    return spec.fn(model, schedule, x_T, generator, timesteps=ts, clip_x0=clip_x0, y=y, hook=hook,
                   progress=progress, **given)


__all__ = [
    "DEFAULT_SAMPLER", "SAMPLERS", "SPACINGS", "VARIANCES", "SamplerSpec", "Step", "Hook", "get_sampler",
    "resolve_steps", "run_sampler", "timestep_list", "image_generators", "randn", "ddpm_sample", "ddim_sample",
    "dpmpp_2m_sample", "dpmpp_sample", "euler_sample", "heun_sample", "unipc_sample",
]
