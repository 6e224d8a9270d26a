"""Samplers x network calls against the digits metrics, over several seeds, for a trained digits run.

    make demo && .venv/bin/python benchmarks/sampler_table.py --run runs/demo --num-images 1000 \\
        --out docs/sampler_table.md --json docs/sampler_table.json --figure docs/figures/sampler_quality.png \\
        --grids docs/figures/sampler_grids.png

Every sampler at 5, 10, 15, 20, 25 and 50 network calls (its default spacing), DDPM at all T,
and each few-step sampler at 10 and 20 calls with the other spacing (seed 0 only). Rows give the
mean and the spread (min..max) over the seeds. Images are scored against the reference half of
the digits (see docs/metric_calibration.md for what the metrics can tell apart).

    # the sampler menu (solver x sigma schedule at 5-20 calls; references DDPM-T and DDIM-50):
    .venv/bin/python benchmarks/sampler_table.py --run runs/demo --menu --out docs/sampler_menu.md \
        --json docs/sampler_menu.json --figure docs/figures/sampler_menu.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ddpm.generation import load_model, sample_images
from ddpm.images import grid_image, pyplot, save_figure, to_uint8
from ddpm.metrics import digits_score, heldout_digits, train_digits_classifier
from ddpm.runtime import resolve_precision
from ddpm.samplers import SAMPLERS

CALLS = (5, 10, 15, 20, 25, 50)
FEW_STEP = ("ddim", "dpmpp-2m", "dpmpp-2m-sde")
# Grids shown side by side in the figure: (sampler, calls).
SHOWN = (("ddpm", None), ("ddim", 50), ("ddim", 10), ("dpmpp-2m", 10), ("dpmpp-2m-sde", 10), ("dpmpp-2m-sde", 20),
         ("dpmpp-2m", 20), ("ddpm", 50))


MENU_CALLS = (5, 6, 8, 10, 15, 20)
# (sampler, spacing, options) rows of the menu; lower_order_final is the samplers' default below 15 calls.
MENU = (
    ("dpmpp-2m", "logsnr", {}), ("dpmpp-2m", "karras", {}), ("dpmpp-2m", "uniform", {}),
    ("dpmpp-2m", "logsnr", {"lower_order_final": False}), ("dpmpp-2m", "uniform", {"lower_order_final": False}),
    ("dpmpp-2m-sde", "logsnr", {}), ("dpmpp-2m-sde", "karras", {}),
    ("dpmpp-3m-sde", "logsnr", {}), ("dpmpp-3m-sde", "karras", {}),
    ("unipc", "logsnr", {}), ("unipc", "karras", {}), ("unipc", "logsnr", {"order": 3}),
    ("heun", "karras", {}), ("euler", "karras", {}), ("euler-ancestral", "karras", {}),
)


def parse_rows(text: str) -> list[tuple[str, str, dict, tuple[int, ...]]]:
    """--rows 'SAMPLER:SPACING:CALLS,..[:KEY=VALUE,..];...' as (sampler, spacing, options, calls)."""
    out = []
    for item in filter(None, text.split(";")):
        name, spacing, calls, *opts = item.split(":")
        options = {}
        for kv in filter(None, ",".join(opts).split(",")):
            key, value = kv.split("=")
            options[key] = {"True": True, "False": False}.get(value, None)
            if options[key] is None:
                options[key] = float(value) if "." in value else int(value)
        out.append((name, spacing, options, tuple(int(c) for c in calls.split(","))))
    return out


def menu_configs(T: int, menu=MENU) -> list[tuple[str, int, str, dict]]:
    """(sampler, calls, spacing, options) for every row of the menu table, references first."""
    rows = [("ddpm", T, "uniform", {}), ("ddim", 50, "uniform", {})]
    for name, spacing, options, *calls in menu:
        rows += [(name, k, spacing, options) for k in (calls[0] if calls else MENU_CALLS)]
    return rows


def configs(T: int) -> list[tuple[str, int, str, bool]]:
    """(sampler, calls, spacing, all seeds) for every row of the table."""
    rows = [("ddpm", T, "uniform", True)]
    for name in ("ddpm", *FEW_STEP):
        rows += [(name, k, SAMPLERS[name].default_spacing, True) for k in CALLS]
    for name in FEW_STEP:
        other = "uniform" if SAMPLERS[name].default_spacing == "logsnr" else "logsnr"
        rows += [(name, k, other, False) for k in (10, 20)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder of a digits model")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated sampling seeds")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--figure", help="quality against network calls, as a PNG")
    parser.add_argument("--grids", help="one figure of 36-image grids side by side for a few settings")
    parser.add_argument("--only", help="comma-separated sampler names to run (default: all)")
    parser.add_argument("--consistency", metavar="PNG", help="only draw one seed's 12 images with --sampler-for-consistency "
                        "at 5, 8, 10, 20, 50 calls, one row each (the same pictures, sharper with more calls)")
    parser.add_argument("--sampler-for-consistency", default="dpmpp-2m-sde")
    parser.add_argument("--menu", action="store_true", help="the sampler-menu rows (MENU) instead of the classic table")
    parser.add_argument("--rows", help="with --menu: measure these rows instead of MENU, as "
                        "'SAMPLER:SPACING:CALLS[,CALLS..][:KEY=VALUE,..];...' (references always)")
    parser.add_argument("--calls", help="comma-separated: only these call counts (with --menu; references always)")
    parser.add_argument("--include", help="rows measured earlier (this script's JSON lines, e.g. an interrupted "
                        "run's output): kept, and not measured again")
    args = parser.parse_args()

    loaded = load_model(args.run)
    dtype = resolve_precision(args.precision, torch.device("cpu"))
    if args.consistency:
        consistency_figure(loaded, args.sampler_for_consistency, dtype, args.consistency)
        return
    classifier, accuracy = train_digits_classifier()
    seeds = [int(s) for s in args.seeds.split(",")]
    T = loaded.schedule.num_timesteps
    results, shown = [], {}
    if args.include:
        text = Path(args.include).read_text()
        results = json.loads(text) if text.lstrip().startswith("[") else \
            [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    # One row per (sampler, actual calls, spacing, options, seed): Heun asked for 6 calls makes 5.
    key = lambda r: (r["sampler"], r["calls"], r["spacing"], _opts(r.get("options", {})), r["seed"])  # noqa: E731
    results = list({key(r): r for r in reversed(results)}.values())[::-1]
    done = {key(r) for r in results}
    rows = menu_configs(T, parse_rows(args.rows) if args.rows else MENU) if args.menu else \
        [(n, k, sp, {}, all_seeds) for n, k, sp, all_seeds in configs(T)]
    wanted_calls = {int(c) for c in args.calls.split(",")} if args.calls else None
    for name, calls, spacing, options, *rest in rows:
        all_seeds = rest[0] if rest else True
        if args.only and name not in args.only.split(","):
            continue
        if wanted_calls and args.menu and (name, calls) not in (("ddpm", T), ("ddim", 50)) and calls not in wanted_calls:
            continue
        for seed in seeds if all_seeds else seeds[:1]:
            actual = SAMPLERS[name].calls(SAMPLERS[name].timesteps_for(calls))
            if (name, actual, spacing, _opts(options), seed) in done:
                continue
            done.add((name, actual, spacing, _opts(options), seed))
            t0 = time.perf_counter()
            x = sample_images(loaded.model, loaded.schedule, args.num_images, seed=seed, sampler=name, num_steps=calls,
                              spacing=spacing, clip_x0=loaded.diffusion_config.clip_x0, batch_size=250,
                              autocast_dtype=dtype, **options,
                              **({"variance": loaded.diffusion_config.sample_variance} if name == "ddpm" else {}))
            seconds = time.perf_counter() - t0
            s = digits_score(x, classifier, accuracy)
            results.append({"sampler": name, "calls": actual,
                            "spacing": spacing, "options": options, "seed": seed, "seconds": seconds,
                            "fd_digits": s.fd_digits, "kd_digits": s.kd_digits, "precision": s.precision,
                            "recall": s.recall, "confidence": s.confidence, "coverage": s.coverage})
            print(json.dumps(results[-1]), flush=True)
            key = (name, None if calls == T else calls)
            if seed == seeds[0] and spacing == SAMPLERS[name].default_spacing and key in SHOWN:
                shown[key] = x[:36]
    for name, calls in SHOWN if args.grids else ():  # grids of rows that came from --include
        if (name, calls) not in shown:
            shown[(name, calls)] = sample_images(
                loaded.model, loaded.schedule, 36, seed=seeds[0], sampler=name, num_steps=calls or T,
                clip_x0=loaded.diffusion_config.clip_x0, autocast_dtype=dtype,
                **({"variance": loaded.diffusion_config.sample_variance} if name == "ddpm" else {}))
    real = digits_score(heldout_digits()[0], classifier, accuracy)
    text = table(results, real, loaded, args, dtype, accuracy)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.figure:
        (menu_figure if args.menu else quality_figure)(results, real.fd_digits, T, args.figure)
    if args.grids and shown:
        grids_figure(shown, T, args.grids)


def _opts(options: dict) -> str:
    """Options as a short, stable label ('' for none)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items()))


