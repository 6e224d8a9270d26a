"""Where and in what precision the model runs."""

from __future__ import annotations

import contextlib
import re

import torch

from .errors import UsageError

# The oldest torch this code runs on. The trainer's clipping uses torch.nn.utils.get_total_norm and
# clip_grads_with_norm_, new in 2.6 (pytorch/pytorch#139662, merged after 2.5 branched); it also
# needs fused AdamW on the CPU (2.4, #123074) and the fused kernels' grad_scale/found_inf (older).
TORCH_MINIMUM = (2, 6)


def require_torch() -> None:
    """Raise ImportError naming the installed torch and the fix if it is older than TORCH_MINIMUM."""
    version = str(torch.__version__)
    found = re.match(r"(\d+)\.(\d+)", version)
    if found and tuple(int(part) for part in found.groups()) < TORCH_MINIMUM:
        need = ".".join(str(part) for part in TORCH_MINIMUM)
        raise ImportError(f"ddpm needs torch >= {need} (for torch.nn.utils.get_total_norm and clip_grads_with_norm_); "
                          f"this is torch {version}. Upgrade it: pip install 'torch>={need}' (for a CUDA build, "
                          "the command at https://pytorch.org/get-started/locally/).")


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" = the first CUDA device if one is usable, else the CPU; otherwise any torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"device={name!r} is not a torch device ({err}); use 'auto', 'cpu' or 'cuda'.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device={name!r} but no CUDA device is available here; use device='auto' or 'cpu'.")
    return device


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix work is native on this device (CUDA Ampere+, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting: None (fp32) or torch.bfloat16.

    "auto" picks bf16 where the device does it natively: on this project's CPUs it is 1.5-2x faster
    than fp32 for a whole training step (benchmarks/bench_unet.py).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if fast_bf16(device) else None
    raise UsageError(f"precision={precision!r}; choose 'auto', 'fp32' or 'bf16'.")


def use_channels_last(setting: bool | None, device: torch.device, dtype: torch.dtype | None, resolution: int) -> bool:
    """Whether to train in NHWC: the setting where given, else on for fp32 on a CPU at resolution <= 32.

    resolution is the side the U-Net's convolutions start at: the image size over the patch size.

    Measured side by side (benchmarks/bench_demo_shapes.py, docs/time_to_quality.md): the demo's fp32
    step on AVX2 is 7-13% faster in NHWC, its bf16 step 6-8% slower, and the wide model's fp32 step
    6% faster at 32x32 but 5% slower at 128x128 (docs/benchmarks.md). GPUs are not measured, so they keep NCHW.
    """
    if setting is not None:
        return setting
    return device.type == "cpu" and dtype is None and resolution <= 32


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to dtype on device, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    """"fp32", "bf16" or "fp16" for an autocast dtype (None = no autocast)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
