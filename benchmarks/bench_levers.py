"""Which speed levers pay for our U-Net's training step on this device: one table, medians, side by side.

    .venv/bin/python benchmarks/bench_levers.py --size cpu                    # 32x32 on the CPU
    python benchmarks/bench_levers.py --size seed --device cuda --batch 64    # 128x128 on a GPU

Each variant is our U-Net's full training step (forward under the variant's precision, MSE loss,
backward, AdamW) at the same size and batch, timed after warm-up. Variants alternate round by
round, so machine noise hits all alike. Ratios are against the fp32 baseline and against plain
bf16 autocast. `torch.compile` variants are left out unless --compile is given (minutes to
compile); their compile time is reported separately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_unet import SIZES

from ddpm.unet import UNet

# name: (autocast dtype, channels_last, compile, tf32)
VARIANTS = {
    "fp32": (None, False, False, False),
    "fp32 + tf32": (None, False, False, True),
    "bf16": (torch.bfloat16, False, False, False),
    "bf16 + channels_last": (torch.bfloat16, True, False, False),
    "bf16 + compile": (torch.bfloat16, False, True, False),
    "bf16 + channels_last + compile": (torch.bfloat16, True, True, False),
}


class Step:
    """One variant's model, optimizer and fixed batch; calling it times one training step."""

    def __init__(self, name: str, size: str, batch: int, device: torch.device) -> None:
        self.dtype, self.channels_last, compiled, self.tf32 = VARIANTS[name]
        cfg = SIZES[size]["config"]
        torch.manual_seed(0)
        self.device = device
        self.model = UNet(cfg).to(device)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt)
        self.net = torch.compile(self.model) if compiled else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        shape = (batch, cfg.image_channels, cfg.image_size, cfg.image_size)
        self.x = torch.randn(shape, device=device).contiguous(memory_format=fmt)
        self.noise = torch.randn(shape, device=device)
        self.t = torch.randint(0, 1000, (batch,), device=device)

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __call__(self) -> float:
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        t0 = self._sync()
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            out = self.net(self.x, self.t)
        loss = F.mse_loss(out.float(), self.noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return self._sync() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="cpu", choices=sorted(SIZES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=0, help="training batch (default: the size's batch in bench_unet)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile variants")
    parser.add_argument("--variants", default="", help="comma-separated subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--out", help="also write the table (markdown) and the raw medians (.json beside it)")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch or SIZES[args.size]["train_batch"]
    names = args.variants.split(",") if args.variants else [
        n for n in VARIANTS if (args.compile or not VARIANTS[n][2]) and (device.type == "cuda" or not VARIANTS[n][3])]
    steps, compile_s = {}, {}
    for name in names:
        t0 = time.perf_counter()
        steps[name] = Step(name, args.size, batch, device)
        steps[name]()  # warm-up; for compiled variants this is where compilation happens
        steps[name]()
        compile_s[name] = time.perf_counter() - t0
        print(f"{name}: ready in {compile_s[name]:.1f} s", flush=True)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:
            times[name].append(steps[name]())
    ips = {n: batch / statistics.median(v) for n, v in times.items()}
    base = ips.get("fp32")
    bf16 = ips.get("bf16")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"Our U-Net, {args.size} size ({SIZES[args.size]['config'].image_size}px), training batch {batch}, "
             f"{where}, torch {torch.__version__}, median of {args.repeats}.", "",
             "| variant | images/s | vs fp32 | vs bf16 | first two steps, s |", "|---|---|---|---|---|"]
    for n in names:
        vs_base = f"{ips[n] / base:.2f}x" if base else "-"
        vs_bf16 = f"{ips[n] / bf16:.2f}x" if bf16 else "-"
        lines.append(f"| {n} | {ips[n]:.1f} | {vs_base} | {vs_bf16} | {compile_s[n]:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({"images_per_s": ips, "ready_s": compile_s}, indent=2))


if __name__ == "__main__":
    main()