def _spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ({format(min(values), fmt)}..{format(max(values), fmt)})"


def table(results: list[dict], real, loaded, args, dtype, accuracy: float) -> str:
    """The markdown table: one row per (sampler, calls, spacing), mean (min..max) over seeds."""
    rows = [f"Checkpoint `{loaded.path}` (step {loaded.step}), {args.num_images} images per row and seed, "
            f"{'bf16 autocast' if dtype else 'fp32'}, torch threads {torch.get_num_threads()}, batch 250; digits "
            f"classifier held-out accuracy {accuracy:.3f}. Mean (min..max) over seeds {args.seeds} where several.",
            "", "| sampler | network calls | spacing | FD-digits | recall | precision | KD x1000 | s per 1000 images |",
            "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["sampler"], r["calls"], r["spacing"], _opts(r.get("options", {}))), []).append(r)
    for (name, calls, spacing, opts), rs in groups.items():
        per_k = 1000 / args.num_images
        label = f"{name} ({opts})" if opts else name
        rows.append(f"| {label} | {calls} | {spacing} | {_spread([r['fd_digits'] for r in rs], '.2f')} | "
                    f"{_spread([r['recall'] for r in rs], '.3f')} | {_spread([r['precision'] for r in rs], '.3f')} | "
                    f"{_spread([r['kd_digits'] for r in rs], '.1f')} | {_spread([r['seconds'] * per_k for r in rs], '.1f')} |")
    rows.append(f"| real held-out digits (N = {real.num_samples}) | - | - | {real.fd_digits:.2f} | {real.recall:.3f} | "
                f"{real.precision:.3f} | {real.kd_digits:.1f} | - |")
    return "\n".join(rows) + "\n"


def quality_figure(results: list[dict], real_fd: float, T: int, path: str) -> Path:
    """FD-digits against network calls, one line per sampler (default spacing), with the seed spread."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in ("ddpm", *FEW_STEP):
        pts: dict[int, list[float]] = {}
        for r in results:
            if r["sampler"] == name and r["spacing"] == SAMPLERS[name].default_spacing and r["calls"] != T:
                pts.setdefault(r["calls"], []).append(r["fd_digits"])
        if not pts:
            continue
        ks = sorted(pts)
        mean = [statistics.mean(pts[k]) for k in ks]
        ax.plot(ks, mean, marker="o", label=name)
        ax.fill_between(ks, [min(pts[k]) for k in ks], [max(pts[k]) for k in ks], alpha=0.2)
    full = [r["fd_digits"] for r in results if r["sampler"] == "ddpm" and r["calls"] == T]
    if full:
        ax.axhline(statistics.mean(full), color="k", ls="--", lw=1, label=f"ddpm, all {T} steps")
    ax.axhline(real_fd, color="gray", ls=":", lw=1, label="real held-out digits")
    ax.set_xlabel("network calls per image")
    ax.set_ylabel("FD-digits (lower is better)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("Sample quality against sampling cost (make demo model)", fontsize=10)
    return save_figure(fig, path)


def menu_figure(results: list[dict], real_fd: float, T: int, path: str) -> Path:
    """FD-digits and precision against network calls, one line per (sampler, spacing, options), seed means;
    DDPM at all T and DDIM-50 as reference lines."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    lines: dict[str, dict[int, list[dict]]] = {}
    refs: dict[str, list[dict]] = {}
    for r in results:
        if (r["sampler"], r["calls"]) in (("ddpm", T), ("ddim", 50)):
            refs.setdefault(f"{r['sampler']}-{r['calls']}", []).append(r)
            continue
        opts = _opts(r.get("options", {}))
        label = f"{r['sampler']} {r['spacing']}" + (f" ({opts})" if opts else "")
        lines.setdefault(label, {}).setdefault(r["calls"], []).append(r)
    for ax, key, name in ((axes[0], "fd_digits", "FD-digits (lower is better)"), (axes[1], "precision", "precision")):
        for i, (label, by_calls) in enumerate(lines.items()):
            ks = sorted(by_calls)
            ax.plot(ks, [statistics.mean(r[key] for r in by_calls[k]) for k in ks], marker=".", label=label,
                    color=f"C{i % 10}", ls="-" if i < 10 else "--")
        for j, (label, rs) in enumerate(refs.items()):
            ax.axhline(statistics.mean(r[key] for r in rs), color="k", ls=(":", "-.")[j % 2], lw=1, label=label)
        ax.set_xlabel("network calls per image")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if key == "fd_digits":
            ax.set_yscale("log")
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle("The sampler menu on the demo model (mean over seeds)", fontsize=10)
    return save_figure(fig, path)


def consistency_figure(loaded, sampler: str, dtype, path: str, calls=(5, 8, 10, 20, 50), n: int = 12) -> Path:
    """Seed 0's first n images at each number of calls, one row each."""
    plt = pyplot()
    fig, axes = plt.subplots(len(calls), 1, figsize=(n * 0.6, len(calls) * 0.75))
    for ax, k in zip(axes, calls, strict=True):
        x = sample_images(loaded.model, loaded.schedule, n, seed=0, sampler=sampler, num_steps=k,
                          clip_x0=loaded.diffusion_config.clip_x0, autocast_dtype=dtype)
        ax.imshow(grid_image(to_uint8(x), nrow=n, min_side=0), cmap="gray")
        ax.set_ylabel(f"{k} calls", rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{sampler}, seed 0: the same images at 5 to 50 network calls", fontsize=9)
    return save_figure(fig, path)


def grids_figure(shown: dict, T: int, path: str) -> Path:
    """36-image grids of the SHOWN settings side by side, labelled."""
    plt = pyplot()
    keys = [k for k in SHOWN if k in shown]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.3 * len(keys), 2.7), squeeze=False)
    for ax, (name, calls) in zip(axes[0], keys, strict=True):
        ax.imshow(grid_image(to_uint8(shown[(name, calls)]), nrow=6, min_side=0), cmap="gray")
        ax.set_title(f"{name}, {calls or T} calls", fontsize=9)
        ax.axis("off")
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
