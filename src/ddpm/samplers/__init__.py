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
from .base import Generators, Hook, Model, Step, image_generators, randn, timestep_list
from .ddim import ddim_sample
from .ddpm import VARIANCES, ddpm_sample
from .dpmpp import dpmpp_2m_sample


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


SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec("ddpm", ddpm_sample, "ancestral sampling (Algorithm 2); all T steps, or K respaced ones",
                    options=("variance",), stochastic=True),
        SamplerSpec("ddim", ddim_sample, "DDIM (eta = 0: deterministic)", options=("eta",), default_steps=50),
        SamplerSpec("dpmpp-2m", dpmpp_2m_sample, "DPM-Solver++(2M): deterministic, second order",
                    default_steps=20, default_spacing="logsnr"),
        SamplerSpec("dpmpp-2m-sde", functools.partial(dpmpp_2m_sample, stochastic=True), "SDE-DPM-Solver++(2M): stochastic, second order",
                    stochastic=True, default_steps=20, default_spacing="logsnr"),
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
    """The timesteps sampler `name` visits for num_steps network calls (None = its default)."""
    spec = get_sampler(name)
    if num_steps is None:  # the sampler's default, but never more steps than there are
        top = schedule.num_timesteps if start is None else start + 1
        num_steps = min(spec.default_steps or top, top)
    return timestep_list(schedule, num_steps, spacing or spec.default_spacing, start)


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
        spacing: "uniform" or "logsnr" (None = the sampler's default).
        options: sampler-specific settings (variance for ddpm, eta for ddim); None values are
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
    "dpmpp_2m_sample",
]
