"""What pays for the demo's fp32 training step on a CPU without native bf16 (AVX2-only), side by side.

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_fp32_cpu.py \\
        --out docs/bench_fp32_cpu.md
    ... --compile          # also torch.compile (inductor's C++ code; minutes to compile)

Each variant is a real Trainer (the demo preset, precision fp32, the built-in digits) taking its own
train_step(): data, random draws, loss, backward, clipping, fused AdamW, EMA. Variants alternate
step by step, so machine noise hits all alike; reported are the median step times and the ratio to
the baseline. The issue's rule: keep a lever that gains 5% or more. Also a profile of the baseline
step by operator (torch.profiler), to say where the time goes.

Variants: fp32 (baseline); channels_last; plain attention (two matmuls and a softmax, the path bf16
takes on the CPU, instead of PyTorch's fused kernel); plain AdamW (the non-fused kernel, for the
update alone); 1 thread; compile (with --compile); and, in NHWC as the demo trains since
2026-12-03 (channels_last auto): convolutions without oneDNN (PyTorch's own im2col + GEMM kernels), and
half the batch on 1 thread (what each rank of a 2-process torchrun on 2 cores would take, before the
gradient all-reduce); and two Python threads in one process, each with half the batch on one intra-op
thread (data parallelism without a second process).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

import ddpm.unet
from ddpm.config import PRESETS, DiffusionConfig, ModelConfig
from ddpm.losses import diffusion_loss, draw_timesteps
from ddpm.training.trainer import Trainer


def trainer(tmp: Path, **overrides) -> Trainer:
    diff, model = PRESETS["demo"]
    cfg = DiffusionConfig(**{**diff, "precision": "fp32", "num_sample_images": 0, "tensorboard": False,
                             "out_dir": str(tmp / "run"), "max_steps": 10**6, **overrides})
    return Trainer(cfg, ModelConfig(**model))


@contextlib.contextmanager
def plain_attention():
    """The U-Net's attention as two matmuls and a softmax in any dtype (unet._MatmulAttention)."""
    fused = ddpm.unet.attention
    ddpm.unet.attention = lambda q, k, v: ddpm.unet._MatmulAttention.apply(q, k, v)
    try:
        yield
    finally:
        ddpm.unet.attention = fused


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def python_threads_step(tr: Trainer) -> None:
    """The step with the batch's two halves' forward and backward in two Python threads at once, on one
    intra-op thread each (call it under threads(1)): data parallelism inside one process, the gradients
    meeting in .grad (autograd accumulates them under a lock). What the GIL leaves of it is the question."""
    cfg = tr.cfg
    tr.model.train()
    tr.optimizer.zero_grad(set_to_none=True)
    x0, _ = tr._next_batch()
    t = draw_timesteps(cfg.batch_size, tr.schedule.num_timesteps, cfg.timestep_sampling, tr.device, tr.generator)
    noise = torch.randn(x0.shape, generator=tr.generator)

    failed: list[BaseException] = []

    def half(part: slice) -> None:
        try:
            loss, _, _ = diffusion_loss(tr.net, tr.schedule, x0[part], t=t[part], noise=noise[part],
                                        weighting=cfg.loss_weighting, snr_gamma=cfg.snr_gamma)
            (loss / 2).backward()
        except BaseException as err:  # a thread's exception is only printed: hand it to the caller
            failed.append(err)

    other = threading.Thread(target=half, args=(slice(0, cfg.batch_size // 2),))
    other.start()
    half(slice(cfg.batch_size // 2, None))
    other.join()
    if failed:
        raise failed[0]
    tr._update()


def adamw_step_ms(params: list[torch.nn.Parameter], fused: bool, repeats: int = 30, foreach: bool | None = None) -> float:
    """Median time of one AdamW update over params with random gradients."""
    params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-3, fused=fused, foreach=foreach)
    times = []
    for _ in range(repeats + 3):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant (after 5 warm-up steps)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile)")
    parser.add_argument("--out", help="write the markdown table here")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    variants: dict[str, tuple[Trainer, contextlib.AbstractContextManager | None]] = {
        # NCHW pinned: channels_last auto would make every fp32 variant NHWC on the CPU.
        "fp32": (trainer(tmp / "a", channels_last=False), None),
        "fp32 + channels_last": (trainer(tmp / "b", channels_last=True), None),
        "fp32 + plain attention": (trainer(tmp / "c", channels_last=False), "attention"),
        "fp32, 1 thread": (trainer(tmp / "d", channels_last=False), "threads"),
        "fp32 + channels_last + plain attention": (trainer(tmp / "h", channels_last=True), "attention"),
        "fp32 + channels_last, convolutions without oneDNN": (trainer(tmp / "f", channels_last=True), "no-onednn"),
        "fp32 + channels_last, half batch on 1 thread": (
            trainer(tmp / "g", channels_last=True, batch_size=PRESETS["demo"][0]["batch_size"] // 2), "threads"),
        "fp32 + channels_last, two Python threads with half the batch each": (
            trainer(tmp / "p", channels_last=True), "python-threads"),
    }
    if args.compile:
        variants["fp32 + compile"] = (trainer(tmp / "e", compile_model=True), None)

    def context(kind):
        if kind == "no-onednn":
            return torch.backends.mkldnn.flags(enabled=False)
        if kind == "attention":
            return plain_attention()
        return threads(1) if kind in ("threads", "python-threads") else contextlib.nullcontext()

    def step(tr: Trainer, kind) -> None:
        if kind == "python-threads":
            python_threads_step(tr)
        else:
            tr.train_step()

    warm = {}
    for name, (tr, kind) in variants.items():
        start = time.perf_counter()
        with context(kind):
            for _ in range(5):
                step(tr, kind)
        warm[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.steps):
        for name, (tr, kind) in variants.items():
            with context(kind):
                start = time.perf_counter()
                step(tr, kind)
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["fp32"])
    batch = variants["fp32"][0].cfg.batch_size
    params = list(variants["fp32"][0].model.parameters())
    fused_ms, plain_ms = adamw_step_ms(params, True), adamw_step_ms(params, False, foreach=False)
    foreach_ms = adamw_step_ms(params, False, foreach=True)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            variants["fp32"][0].train_step()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1

    lines = [
        "# The demo's fp32 training step on the CPU: which levers pay",
        "",
        f"Command: `{'ATEN_CPU_CAPABILITY=' + os.environ['ATEN_CPU_CAPABILITY'] + ' ' if 'ATEN_CPU_CAPABILITY' in os.environ else ''}"
        f"{'ONEDNN_MAX_CPU_ISA=' + os.environ['ONEDNN_MAX_CPU_ISA'] + ' ' if 'ONEDNN_MAX_CPU_ISA' in os.environ else ''}"
        f"python benchmarks/bench_fp32_cpu.py{' --compile' if args.compile else ''} --steps {args.steps}` "
        f"({time.strftime('%Y-%m-%d')}; torch {torch.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads). Demo preset "
        f"(16x16, batch {batch}), precision fp32, median of {args.steps} steps, variants alternating step by step.",
        "",
        "| variant | step ms | images/s | step vs fp32 | first 5 steps, s |",
        "|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        images = variants[name][0].cfg.batch_size
        lines.append(f"| {name} | {1000 * med:.1f} | {images / med:.0f} | {base / med:.2f}x | {warm[name]:.1f} |")
    lines += [
        "",
        f"AdamW update alone over the demo's {sum(p.numel() for p in params):,} parameters: fused {fused_ms:.2f} ms, "
        f"plain {plain_ms:.2f} ms ({plain_ms / fused_ms:.2f}x), foreach (one kernel per operation over all tensors) "
        f"{foreach_ms:.2f} ms, over {len(params)} tensors; the step is {1000 * base:.0f} ms.",
        "",
        "Where the baseline step's time goes (self CPU time, 5 steps, top 12 operators):",
        "",
        "| operator | share | calls |",
        "|---|---|---|",
    ]
    for e in ops[:12]:
        lines.append(f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f}% | {e.count} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
