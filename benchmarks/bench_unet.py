"""Our U-Net against diffusers' UNet2DModel at equal configuration, side by side in one process.

    make bench                                    # both sizes, writes docs/bench_unet_cpu.md (+ .json)
    .venv/bin/python benchmarks/bench_unet.py --sizes cpu --repeats 5

For each size: parameters and forward FLOPs (torch.utils.flop_counter) of both models; training
step (forward, loss, backward, AdamW as each side ships it) images/s and sampling-step latency at batch 16, in fp32 and
with bf16 autocast; peak training memory (RSS growth over the steps, in a fresh subprocess per model);
the achieved GFLOP/s against this machine's measured matmul peak. Runs alternate the two models
and report medians and our/their ratios. diffusers is a benchmark-only dependency (`.[bench]`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm import ModelConfig
from ddpm.training.trainer import adamw
from ddpm.unet import UNet

SIZES = {
    # 32x32 digits-like widths: 3 levels (32, 16, 8), attention at 16x16 and in the bottleneck.
    "cpu": dict(config=ModelConfig(lowest_resolution_size=8, dim_multiply=(1, 2, 2), transformer_layers=(1,),
                                   base_dim=32, image_channels=1, norm_groups=8, dropout=0.0,
                                   embedding_placement="after_conv1"), train_batch=32),
    # A wider 32x32 RGB model (8.95M parameters): widths 64/128/128/128, attention at 16x16 and in
    # the bottleneck, batch 16: the configuration issue 14 compared with diffusers.
    "wide": dict(config=ModelConfig(lowest_resolution_size=4, dim_multiply=(1, 2, 2, 2), transformer_layers=(1,),
                                    base_dim=64, image_channels=3, dropout=0.0, embedding_placement="after_conv1"),
                 train_batch=16),
    # The seed's 128x128 model (61M parameters).
    "seed": dict(config=ModelConfig(lowest_resolution_size=8, dim_multiply=(1, 2, 2, 4, 8), transformer_layers=(3,),
                                    base_dim=64, image_channels=3, dropout=0.0, embedding_placement="after_conv1"),
                 train_batch=4),
}
SAMPLE_BATCH = 16
DEVICE = torch.device("cpu")  # set by --device; "cuda" runs the same comparison on a GPU


def synced_time(device: torch.device) -> float:
    """A timestamp after all work queued on device has finished (plain perf_counter on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _now() -> float:
    return synced_time(DEVICE)


def diffusers_unet(cfg: ModelConfig) -> torch.nn.Module:
    """diffusers' UNet2DModel configured like ours: same widths, blocks, attention levels, groups, 1 head."""
    from diffusers import UNet2DModel

    levels = len(cfg.dim_multiply)
    widths = tuple(cfg.base_dim * m for m in cfg.dim_multiply)
    attn = set(cfg.transformer_layers)
    # diffusers takes one head width for every attention layer: take the narrowest attention
    # level's width, so that level has 1 head like ours (a wider bottleneck then gets 2-4 heads;
    # heads change neither parameters nor FLOPs).
    head_dim = min([widths[i] for i in attn] + [widths[-1]])
    return UNet2DModel(
        sample_size=cfg.image_size, in_channels=cfg.image_channels, out_channels=cfg.image_channels,
        layers_per_block=cfg.num_res_blocks, block_out_channels=widths,
        down_block_types=tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(levels)),
        up_block_types=tuple("AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(levels))),
        norm_num_groups=cfg.norm_groups, attention_head_dim=head_dim, dropout=cfg.dropout,
        add_attention=True, time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1,
    )


class _Ours(torch.nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.net = UNet(cfg)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)


class _Theirs(torch.nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.net = diffusers_unet(cfg)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t).sample


def build(which: str, cfg: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return (_Ours(cfg) if which == "ours" else _Theirs(cfg)).to(DEVICE)


SAME_OPTIMIZER = False  # set by --same-optimizer: both sides take plain AdamW, so only the networks differ


def optimizer_for(which: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Each side's optimizer as it ships: ours as our trainer builds it (PyTorch's fused AdamW kernel),
    diffusers' as its examples/unconditional_image_generation/train_unconditional.py does (plain AdamW)."""
    if which == "ours" and not SAME_OPTIMIZER:
        return adamw(model.parameters(), 1e-4, 0.0, DEVICE)
    return torch.optim.AdamW(model.parameters(), lr=1e-4)


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: torch.nn.Module, cfg: ModelConfig) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, cfg.image_channels, cfg.image_size, cfg.image_size, device=DEVICE)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.tensor([10], device=DEVICE))
    return counter.get_total_flops()


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    n = n if DEVICE.type == "cpu" else 8192
    a, b = torch.randn(n, n, dtype=dtype, device=DEVICE), torch.randn(n, n, dtype=dtype, device=DEVICE)
    a @ b
    times = []
    for _ in range(reps):
        t0 = _now()
        a @ b
        times.append(_now() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def _autocast(bf16: bool):
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor,
               noise: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """One training step as the benchmarks time it: forward (autocast to dtype, or fp32 for None),
    MSE against the noise, backward, optimizer step. Returns the loss (a device tensor)."""
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(x, t)
    loss = F.mse_loss(out.float(), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def train_step_time(model: torch.nn.Module, opt: torch.optim.Optimizer, cfg: ModelConfig, batch: int, bf16: bool) -> float:
    x = torch.randn(batch, cfg.image_channels, cfg.image_size, cfg.image_size, device=DEVICE)
    noise = torch.randn_like(x)
    t = torch.randint(0, 1000, (batch,), device=DEVICE)
    t0 = _now()
    train_step(model, opt, x, t, noise, torch.bfloat16 if bf16 else None)
    return _now() - t0


@torch.inference_mode()
def sample_step_time(model: torch.nn.Module, cfg: ModelConfig, bf16: bool) -> float:
    x = torch.randn(SAMPLE_BATCH, cfg.image_channels, cfg.image_size, cfg.image_size, device=DEVICE)
    t = torch.full((SAMPLE_BATCH,), 500, device=DEVICE)
    t0 = _now()
    with _autocast(bf16):
        model(x, t)
    return _now() - t0


def peak_memory_mb(which: str, size: str, bf16: bool) -> float:
    """Peak RSS growth over 3 training steps, in a fresh process (Linux /proc VmHWM, reset before the steps).

    On a GPU: the peak of torch.cuda.max_memory_allocated over the same steps, in this process.
    """
    if DEVICE.type == "cuda":
        spec = SIZES[size]
        model = build(which, spec["config"])
        opt = optimizer_for(which, model)
        torch.cuda.reset_peak_memory_stats(DEVICE)
        for _ in range(3):
            train_step_time(model, opt, spec["config"], spec["train_batch"], bf16)
        return torch.cuda.max_memory_allocated(DEVICE) / 2**20
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_unet as b; "
            f"b.SAME_OPTIMIZER = {SAME_OPTIMIZER!r}; print(b._peak_memory_child({which!r}, {size!r}, {bf16!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_memory_child(which: str, size: str, bf16: bool) -> float:
    spec = SIZES[size]
    model = build(which, spec["config"])
    opt = optimizer_for(which, model)
    train_step_time(model, opt, spec["config"], 1, bf16)  # allocate optimizer state
    before = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak-RSS mark (VmHWM) to now
    for _ in range(3):
        train_step_time(model, opt, spec["config"], spec["train_batch"], bf16)
    return (_rss_kb("VmHWM") - before) / 1024


def bench_size(size: str, repeats: int) -> dict:
    spec = SIZES[size]
    cfg, batch = spec["config"], spec["train_batch"]
    models = {w: build(w, cfg) for w in ("ours", "theirs")}
    opts = {w: optimizer_for(w, m) for w, m in models.items()}
    result: dict = {"size": size, "image_size": cfg.image_size, "train_batch": batch,
                    "params": {w: params(m) for w, m in models.items()},
                    "forward_gflops": {w: forward_flops(m, cfg) / 1e9 for w, m in models.items()}}
    for bf16 in (False, True):
        mode = "bf16" if bf16 else "fp32"
        train = {w: [] for w in models}
        sample = {w: [] for w in models}
        for w in models:  # warm-up
            train_step_time(models[w], opts[w], cfg, batch, bf16)
            sample_step_time(models[w], cfg, bf16)
        for _ in range(repeats):
            for w in models:  # alternate, so machine noise hits both alike
                train[w].append(train_step_time(models[w], opts[w], cfg, batch, bf16))
                sample[w].append(sample_step_time(models[w], cfg, bf16))
        result[mode] = {
            "train_images_per_s": {w: batch / statistics.median(v) for w, v in train.items()},
            "sample_step_ms": {w: 1000 * statistics.median(v) for w, v in sample.items()},
        }
        print(f"{size} {mode}: {json.dumps(result[mode])}", flush=True)
    for bf16 in (False, True):
        mode = "bf16" if bf16 else "fp32"
        result[mode]["peak_train_memory_mb"] = {w: peak_memory_mb(w, size, bf16) for w in models}
    return result


# Operator families of a training step, matched against aten operator names in this order.
OP_FAMILIES = (("convolution", ("conv",)), ("matmul, attention", ("mm", "bmm", "addmm", "linear", "scaled_dot", "softmax")),
               ("GroupNorm", ("group_norm",)), ("SiLU", ("silu",)), ("copies, casts", ("copy_", "_to_copy", "contiguous")),
               ("concat, upsample", ("cat", "upsample")))


def op_breakdown(which: str, cfg: ModelConfig, batch: int, bf16: bool, steps: int = 3) -> dict[str, float]:
    """Milliseconds per training step by operator family (self time in torch.profiler), for one side."""
    from torch.profiler import profile

    model = build(which, cfg)
    opt = optimizer_for(which, model)
    train_step_time(model, opt, cfg, batch, bf16)
    with profile() as prof:
        for _ in range(steps):
            train_step_time(model, opt, cfg, batch, bf16)
    out = {name: 0.0 for name, _ in OP_FAMILIES} | {"other (elementwise, optimizer, ...)": 0.0}
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        op = event.key[len("aten::"):]
        family = next((name for name, keys in OP_FAMILIES if any(k in op for k in keys)), "other (elementwise, optimizer, ...)")
        out[family] += event.self_device_time_total if DEVICE.type == "cuda" else event.self_cpu_time_total
    return {k: v / 1000 / steps for k, v in out.items()}


def breakdown_markdown(size: str, bf16: bool) -> str:
    """Where a training step's time goes, ours and diffusers', by operator family."""
    spec = SIZES[size]
    parts = {w: op_breakdown(w, spec["config"], spec["train_batch"], bf16) for w in ("ours", "theirs")}
    mode = "bf16" if bf16 else "fp32"
    lines = [f"### {size} size, {mode}, batch {spec['train_batch']}: profiler self time per training step", "",
             "| operator family | ours ms | diffusers ms | ours - diffusers ms |", "|---|---|---|---|"]
    for k in parts["ours"]:
        a, b = parts["ours"][k], parts["theirs"][k]
        lines.append(f"| {k} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    a, b = sum(parts["ours"].values()), sum(parts["theirs"].values())
    lines += [f"| total | {a:.1f} | {b:.1f} | {a - b:+.1f} |", ""]
    return "\n".join(lines)


def markdown(results: list[dict], peaks: dict, command: str) -> str:
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else (platform.processor() or platform.machine())
    lines = [f"Command: `{command}`  ", f"Machine: {where}, "
             f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; measured matmul peak "
             f"fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s. Optimizers: "
             + ("plain AdamW on both sides." if SAME_OPTIMIZER else "each side's own (ours: fused AdamW; diffusers: "
                "plain AdamW, as its train_unconditional.py)."), ""]
    for r in results:
        p, fl = r["params"], r["forward_gflops"]
        lines += [f"### {r['size']} size: {r['image_size']}x{r['image_size']}, training batch {r['train_batch']}, "
                  f"sampling batch {SAMPLE_BATCH}", "",
                  f"Parameters: ours {p['ours']:,}, diffusers {p['theirs']:,}. Forward GFLOPs per image: ours "
                  f"{fl['ours']:.2f}, diffusers {fl['theirs']:.2f}.", "",
                  "| measure | precision | ours | diffusers | ours / diffusers |", "|---|---|---|---|---|"]
        for mode in ("fp32", "bf16"):
            m = r[mode]
            tr, sm, mem = m["train_images_per_s"], m["sample_step_ms"], m["peak_train_memory_mb"]
            lines.append(f"| training images/s | {mode} | {tr['ours']:.1f} | {tr['theirs']:.1f} | {tr['ours'] / tr['theirs']:.2f}x |")
            lines.append(f"| sampling step ms (lower is better) | {mode} | {sm['ours']:.1f} | {sm['theirs']:.1f} | "
                         f"{sm['theirs'] / sm['ours']:.2f}x faster |")
            lines.append(f"| peak training memory MB | {mode} | {mem['ours']:.0f} | {mem['theirs']:.0f} | "
                         f"{mem['ours'] / max(mem['theirs'], 1e-9):.2f} |")
        ours_default = r["bf16"]["train_images_per_s"]["ours"]
        theirs_default = r["fp32"]["train_images_per_s"]["theirs"]
        lines.append(f"| training images/s, each its default (ours bf16, diffusers fp32) | - | {ours_default:.1f} | "
                     f"{theirs_default:.1f} | {ours_default / theirs_default:.2f}x |")
        # Training costs ~3x the forward FLOPs (forward + backward).
        for mode in ("fp32", "bf16"):
            achieved = 3 * fl["ours"] * r[mode]["train_images_per_s"]["ours"]
            lines.append(f"| our training GFLOP/s (3 x forward FLOPs x images/s) | {mode} | {achieved:.0f} | | "
                         f"{100 * achieved / peaks[mode]:.0f}% of the {mode} matmul peak |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="cpu,wide,seed", help="comma-separated: cpu, wide, seed (default: all)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="docs/bench_unet_cpu.md")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU comparison")
    parser.add_argument("--train-batch", type=int, default=0, help="override both sizes' training batch (e.g. 64 on a GPU)")
    parser.add_argument("--same-optimizer", action="store_true",
                        help="plain AdamW on both sides (default: each side's own; ours is the fused kernel)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the timing table: each side's training step by operator family (torch.profiler)")
    args = parser.parse_args()
    global DEVICE, SAME_OPTIMIZER
    SAME_OPTIMIZER = args.same_optimizer
    DEVICE = torch.device(args.device)
    if args.train_batch:
        for spec in SIZES.values():
            spec["train_batch"] = args.train_batch
    try:
        import diffusers  # noqa: F401
    except ImportError:
        sys.exit("bench_unet.py needs diffusers: `.venv/bin/pip install -e '.[bench]'` (make bench does it).")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    if args.profile:
        text = "\n".join(breakdown_markdown(s, bf16) for s in args.sizes.split(",") for bf16 in (False, True))
        print(text)
        if args.out:
            Path(args.out).write_text("# Where the training step's time goes: ours and diffusers' U-Net\n\n"
                                      f"Command: `python benchmarks/bench_unet.py {' '.join(sys.argv[1:])}`\n\n" + text)
        return
    results = [bench_size(s, args.repeats) for s in args.sizes.split(",")]
    text = markdown(results, peaks, "python benchmarks/bench_unet.py " + " ".join(sys.argv[1:]))
    print(text)
    out = Path(args.out)
    header = "# Benchmarks: our U-Net against diffusers' UNet2DModel\n\n"
    out.write_text(header + text + "\n")
    (out.with_suffix(".json")).write_text(json.dumps({"peaks": peaks, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
