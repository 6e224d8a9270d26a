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
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_unet import SIZES, synced_time, train_step
from torch import nn

from ddpm.training.trainer import adamw
from ddpm.unet import UNet

# A variant is a precision and any of the levers, joined by " + " (e.g. "bf16 + channels_last").
LEVERS = ("tf32", "channels_last", "cudnn_benchmark", "compile", "compile_reduce_overhead", "bf16_groupnorm",
          "cuda_graph")
VARIANTS = ("fp32", "fp32 + tf32", "bf16", "bf16 + channels_last", "bf16 + cudnn_benchmark",
            "bf16 + compile", "bf16 + compile_reduce_overhead")


def parse_variant(name: str) -> tuple[torch.dtype | None, set[str]]:
    """("bf16 + channels_last") -> (torch.bfloat16, {"channels_last"}), with a clear error for typos."""
    precision, *levers = [part.strip() for part in name.split("+")]
    if precision not in ("fp32", "bf16") or not set(levers) <= set(LEVERS):
        raise SystemExit(f"variant {name!r}: start with fp32 or bf16, then any of {', '.join(LEVERS)} joined by ' + '.")
    return (torch.bfloat16 if precision == "bf16" else None), set(levers)


def _group_norm_in_input_dtype(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm that keeps a bf16 input in bf16 under autocast (statistics still accumulate in
    float32 inside the kernel). CUDA autocast otherwise runs group_norm in float32, so every norm
    reads bf16, writes float32, and the SiLU after it runs on float32 maps."""
    if x.dtype != torch.bfloat16:
        return nn.GroupNorm.forward(self, x)
    with torch.autocast(x.device.type, enabled=False):
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class GraphedStep:
    """The whole training step (forward, loss, backward, fused AdamW) captured once as a CUDA graph,
    then replayed: one launch instead of ~1,400 kernels (`--ops` counts them). Static shapes; x, t and noise are fixed buffers
    (a trainer would copy each batch into them). The recipe of PyTorch's CUDA-graphs notes: warm up
    on a side stream, set the gradients to None, capture; autocast without its weight-cast cache."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor, dtype: torch.dtype | None) -> None:
        def body() -> torch.Tensor:
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=False):
                out = model(x, t)
            loss = F.mse_loss(out.float(), noise)
            loss.backward()
            opt.step()
            return loss.detach()

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                opt.zero_grad(set_to_none=True)
                body()
        torch.cuda.current_stream().wait_stream(side)
        opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = body()

    def __call__(self) -> torch.Tensor:
        self.graph.replay()
        return self.loss


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
        if "bf16_groupnorm" in levers:
            for m in self.model.modules():
                if isinstance(m, nn.GroupNorm):
                    m.forward = types.MethodType(_group_norm_in_input_dtype, m)
        if "cuda_graph" in levers:  # the step counter must live on the GPU to be captured
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.0, fused=True, capturable=True)
        else:
            self.opt = adamw(self.model.parameters(), 1e-4, 0.0, device)
        shape = (batch, cfg.image_channels, cfg.image_size, cfg.image_size)
        self.x = torch.randn(shape, device=device).contiguous(memory_format=fmt)
        self.noise = torch.randn(shape, device=device)
        self.t = torch.randint(0, 1000, (batch,), device=device)
        self.graphed = GraphedStep(self.net, self.opt, self.x, self.t, self.noise, self.dtype) if "cuda_graph" in levers else None
        self.steps = 3 if self.graphed else 0
        self.first_loss: float | None = None

    def __call__(self) -> float:
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        t0 = synced_time(self.device)
        if self.graphed is not None:
            self.loss = self.graphed()
        else:
            self.loss = train_step(self.net, self.opt, self.x, self.t, self.noise, self.dtype)
        self.steps += 1
        if self.first_loss is None:
            self.first_loss = float(self.loss)
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


# Operators that only make a new view of a tensor: dispatched (host time) but no kernel on a GPU.
VIEW_OPS = {"detach", "t", "view", "expand", "transpose", "unsqueeze", "squeeze", "_unsafe_view", "slice", "permute",
            "as_strided", "alias", "select", "reshape", "split", "split_with_sizes", "unbind", "_reshape_alias"}


def op_count_table(size: str, device: torch.device, bf16: bool = True) -> None:
    """The aten operators one training step dispatches (batch 1), counted: what a GPU has to launch."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    cfg = SIZES[size]["config"]
    torch.manual_seed(0)
    model = UNet(cfg).to(device)
    opt = adamw(model.parameters(), 1e-4, 0.0, device)
    x = torch.randn(1, cfg.image_channels, cfg.image_size, cfg.image_size, device=device)
    noise, t = torch.randn_like(x), torch.tensor([5], device=device)
    dtype = torch.bfloat16 if bf16 else None
    train_step(model, opt, x, t, noise, dtype)  # the optimizer's state exists from here on
    with Count() as counter:
        train_step(model, opt, x, t, noise, dtype)
    kernels = {k: v for k, v in counter.ops.items() if k not in VIEW_OPS}
    print(f"One training step of the {size} size ({'bf16 autocast' if bf16 else 'fp32'}, {device}): "
          f"{sum(counter.ops.values())} aten operators dispatched, {sum(kernels.values())} of them compute "
          f"(the rest make views); {len(list(model.parameters()))} parameter tensors.\n")
    print("| operator | calls |\n|---|---|")
    for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:15]:
        print(f"| {k} | {v} |")


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
    parser.add_argument("--ops", action="store_true",
                        help="instead: count the operators one bf16 training step dispatches (what a GPU launches)")
    parser.add_argument("--out", help="also write the table (markdown) and the raw medians (.json beside it)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.optimizer:
        return optimizer_table(args.size, device, args.repeats)
    if args.ops:
        return op_count_table(args.size, device)
    batch = args.batch or SIZES[args.size]["train_batch"]
    names = args.variants.split(",") if args.variants else [
        n for n in VARIANTS
        if (args.compile or "compile" not in n) and (device.type == "cuda" or not parse_variant(n)[1] & {"tf32", "cudnn_benchmark"})]
    steps, compile_s, host = {}, {}, {}
    for name in list(names):
        t0 = time.perf_counter()
        try:
            steps[name] = Step(name, args.size, batch, device)
            for _ in range(3):  # warm-up; compiled variants compile here (and record CUDA graphs)
                steps[name]()
        except Exception as err:  # one lever that fails on this machine must not cost the others' numbers
            print(f"{name}: FAILED ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})", flush=True)
            names.remove(name)
            steps.pop(name, None)
            continue
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
             "| variant | images/s | vs fp32 | vs bf16 | step ms | of which the CPU queues, ms | warm-up, s | "
             "loss, first call -> last (steps taken) |", "|---|---|---|---|---|---|---|---|"]
    for n in names:
        vs_base = f"{ips[n] / base:.2f}x" if base else "-"
        vs_bf16 = f"{ips[n] / bf16:.2f}x" if bf16 else "-"
        lines.append(f"| {n} | {ips[n]:.1f} | {vs_base} | {vs_bf16} | {1000 * batch / ips[n]:.1f} | {host[n]:.1f} | "
                     f"{compile_s[n]:.1f} | {steps[n].first_loss:.6f} -> {float(steps[n].loss):.6f} ({steps[n].steps}) |")
    lines += ["", "Every variant starts from the same weights and trains on the same fixed batch, so the last "
              "column should fall alike in every row: a lever that broke the update (a graph replay that does not "
              "step, say) would show no fall."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({"batch": batch, "images_per_s": ips, "host_ms": host, "ready_s": compile_s}, indent=2))


if __name__ == "__main__":
    main()
