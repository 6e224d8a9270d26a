"""Can the digits metrics tell real digits from blurred or noised ones? Real held-out digits, the same
blurred and noised, each written as a samples .npz and scored through `ddpm eval`.

    .venv/bin/python benchmarks/metric_calibration.py --out docs/metric_calibration.md

A metric that scores a degraded copy of the data as well as the data cannot choose a sampler.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm.cli import main as ddpm_main
from ddpm.images import save_npz
from ddpm.metrics import heldout_digits


def gaussian_blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Blur (N, 1, H, W) images with a Gaussian of sigma_px pixels (replicated borders)."""
    radius = max(1, int(3 * sigma_px + 0.5))
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma_px**2))
    k = k / k.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def degraded(real: torch.Tensor) -> dict[str, torch.Tensor]:
    """The calibration sets: real, blurred at 0.5 and 1 px, noised at sigma 0.05 and 0.1 of the range."""
    gen = torch.Generator().manual_seed(0)
    out = {"real (held-out half)": real}
    for s in (0.5, 1.0):
        out[f"blurred, sigma {s:g} px"] = gaussian_blur(real, s)
    for s in (0.05, 0.1):  # of the [0, 1] intensity range, i.e. 2 s in [-1, 1]
        out[f"noised, sigma {s:g}"] = (real + 2 * s * torch.randn(real.shape, generator=gen)).clamp(-1, 1)
    return out


def evaluate(x: torch.Tensor, folder: Path, name: str) -> dict:
    """`ddpm eval` of x, through the command line's own code, as a dict."""
    path = save_npz(x, folder / f"{name}.npz")
    with contextlib.redirect_stdout(io.StringIO()):
        code = ddpm_main(["eval", str(path), "--dataset", "digits", "--json", str(folder / f"{name}.json")])
    if code:
        raise SystemExit(f"ddpm eval failed on {path}")
    return json.loads((folder / f"{name}.json").read_text())["digits"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the markdown table here")
    args = parser.parse_args()
    real = heldout_digits()[0]
    rows = [f"| images (N = {len(real)}) | FD-digits | KD-digits x1000 | precision | recall | confidence |",
            "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, x) in enumerate(degraded(real).items()):
            s = evaluate(x, Path(tmp), f"set{i}")
            rows.append(f"| {name} | {s['fd_digits']:.2f} | {s['kd_digits']:.2f} | {s['precision']:.3f} | "
                        f"{s['recall']:.3f} | {s['confidence']:.3f} |")
            print(rows[-1], flush=True)
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
