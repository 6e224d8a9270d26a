"""Editing on the demo model: RePaint with and without resampling on digits with a band erased, and
the inputs and figures of docs/results.md ("Editing").

    .venv/bin/python benchmarks/edit_table.py --run runs/demo --num-images 200 --out docs/edit_table.md \\
        --inputs docs/edit

Inpainting is scored on held-out digits with rows 5..10 of 16 erased: how often the digits
classifier gives the completed digit its true label, and the mean squared error inside the band.
--inputs writes two digits and the band mask as PNGs, for the `ddpm edit` commands in the docs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

from ddpm.editing import inpaint, repaint_levels
from ddpm.generation import load_model, network
from ddpm.metrics import heldout_digits, train_digits_classifier
from ddpm.runtime import resolve_precision
from ddpm.samplers import image_generators

SETTINGS = ((1, 10), (5, 10), (10, 5))  # RePaint's (U, J)


def band_mask(size: int) -> torch.Tensor:
    """(1, 1, S, S): 1 on rows 5/16 .. 10/16 of the image (the middle of a digit), 0 elsewhere."""
    m = torch.zeros(1, 1, size, size)
    m[..., size * 5 // 16: size * 10 // 16, :] = 1
    return m


def save_png(x: torch.Tensor, path: Path) -> None:
    arr = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument("--inputs", help="folder for digit_a.png, digit_b.png and band.png")
    args = parser.parse_args()
    x, y = heldout_digits()
    if args.inputs:
        save_png(x[0], Path(args.inputs) / "digit_a.png")
        save_png(x[7], Path(args.inputs) / "digit_b.png")
        save_png(band_mask(16)[0] * 2 - 1, Path(args.inputs) / "band.png")
    loaded = load_model(args.run)
    size = loaded.model_config.image_size
    x, y = x[: args.num_images], y[: args.num_images]
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    mask = band_mask(size)
    classifier, _ = train_digits_classifier()
    net = network(loaded.model, resolve_precision("auto", torch.device("cpu")))

    band = mask.bool().expand_as(x)
    rows = [f"Checkpoint `{loaded.path}` (step {loaded.step}), {len(x)} held-out digits, rows 5..10 of 16 erased, "
            "seed 0.", "", "| RePaint U (resample) | J (jump) | network calls | label kept | MSE in the band | seconds |",
            "|---|---|---|---|---|---|"]
    with torch.no_grad():
        erased = x.masked_fill(band, -1.0)  # the band left blank (background)
        acc = (classifier(erased).argmax(1) == y).float().mean().item()
    rows.append(f"| band left blank, no model | - | 0 | {acc:.3f} | {((erased - x)[band] ** 2).mean():.3f} | - |")
    for u, j in SETTINGS:
        t0 = time.perf_counter()
        out = inpaint(net, loaded.schedule, x, mask, image_generators(0, range(len(x))), j, u,
                      loaded.diffusion_config.sample_variance, loaded.diffusion_config.clip_x0)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            acc = (classifier(out).argmax(1) == y).float().mean().item()
        levels = repaint_levels(loaded.schedule.num_timesteps, j, u)
        calls = sum(b < a for a, b in zip(levels, levels[1:], strict=False))  # one call per step down
        rows.append(f"| {u} | {j} | {calls} | {acc:.3f} | {((out - x)[band] ** 2).mean():.3f} | {seconds:.0f} |")
        print(rows[-1], flush=True)
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
