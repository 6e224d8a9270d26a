"""Which speed levers pay for our U-Net's training step on this device: one table, medians, side by side.

    .venv/bin/python benchmarks/bench_levers.py --size cpu                    # 32x32 on the CPU
    python benchmarks/bench_levers.py --size seed --device cuda --batch 64    # 128x128 on a GPU

Each variant is our U-Net's full training step (forward under the variant's precision, MSE loss,
backward, AdamW) at the same size and batch, timed after warm-up. Variants alternate round by
round, so machine noise hits all alike. Ratios are against the fp32 baseline and against plain
bf16 autocast. `torch.compile` variants are left out unless --compile is given (minutes to
compile); their warm-up time is reported separately. On a GPU, "of which the CPU queues" is the time
Python takes to launch the step's kernels: when it nears the step time, the GPU waits on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_unet import SIZES, synced_time, train_step

from ddpm.training.trainer import adamw
from ddpm.unet import UNet

# A variant is a precision and any of the levers, joined by " + " (e.g. "bf16 + channels_last").
LEVERS = ("tf32", "channels_last", "cudnn_benchmark", "compile", "compile_reduce_overhead")
VARIANTS = ("fp32", "fp32 + tf32", "bf16", "bf16 + channels_last", "bf16 + cudnn_benchmark",
            "bf16 + compile", "bf16 + compile_reduce_overhead")


def parse_variant(name: str) -> tuple[torch.dtype | None, set[str]]:
    """("bf16 + channels_last") -> (torch.bfloat16, {"channels_last"}), with a clear error for typos."""
    precision, *levers = [part.strip() for part in name.split("+")]
    if precision not in ("fp32", "bf16") or not set(levers) <= set(LEVERS):
        raise SystemExit(f"variant {name!r}: start with fp32 or bf16, then any of {', '.join(LEVERS)} joined by ' + '.")
    return (torch.bfloat16 if precision == "bf16" else None), set(levers)


class Step:
    """One variant's model, optimizer and fixed batch; calling it times one training step."""

    def __init__(self, name: str, size: str, batch: int, device: torch.device) -> None:
        self.dtype, levers = parse_variant(name)
        self.channels_last, self.tf32, self.cudnn_benchmark = (x in levers for x in ("channels_last", "tf32", "cudnn_benchmark"))
        cfg = SIZES[size]["config"]
        torch.manual_seed(0)
        self.device = device
        self.model = UNet(cfg).to(device)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt)
        self.net = self.model
        if "compile" in levers or "compile_reduce_overhead" in levers:
            mode = "reduce-overhead" if "compile_reduce_overhead" in levers else "default"
            self.net = torch.compile(self.model, mode=mode)
        self.opt = adamw(self.model.parameters(), 1e-4, 0.0, device)
        shape = (batch, cfg.image_channels, cfg.image_size, cfg.image_size)
        self.x = torch.randn(shape, device=device).contiguous(memory_format=fmt)
        self.noise = torch.randn(shape, device=device)
        self.t = torch.randint(0, 1000, (batch,), device=device)

    def __call__(self) -> float:
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        t0 = synced_time(self.device)
        train_step(self.net, self.opt, self.x, self.t, self.noise, self.dtype)
        self.host_s = time.perf_counter() - t0  # the CPU's time to queue the step; near the total = launch-bound
        return synced_time(self.device) - t0


def optimizer_table(size: str, device: torch.device, repeats: int) -> None:
    """Milliseconds per AdamW step on this size's parameters (random gradients), three kernels."""
    model = UNet(SIZES[size]["config"]).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    kinds = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    opts = {k: torch.optim.AdamW(model.parameters(), lr=1e-4, **kw) for k, kw in kinds.items()}
    times: dict[str, list[float]] = {k: [] for k in opts}
    for r in range(repeats + 2):
        for k, opt in opts.items():
            t0 = synced_time(device)
            opt.step()
            if r >= 2:  # the first two steps allocate the moments
                times[k].append(synced_time(device) - t0)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(f"AdamW step, {size} size ({sum(p.numel() for p in model.parameters()):,} parameters), {device}, "
          f"median of {repeats}:")
    print("| AdamW kernel | ms per step | vs default |\n|---|---|---|")
    for k, v in ms.items():
        print(f"| {k} | {v:.1f} | {ms['default'] / v:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="cpu", choices=sorted(SIZES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=0, help="training batch (default: the size's batch in bench_unet)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile variants")
    parser.add_argument("--variants", default="", help="comma-separated variants, e.g. 'bf16,bf16 + channels_last' "
                        f"(default: {', '.join(VARIANTS)}; levers: {', '.join(LEVERS)})")
    parser.add_argument("--optimizer", action="store_true",
                        help="instead: time one AdamW step on the size's parameters, default vs foreach vs fused")
    parser.add_argument("--out", help="also write the table (markdown) and the raw medians (.json beside it)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.optimizer:
        return optimizer_table(args.size, device, args.repeats)
    batch = args.batch or SIZES[args.size]["train_batch"]
    names = args.variants.split(",") if args.variants else [
        n for n in VARIANTS
        if (args.compile or "compile" not in n) and (device.type == "cuda" or not parse_variant(n)[1] & {"tf32", "cudnn_benchmark"})]
    steps, compile_s, host = {}, {}, {}
    for name in names:
        t0 = time.perf_counter()
        steps[name] = Step(name, args.size, batch, device)
        for _ in range(3):  # warm-up; compiled variants compile here (and record CUDA graphs)
            steps[name]()
        compile_s[name] = time.perf_counter() - t0
        print(f"{name}: ready in {compile_s[name]:.1f} s", flush=True)
    times: dict[str, list[float]] = {n: [] for n in names}
    host_times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:
            times[name].append(steps[name]())
            host_times[name].append(steps[name].host_s)
    host = {n: 1000 * statistics.median(v) for n, v in host_times.items()}
    ips = {n: batch / statistics.median(v) for n, v in times.items()}
    base = ips.get("fp32")
    bf16 = ips.get("bf16")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"Our U-Net, {args.size} size ({SIZES[args.size]['config'].image_size}px), training batch {batch}, "
             f"{where}, torch {torch.__version__}, median of {args.repeats}.", "",
             "| variant | images/s | vs fp32 | vs bf16 | step ms | of which the CPU queues, ms | warm-up, s |",
             "|---|---|---|---|---|---|---|"]
    for n in names:
        vs_base = f"{ips[n] / base:.2f}x" if base else "-"
        vs_bf16 = f"{ips[n] / bf16:.2f}x" if bf16 else "-"
        lines.append(f"| {n} | {ips[n]:.1f} | {vs_base} | {vs_bf16} | {1000 * batch / ips[n]:.1f} | {host[n]:.1f} | "
                     f"{compile_s[n]:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({"batch": batch, "images_per_s": ips, "host_ms": host, "ready_s": compile_s}, indent=2))


if __name__ == "__main__":
    main()
