"""The U-Net: shapes, structure, initialisation, conditioning, and clear errors for bad configs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model_config

from ddpm import ModelConfig
from ddpm.config import ConfigError
from ddpm.unet import (
    AttentionBlock,
    ResBlock,
    UNet,
    attention,
    count_parameters,
    timestep_embedding,
)


def test_seed_config_builds_128px_model_and_reports_parameter_count():
    cfg = ModelConfig(lowest_resolution_size=8, dim_multiply=[1, 2, 2, 4, 8], transformer_layers=[3], base_dim=64)
    assert cfg.image_size == 128
    model = UNet(cfg)
    n = count_parameters(model)
    print(f"seed U-Net parameters: {n:,}")
    # 5 levels: 2 ResNet blocks per level down, 3 up; attention after each block of level 3 (16x16)
    # going down (2) and up (3), plus one in the bottleneck.
    assert sum(isinstance(m, ResBlock) for m in model.modules()) == 5 * 2 + 5 * 3 + 2
    assert sum(isinstance(m, AttentionBlock) for m in model.modules()) == 2 + 3 + 1
    assert 40e6 < n < 80e6
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128), torch.tensor([17]))
    assert out.shape == (1, 3, 128, 128)


@pytest.mark.parametrize("placement", ["block_start", "after_conv1"])
def test_forward_shape_and_zero_initialised_output(placement):
    model = UNet(tiny_model_config(embedding_placement=placement))
    x = torch.randn(3, 1, 8, 8)
    out = model(x, torch.tensor([0, 5, 19]))
    assert out.shape == x.shape
    # The output conv is zero-initialised (official DDPM), so the untrained model predicts zero noise.
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("placement", ["block_start", "after_conv1"])
def test_timestep_changes_the_prediction(placement):
    model = UNet(tiny_model_config(embedding_placement=placement)).eval()
    for p in model.parameters():  # leave the zero init so the output depends on everything
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 1, 8, 8).repeat(2, 1, 1, 1)
    out = model(x, torch.tensor([1, 15]))
    assert not torch.allclose(out[0], out[1])
    # Where the embedding goes: block_start projects to the block's input width, after_conv1 to its output.
    block = model.down[1].blocks[0]  # 8 -> 16 channels
    expected = 8 if placement == "block_start" else 16
    assert block.temb_proj.out_features == expected


def test_timestep_embedding_matches_float64_formula():
    t = torch.tensor([0, 1, 7, 199])
    dim = 16
    emb = timestep_embedding(t, dim)
    half = dim // 2
    for i, tv in enumerate(t.tolist()):
        for k in range(half):
            freq = math.exp(-math.log(10000.0) * k / (half - 1))
            assert emb[i, k].item() == pytest.approx(math.sin(tv * freq), abs=1e-5)
            assert emb[i, half + k].item() == pytest.approx(math.cos(tv * freq), abs=1e-5)


def test_attention_block_matches_explicit_softmax():
    torch.manual_seed(1)
    block = AttentionBlock(8, groups=4, heads=2).double()
    torch.nn.init.normal_(block.proj_out.weight, std=0.3)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    # Reference: per head, softmax(q k^T / sqrt(d)) v over the 9 positions, written out with einsum.
    tokens = block.norm(x).reshape(2, 8, 9).transpose(1, 2)  # (B, HW, C)
    q, k, v = block.qkv(tokens).reshape(2, 9, 3, 2, 4).unbind(2)  # each (B, HW, heads, d)
    w = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(4), dim=-1)
    a = torch.einsum("bhij,bjhd->bihd", w, v).reshape(2, 9, 8)
    expected = x + block.proj_out(a).transpose(1, 2).reshape(2, 8, 3, 3)
    torch.testing.assert_close(block(x), expected)


def test_bf16_cpu_attention_path_matches_float64_and_its_gradients():
    # The CPU bf16 path (plain matmuls + softmax) against float64, values and gradients, at the
    # seed model's attention shape scaled down; held to bf16's resolution (eps = 7.8e-3).
    torch.manual_seed(0)
    q, k, v = (torch.randn(4, 2, 64, 32, dtype=torch.float64) for _ in range(3))
    ref_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = torch.softmax(ref_inputs[0] @ ref_inputs[1].transpose(-2, -1) / math.sqrt(32), dim=-1) @ ref_inputs[2]
    ref.pow(2).sum().backward()
    bf16_inputs = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    out = attention(*bf16_inputs)
    out.float().pow(2).sum().backward()
    assert out.dtype == torch.bfloat16

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.double() - b).norm() / b.norm()).item()

    assert rel(out, ref) < 2e-2
    for got, want in zip(bf16_inputs, ref_inputs, strict=True):
        assert rel(got.grad, want.grad) < 3e-2
    # In float32 the function is PyTorch's fused kernel, which agrees with float64 to float32 rounding.
    torch.testing.assert_close(attention(q.float(), k.float(), v.float()).double(), ref.detach(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(transformer_layers=(5,)), "transformer_layers"),
        (dict(base_dim=12, norm_groups=8), "norm_groups"),
        (dict(dim_multiply=()), "dim_multiply"),
        (dict(embedding_placement="middle"), "embedding_placement"),
        (dict(dropout=1.5), "dropout"),
        (dict(patch_size=0), "patch_size"),
    ],
)
def test_invalid_config_fails_at_construction_naming_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        tiny_model_config(**overrides)


def test_wrong_image_size_is_a_clear_error():
    model = UNet(tiny_model_config())
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        model(torch.randn(1, 1, 16, 16), torch.tensor([0]))


def _space_to_depth(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*p*p, H/p, W/p), channel c*p*p + i*p + j holding pixel (i, j) of each patch."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // p, p, W // p, p).permute(0, 1, 3, 5, 2, 4).reshape(B, C * p * p, H // p, W // p)


def _depth_to_space(x: torch.Tensor, p: int) -> torch.Tensor:
    B, Cpp, h, w = x.shape
    C = Cpp // (p * p)
    return x.reshape(B, C, p, p, h, w).permute(0, 1, 4, 2, 5, 3).reshape(B, C, h * p, w * p)


@pytest.mark.parametrize("channels_last", [False, True])
def test_patch_size_2_is_the_pixel_model_on_2x2_patches_as_channels(channels_last):
    # patch_size 2 on 16x16 RGB images = the same U-Net taking 12-channel 8x8 images, fed each 2x2 patch
    # as the 12 channels of one position and its output put back the same way (written out here by reshapes).
    patched_cfg = tiny_model_config(patch_size=2, image_channels=3)
    pixel_cfg = tiny_model_config(image_channels=12)
    assert patched_cfg.image_size == 16 and pixel_cfg.image_size == 8
    patched, pixel = UNet(patched_cfg).double(), UNet(pixel_cfg).double()
    assert patched.conv_in.in_channels == 12 and patched.conv_out.out_channels == 12
    for p in patched.parameters():  # leave the zero init so the output depends on everything
        torch.nn.init.normal_(p, std=0.2)
    pixel.load_state_dict(patched.state_dict())  # the same weights, shape for shape
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 7, 19])
    model_input = x
    if channels_last:  # NHWC, as the Trainer lays out fp32 CPU training (pixel_unshuffle must honour it)
        patched = patched.to(memory_format=torch.channels_last)
        model_input = x.contiguous(memory_format=torch.channels_last)
        assert model_input.stride() != x.stride()
    out = patched(model_input, t)
    want = _depth_to_space(pixel(_space_to_depth(x, 2), t), 2)
    assert out.shape == x.shape
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-10)
