"""Noise that holds across step counts: one Brownian motion per image, sampled on a seeded tree.

A stochastic sampler adds noise z_k at each step k. Drawn fresh from a generator, z_k depends on
how many steps came before, so one seed at 10 calls and at 20 calls gives unrelated images. Here
z for the step from noise level a to level b is the normalised increment (W(b) - W(a)) /
sqrt(|b - a|) of one Brownian motion W per image, over a fixed "noise clock" tau in [0, 1]
(log sigma, rescaled over the model's range). W at any tau comes from a binary tree of Brownian
bridges whose every node draws from its own seed (image seed, depth, index), as k-diffusion's
BrownianTreeNoiseSampler does; below the tree's leaves, one more bridge draw seeded by tau itself
places W(tau) between the leaf's ends. W is one function of tau, so a coarse step's increment is
the sum of the fine steps' increments over the same interval: the same picture, resolved more
finely. (Two readings inside one leaf, 1/4096 of the clock apart, get independent bridge draws;
steps that small fall back to noise seeded by their interval.)

The normal draws come from a counter-based hash (one vectorised pass for the whole batch and
image), not from a generator per image and node: a step costs a few element-wise operations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

DEPTH = 12  # tree depth: 4096 leaves on the clock
_M32 = 0xFFFFFFFF
_MASK = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 64-bit key from integers (SplitMix64 steps): neighbouring inputs give unrelated keys."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK)) & _MASK
        h = (h + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A low-bias 32-bit integer hash (C. Wellons' hash-prospector constants) on int64 tensors holding
    values below 2^32; both constants are below 2^31, so no product overflows int64."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _M32
    return x ^ (x >> 15)


def _words(keys: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """64-bit keys as an int64 tensor of their (low, high) 32-bit words, (len(keys), 2)."""
    return torch.tensor([[k & _M32, (k >> 32) & _M32] for k in keys], dtype=torch.int64, device=device)


def hashed_normal(image_keys: torch.Tensor, node: int, shape: Sequence[int]) -> torch.Tensor:
    """(B, *shape) standard normal float32 draws; row b depends only on (image_keys[b], node) (Box-Muller).

    image_keys: (B, 2) int64, from _words; node: any integer naming the draw."""
    n = math.prod(shape)
    node_lo, node_hi = node & _M32, (node >> 32) & _M32
    counter = torch.arange(2 * n, dtype=torch.int64, device=image_keys.device)[None]
    h = _hash32(_hash32(counter ^ node_lo) ^ image_keys[:, :1])
    h = _hash32(h ^ image_keys[:, 1:] ^ node_hi)
    u = (h.double() + 0.5) * 2.0**-32  # in (0, 1)
    z = torch.sqrt(-2.0 * torch.log(u[:, :n])) * torch.cos(2.0 * math.pi * u[:, n:])
    return z.float().view(image_keys.shape[0], *shape)


def _draw_key(generator: torch.Generator | None) -> int:
    kw = {} if generator is None else {"generator": generator, "device": generator.device}
    return int(torch.randint(0, 2**62, (1,), **kw).item())


def image_seeds(generator: torch.Generator | Sequence[torch.Generator] | None, batch: int) -> list[int]:
    """One seed per image, drawn from its generator (or, with one generator, one draw and the row).

    Drawn from the generator's current state, not its initial seed: a sampler takes it right after
    x_T, so it is the same at any number of steps, and a generator used again draws a new path."""
    if generator is None or isinstance(generator, torch.Generator):
        base = _draw_key(generator)
        return [_mix(base, i) for i in range(batch)]
    return [_draw_key(g) for g in generator]


class BrownianNoise:
    """Standard normal noise for the step between two noise levels, from each image's Brownian motion.

    Call it with the two levels as sigma = sqrt((1 - alphā) / alphā); it returns a (B, ...) tensor
    of N(0, 1) entries that depends only on (image seed, the two levels). Non-overlapping
    intervals give independent noise, as fresh draws would.
    """

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], sigma_min: float, sigma_max: float,
                 device: torch.device | str = "cpu") -> None:
        """seeds: one per image; shape: one image's (C, H, W); the model's sigma range sets the clock
        (levels up to 2 sigma_max fit on it, for the noise Heun's churn adds above a level)."""
        self.shape = tuple(shape)
        self.keys = _words([_mix(s) for s in seeds], device)
        self.log_lo, self.log_hi = math.log(sigma_min), math.log(2.0 * sigma_max)
        self._path: list[tuple[int, int, torch.Tensor]] = []  # (lo, hi, W(mid)) per depth of the last walk
        self._root = self._draw(0, 0)  # W(1); W(0) = 0
        self._last: dict[float, torch.Tensor] = {}  # W at the last two readings (a step's end starts the next)

    def tau(self, sigma: float) -> float:
        """The clock: log sigma rescaled to [0, 1] over the model's range (clamped)."""
        if math.isinf(sigma):
            return 1.0
        if sigma <= 0.0:
            return 0.0
        return min(max((math.log(sigma) - self.log_lo) / (self.log_hi - self.log_lo), 0.0), 1.0)

    def _draw(self, *node: int) -> torch.Tensor:
        return hashed_normal(self.keys, _mix(*node), self.shape)

    def brownian(self, tau: float) -> torch.Tensor:
        """W(tau) for every image: bisect [0, 1] down to tau's leaf, then bridge inside the leaf."""
        leaves = 1 << DEPTH
        target = tau * leaves  # in leaf units
        lo, hi = 0, leaves
        w_lo, w_hi = torch.zeros_like(self._root), self._root
        path = []
        for depth in range(1, DEPTH + 1):
            if target in (lo, hi):
                break
            mid = (lo + hi) // 2
            cached = self._path[depth - 1] if depth - 1 < len(self._path) else None
            if cached is not None and cached[:2] == (lo, hi):
                w_mid = cached[2]
            else:  # Brownian bridge between (lo, w_lo) and (hi, w_hi): mean halfway, variance (hi - lo) / 4
                w_mid = 0.5 * (w_lo + w_hi) + math.sqrt((hi - lo) / 4.0 / leaves) * self._draw(depth, mid)
            path.append((lo, hi, w_mid))
            if target < mid:
                hi, w_hi = mid, w_mid
            else:
                lo, w_lo = mid, w_mid
        self._path = path  # the next reading (a neighbouring level) reuses the shared top of this walk
        if target == lo:
            return w_lo
        if target == hi:
            return w_hi
        f = (target - lo) / (hi - lo)  # inside a leaf: a bridge draw seeded by tau itself
        bridge = math.sqrt(f * (1.0 - f) * (hi - lo) / leaves) * self._draw(DEPTH + 1, int(tau * 2.0**52))
        return w_lo + f * (w_hi - w_lo) + bridge

    def __call__(self, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """(W(tau_to) - W(tau_from)) / sqrt(|tau_to - tau_from|): N(0, 1) noise for the step from one level to the other."""
        a, b = self.tau(sigma_from), self.tau(sigma_to)
        if int(a * (1 << DEPTH)) == int(b * (1 << DEPTH)):  # one leaf: no tree between them; the interval seeds it
            return self._draw(DEPTH + 2, int(a * 2.0**52), int(b * 2.0**52))
        w = {t: self._last[t] if t in self._last else self.brownian(t) for t in (a, b)}
        self._last = w
        return (w[b] - w[a]) / math.sqrt(abs(b - a))
