"""Where the demo's training step gains from a second thread: torch.profiler per operator, 1 against 2 threads.

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/profile_threads.py

A real Trainer (the demo preset, fp32, the built-in digits) takes its own train_step(); the thread count
alternates 1, 2, 1, 2 (20 profiled steps each, after 5 unprofiled), and each operator's self time is the
smaller of its two readings, to keep the machine's noise out. Printed: the step's total at each count and
the operators that take the most time on 1 thread, with their speed-up on 2 (docs/time_to_quality.md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from bench_fp32_cpu import trainer as demo_trainer
from torch.profiler import ProfilerActivity, profile

from ddpm.training.trainer import Trainer


def self_times(trainer: Trainer, steps: int) -> dict[str, float]:
    """Milliseconds of self CPU time per step, by operator, over `steps` profiled steps."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.train_step()
    return {e.key: e.self_cpu_time_total / steps / 1000 for e in prof.key_averages()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="profiled steps per reading")
    parser.add_argument("--top", type=int, default=25, help="operators to list")
    args = parser.parse_args()
    trainer = demo_trainer(Path(tempfile.mkdtemp()))  # bench_fp32_cpu's: benchmarks/ is on sys.path as the script's folder
    readings: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for threads in (1, 2, 1, 2):
        torch.set_num_threads(threads)
        for _ in range(5):
            trainer.train_step()
        readings[threads].append(self_times(trainer, args.steps))
    ops = set().union(*readings[1], *readings[2])
    best = {t: {op: min(r.get(op, 0.0) for r in readings[t]) for op in ops} for t in readings}
    print(f"step: {sum(best[1].values()):.1f} ms on 1 thread, {sum(best[2].values()):.1f} ms on 2 "
          f"({sum(best[1].values()) / sum(best[2].values()):.2f}x)\n")
    print("| operator | 1 thread (ms) | 2 threads (ms) | speed-up |\n|---|---|---|---|")
    for op in sorted(ops, key=lambda o: -best[1][o])[:args.top]:
        print(f"| {op[:60]} | {best[1][op]:.2f} | {best[2][op]:.2f} | {best[1][op] / max(best[2][op], 1e-9):.2f}x |")


if __name__ == "__main__":
    main()
