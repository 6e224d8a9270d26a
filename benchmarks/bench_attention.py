"""Self-attention on the CPU: PyTorch's fused kernel against plain matmuls + softmax, fp32 and bf16.

    .venv/bin/python benchmarks/bench_attention.py

The shapes are this project's attention layers: 256 tokens (16x16 maps) at d = 64 (the 32x32
benchmark model, batch 32) and d = 512 (the seed model, batch 16), and 64 tokens (the demo).
For each: forward + backward milliseconds (median) and the relative error of the output against
float64. ddpm.unet.attention takes the plain path for bf16 on the CPU because of this table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ddpm.unet import _MatmulAttention

SHAPES = [(32, 256, 64), (16, 256, 512), (64, 64, 64)]  # (batch, tokens, head dim), 1 head


def plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _MatmulAttention.apply(q, k, v)


def median_ms(fn, repeats: int = 15) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| batch, tokens, d | dtype | fused: fwd+bwd ms | plain: fwd+bwd ms | plain / fused speed | "
          "fused error | plain error |")
    print("|---|---|---|---|---|---|---|")
    for B, L, D in SHAPES:
        torch.manual_seed(0)
        q64, k64, v64 = (torch.randn(B, 1, L, D, dtype=torch.float64) for _ in range(3))
        ref = F.scaled_dot_product_attention(q64, k64, v64)
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (t.to(dtype).requires_grad_() for t in (q64, k64, v64))
            err = {name: ((fn(q, k, v).double() - ref).norm() / ref.norm()).item()
                   for name, fn in (("fused", F.scaled_dot_product_attention), ("plain", plain))}
            fused = median_ms(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v).sum().backward())
            mine = median_ms(lambda q=q, k=k, v=v: plain(q, k, v).sum().backward())
            print(f"| {B}, {L}, {D} | {str(dtype).removeprefix('torch.')} | {fused:.2f} | {mine:.2f} | "
                  f"{fused / mine:.2f}x | {err['fused']:.1e} | {err['plain']:.1e} |")


if __name__ == "__main__":
    main()
