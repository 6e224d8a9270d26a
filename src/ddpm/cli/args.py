"""Config fields as flags: each --flag's type comes from the field's annotation and its help from
the field's metadata (config._f), so a new field is a new flag with nothing else to edit."""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any

from ..config import PRESETS, SPACINGS, DiffusionConfig, ModelConfig


def int_list(flag: str):
    """An argparse type for "1,2,4" (brackets allowed) whose errors name the flag and the bad item."""

    def parse(text: str) -> tuple[int, ...]:
        body = text.strip().strip("[]()")
        items = [v.strip() for v in body.split(",")] if body else []
        out = []
        for item in items:
            try:
                out.append(int(item))
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{flag} takes comma-separated integers like 1,2,4; {item!r} in {text!r} is not an integer") from None
        return tuple(out)

    parse.__name__ = "integer list"
    return parse


def bounded(kind: type, low: float | None = None, high: float | None = None, what: str = ""):
    """An argparse type: a number of `kind` in [low, high], else a usage error naming the range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value):  # nan passes every range check below, and no flag has a use for inf
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {span}{what}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = bounded(int, 1)
non_negative_int = bounded(int, 0)
non_negative_float = bounded(float, 0.0)


def _base_type(annotation: Any) -> Any:
    """int for `int`, float for `float | None`, and so on (the non-None member of an Optional)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: frozenset[str] = frozenset()) -> None:
    """One --flag per config field, default None so that presets and dataclass defaults apply."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-")
        text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
        kind = _base_type(hints[f.name])
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(flag, dest=f.name, type=int_list(flag), default=None, metavar="I,J,..", help=text)
        elif kind is int:
            group.add_argument(flag, dest=f.name, type=int, default=None, metavar="N", help=text)
        elif kind is float:
            group.add_argument(flag, dest=f.name, type=float, default=None, metavar="X", help=text)
        elif kind is str:
            group.add_argument(flag, dest=f.name, type=str, default=None, help=text)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for type {kind!r}; skip it or add one.")


def configs_from_args(args: argparse.Namespace) -> tuple[DiffusionConfig, ModelConfig]:
    """The configs a parsed `ddpm train` command line describes: preset, then explicit flags."""
    diff_kwargs: dict[str, Any] = {}
    model_kwargs: dict[str, Any] = {}
    if args.preset:
        diff_kwargs.update(PRESETS[args.preset][0])
        model_kwargs.update(PRESETS[args.preset][1])
    for cls, kwargs in ((DiffusionConfig, diff_kwargs), (ModelConfig, model_kwargs)):
        for f in dataclasses.fields(cls):
            value = getattr(args, f.name, None)
            if value is not None:
                kwargs[f.name] = value
    return DiffusionConfig(**diff_kwargs), ModelConfig(**model_kwargs)


def add_sampler_options(p: argparse.ArgumentParser) -> None:
    """The flags that tune a sampler (each applies to the samplers its help names; another is refused)."""
    p.add_argument("--sigmas", "--spacing", dest="spacing", choices=SPACINGS, default=None,
                   help="where the steps lie: uniform in t; uniform in log-SNR (both on the model's own "
                   "timesteps); karras (Karras et al. 2022, rho 7); exponential (log-SNR, between timesteps). "
                   "All but uniform spread the steps after T from log-SNR -10.5 at the noisiest. "
                   "Default: the sampler's own")
    p.add_argument("--eta", type=non_negative_float, default=None,
                   help="noise: ddim (0 = deterministic, default), euler-ancestral and dpmpp-*-sde (1 = default)")
    p.add_argument("--s-noise", type=non_negative_float, default=None,
                   help="scale of the added noise: euler-ancestral, heun (churn), dpmpp-*-sde (default: 1)")
    p.add_argument("--s-churn", type=non_negative_float, default=None, help="heun: EDM's S_churn (default: 0)")
    p.add_argument("--s-tmin", type=non_negative_float, default=None, help="heun: churn only at sigma >= this (default: 0)")
    p.add_argument("--s-tmax", type=non_negative_float, default=None, help="heun: churn only at sigma <= this (default: inf)")
    p.add_argument("--lower-order-final", action=argparse.BooleanOptionalAction, default=None,
                   help="dpmpp-*: first order into the last timestep (3M: second into the one before); unipc: "
                   "lower orders at the end as diffusers does (order 3 only). Default: on for dpmpp-2m, else "
                   "below 15 calls")
    p.add_argument("--order", type=bounded(int, 2, 3), default=None, help="unipc: 2 or 3 (default: 2)")


def sampler_options(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler settings add_sampler_options parsed (None = not given)."""
    return {k: getattr(args, k) for k in ("eta", "s_noise", "s_churn", "s_tmin", "s_tmax", "lower_order_final", "order")}
