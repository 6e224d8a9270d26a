"""The noise-prediction U-Net of DDPM (Ho et al. 2020, Appendix B), written from scratch.

model(x_t, t) -> predicted noise. The network knows nothing about betas: t is only an index that
the sinusoidal embedding turns into features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, flip_sin_to_cos: bool = False,
                       freq_shift: int = 1) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps ("Attention is all you need", Sec. 3.5).

    Args:
        t: (B,) timesteps (any numeric dtype).
        dim: embedding width; the first half are sines, the second cosines (flip_sin_to_cos: the reverse).
        freq_shift: frequency i of half = dim // 2 is max_period^(-i / (half - freq_shift)): 1 spans
            1 .. 1/max_period exactly, as the official DDPM code does; 0 is the Transformer's spacing.
    Returns:
        (B, dim) float32 features.
    """
    half = dim // 2
    # Frequencies from 1 down to (about) 1/max_period, geometrically spaced.
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half - freq_shift, 1)
    angles = t.float()[:, None] * torch.exp(exponent)[None, :]
    sin, cos = torch.sin(angles), torch.cos(angles)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _zero_init(module: nn.Module) -> nn.Module:
    """Zero the weights and bias, so a residual branch starts as the identity (official DDPM init)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ResNet block (DDPM Appendix B): GroupNorm, SiLU, 3x3 conv, twice, with a timestep embedding.

    placement "block_start" adds the projected embedding to the block's input, as the seed describes;
    "after_conv1" adds it after the first convolution, as the official implementation does.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, groups: int, placement: str,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.embed_at_start = placement == "block_start"
        self.temb_proj = nn.Linear(temb_dim, in_ch if self.embed_at_start else out_ch)
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, H, W); temb: (B, temb_dim), already passed through SiLU."""
        emb = self.temb_proj(temb)[:, :, None, None]
        h = x + emb if self.embed_at_start else x
        h = self.conv1(F.silu(self.norm1(h)))
        if not self.embed_at_start:
            h = h + emb
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class _MatmulAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v from two plain matmuls and a softmax.

    Backward recomputes the L x L attention weights from q and k instead of saving them, as flash
    attention does, so training keeps no more memory than the fused kernel's.
    """

    @staticmethod
    def _weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, k, v)
        return _MatmulAttention._weights(q, k) @ v

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = ctx.saved_tensors
        grad_out = grad_out.to(v.dtype)
        w = _MatmulAttention._weights(q, k)
        grad_v = w.transpose(-2, -1) @ grad_out
        # The softmax's own backward kernel (what autograd would call), accumulating in float32.
        grad_s = torch._softmax_backward_data(grad_out @ v.transpose(-2, -1), w, -1, w.dtype) * q.shape[-1] ** -0.5
        return grad_s @ k, grad_s.transpose(-2, -1) @ q, grad_v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (..., L, d) tensors.

    PyTorch's fused kernel everywhere except bf16 on the CPU. There, two plain matmuls (oneDNN runs
    them on AMX) and a softmax are several times faster than the fused flash kernel at this U-Net's
    sizes, at the same bf16 accuracy against float64 (docs/bench_attention_cpu.md has the numbers;
    benchmarks/bench_attention.py measures them again).
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        return _MatmulAttention.apply(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions with a residual connection (DDPM Appendix B)."""

    def __init__(self, channels: int, groups: int, heads: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = _zero_init(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        # (3, B, heads, HW, C/heads) with the head dimension contiguous: PyTorch's fused (flash)
        # attention kernel needs that; strided q/k/v fall back to a slower path on CPU.
        q, k, v = self.qkv(tokens).view(B, H * W, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        h = attention(q, k, v)  # (B, heads, HW, C/heads)
        h = self.proj_out(h.transpose(1, 2).reshape(B, H * W, C))
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution.

    padding 1 pads every side; padding 0 pads one pixel on the right and bottom only (TensorFlow's
    "SAME" for an even input, which the official DDPM models were trained with): the 3x3 windows
    then start at pixel 0 instead of -1.
    """

    def __init__(self, channels: int, padding: int = 1) -> None:
        super().__init__()
        self.pad_right_bottom = padding == 0
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_right_bottom:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """The ResNet blocks (each optionally followed by attention) of one resolution level."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attns = nn.ModuleList()
        self.resample: nn.Module | None = None


class UNet(nn.Module):
    """DDPM's network f_theta(x_t, t), built from a ModelConfig: the noise eps by default, or v or x0
    (DiffusionConfig.prediction says which; the network is the same).

    Going down, each level has num_res_blocks ResNet blocks and a stride-2 downsample (except the
    last); the bottleneck is ResNet, attention, ResNet; going up, each level has num_res_blocks + 1
    blocks that each concatenate one skip from the way down, then a nearest+conv upsample.
    Self-attention follows every block of the levels in transformer_layers. With patch_size p > 1 the
    network takes each p x p pixel patch as p * p channels (pixel unshuffle) and shuffles its output
    back into pixels, so the first level runs at image_size / p.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # Recompute each ResNet block's activations in backward instead of storing them (training only).
        self.gradient_checkpointing = False
        base, groups, drop, eps = config.base_dim, config.norm_groups, config.dropout, config.norm_eps
        temb_dim = 4 * base
        levels = len(config.dim_multiply)

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, temb_dim, drop, groups, config.embedding_placement, eps)

        def attn(ch: int, level: int) -> nn.Module:
            return (AttentionBlock(ch, groups, config.attention_heads, eps) if level in config.transformer_layers
                    else nn.Identity())

        # Timestep embedding: sinusoid -> Linear -> SiLU -> Linear (official DDPM).
        self.time_mlp = nn.Sequential(nn.Linear(base, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        # Class conditioning (Ho & Salimans 2022): a learned embedding per class plus one "no class"
        # entry (index num_classes), added to the timestep embedding.
        self.class_emb = nn.Embedding(config.num_classes + 1, temb_dim) if config.num_classes else None
        # With patches, the U-Net sees each p x p patch of pixels as p * p channels of one position.
        patch_channels = config.image_channels * config.patch_size ** 2
        self.conv_in = nn.Conv2d(patch_channels, base, 3, padding=1)

        skip_channels = [base]
        ch = base
        self.down = nn.ModuleList()
        for level, mult in enumerate(config.dim_multiply):
            stage = _Level()
            for _ in range(config.num_res_blocks):
                stage.blocks.append(res(ch, base * mult))
                ch = base * mult
                stage.attns.append(attn(ch, level))
                skip_channels.append(ch)
            if level != levels - 1:
                stage.resample = Downsample(ch, config.downsample_padding)
                skip_channels.append(ch)
            self.down.append(stage)

        self.mid_block1 = res(ch, ch)
        self.mid_attn = AttentionBlock(ch, groups, config.attention_heads, eps)
        self.mid_block2 = res(ch, ch)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.dim_multiply))):
            stage = _Level()
            for _ in range(config.num_res_blocks + 1):
                stage.blocks.append(res(ch + skip_channels.pop(), base * mult))
                ch = base * mult
                stage.attns.append(attn(ch, level))
            if level != 0:
                stage.resample = Upsample(ch)
            self.up.append(stage)
        assert not skip_channels, "every skip connection is used exactly once"

        self.norm_out = nn.GroupNorm(groups, ch, eps=eps)
        self.conv_out = _zero_init(nn.Conv2d(ch, patch_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise in x_t.

        Args:
            x: (B, image_channels, S, S) noisy images, S = config.image_size.
            t: (B,) integer timesteps 0 .. T-1.
            y: (B,) class labels 0 .. num_classes (num_classes = "no class") for a class-conditional
                model; None for an unconditional one (a conditional one then runs unconditionally).
        Returns:
            (B, image_channels, S, S) predicted noise.
        """
        if y is not None and self.class_emb is None:
            raise ValueError("This U-Net is unconditional: it takes no class labels (y). Train a class-conditional "
                             "model to ask for a class, or sample without one.")
        size, channels = self.config.image_size, self.config.image_channels
        if x.dim() != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
            raise ValueError(
                f"UNet expects images of shape (B, {channels}, {size}, {size}) for this ModelConfig "
                f"(image_size = lowest_resolution_size * 2**(levels-1) * patch_size), got {tuple(x.shape)}."
            )
        # In x's dtype, so a float64 model runs (for references); autocast still governs the MLP's matmuls.
        sinusoid = timestep_embedding(t, self.config.base_dim, flip_sin_to_cos=self.config.embedding_flip_sin_to_cos,
                                      freq_shift=self.config.embedding_freq_shift)
        temb = self.time_mlp(sinusoid.to(x.dtype))
        if self.class_emb is not None:  # no label = the "no class" entry: the unconditional model
            # long whatever t is: samplers between timesteps pass a fractional (float) t.
            labels = torch.full(t.shape, self.config.num_classes, dtype=torch.long, device=t.device) if y is None else y
            temb = temb + self.class_emb(labels).to(temb.dtype)
        temb = F.silu(temb)
        res = self._checkpointed if self.gradient_checkpointing and self.training else _call

        patch = self.config.patch_size
        h = self.conv_in(F.pixel_unshuffle(x, patch) if patch > 1 else x)
        skips = [h]
        for stage in self.down:
            for block, attn in zip(stage.blocks, stage.attns, strict=True):
                h = attn(res(block, h, temb))
                skips.append(h)
            if stage.resample is not None:
                h = stage.resample(h)
                skips.append(h)

        h = res(self.mid_block2, self.mid_attn(res(self.mid_block1, h, temb)), temb)

        for stage in self.up:
            for block, attn in zip(stage.blocks, stage.attns, strict=True):
                h = attn(res(block, torch.cat([h, skips.pop()], dim=1), temb))
            if stage.resample is not None:
                h = stage.resample(h)

        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, patch) if patch > 1 else out

    @staticmethod
    def _checkpointed(block: nn.Module, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return checkpoint(block, h, temb, use_reentrant=False)


def _call(block: nn.Module, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    return block(h, temb)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
