"""diffusers model folders in and out: UNet2DModel + DDPMScheduler <-> our UNet + DiffusionConfig.

A diffusers folder (what `save_pretrained` writes and the Hub serves, e.g. google/ddpm-cifar10-32):

    FOLDER/unet/config.json                          UNet2DModel's constructor arguments
    FOLDER/unet/diffusion_pytorch_model.safetensors  its weights (or .bin; both also at FOLDER/)
    FOLDER/scheduler/scheduler_config.json           DDPMScheduler's: T, betas, prediction type
    FOLDER/model_index.json                          what DDPMPipeline.from_pretrained reads
    FOLDER/ddpm.json                                 ours only: configs diffusers has no field for

`read_diffusers` turns a folder into the state a checkpoint holds (checkpoint.py calls it for any
--checkpoint that is a folder); `write_diffusers` writes one from a checkpoint's state. Both map
every setting exactly or refuse, naming the setting: a folder our U-Net cannot represent is a
CheckpointError, a model diffusers cannot represent a UsageError. diffusers itself is never imported.

Checked against diffusers 0.42.1 (models/unets/unet_2d.py, unet_2d_blocks.py, resnet.py,
embeddings.py, schedulers/scheduling_ddpm.py): its UNet2DModel with positional time embedding,
(Attn)DownBlock2D / (Attn)UpBlock2D and UNetMidBlock2D is the official DDPM network, which is ours
with embedding_placement="after_conv1".
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, DiffusionConfig, ModelConfig, config_from_dict, config_to_dict
from .errors import CheckpointError, UsageError
from .schedule import schedule_betas
from .unet import UNet

DIFFUSERS_VERSION = "0.42.1"  # the version this mapping was checked against, written into the configs
WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_BIN = "diffusion_pytorch_model.bin"  # older Hub folders; read with weights_only=True
META = "ddpm.json"

# UNet2DModel.__init__'s defaults: what a key absent from an older config.json means
# (tests/test_interop.py checks them against the installed diffusers).
UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D", "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
    "num_train_timesteps": None,
}
# DDPMScheduler.__init__'s defaults, likewise.
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "variance_type": "fixed_small", "clip_sample": True, "prediction_type": "epsilon",
    "thresholding": False, "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
    "timestep_spacing": "leading", "steps_offset": 0, "rescale_betas_zero_snr": False,
}
# UNet2DModel settings that must hold this value for the network to be ours: (value, why).
UNET_FIXED: dict[str, tuple[Any, str]] = {
    "time_embedding_type": ("positional", "ddpm embeds t with sinusoids only"),
    "center_input_sample": (False, "ddpm takes images in [-1, 1] as they are"),
    "mid_block_type": ("UNetMidBlock2D", "ddpm's bottleneck is ResNet, attention, ResNet"),
    "mid_block_scale_factor": (1, "ddpm's residual blocks add without rescaling"),
    "downsample_type": ("conv", "ddpm downsamples with a stride-2 convolution"),
    "upsample_type": ("conv", "ddpm upsamples with nearest neighbours and a convolution"),
    "resnet_time_scale_shift": ("default", "ddpm adds the timestep embedding (no scale-shift)"),
    "add_attention": (True, "ddpm's bottleneck always has attention"),
    "class_embed_type": (None, "ddpm's class conditioning is a learned embedding table"),
}
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}  # the same formulas, max_beta 0.999 included
# fixed_small is the posterior variance beta~_t (DDPM's sigma_t^2 = beta~_t), fixed_large is beta_t.
VARIANCE_TYPES = {"fixed_small": "beta_tilde", "fixed_small_log": "beta_tilde", "fixed_large": "beta",
                  "fixed_large_log": "beta"}

# Parameter names inside a ResNet block and an attention block: ours -> diffusers'. Our attention
# keeps q, k and v in one Linear (qkv, stacked along its output); diffusers keeps three.
RES_PARTS = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
             "shortcut": "conv_shortcut"}
ATTN_PARTS = {"norm": "group_norm", "proj_out": "to_out.0", "qkv": ""}
QKV = ("to_q", "to_k", "to_v")
# diffusers' names of before 0.14 (still in the Hub's google/ddpm-* weights); it renames them on load too.
LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


# Weights ------------------------------------------------------------------------------------------

def _module_names(config: ModelConfig) -> dict[str, str]:
    """Our weight-holding module paths -> diffusers' ("" parts: the attention module, for qkv)."""
    levels, attn = len(config.dim_multiply), set(config.transformer_layers)
    pairs = [("time_mlp.0", "time_embedding.linear_1", None), ("time_mlp.2", "time_embedding.linear_2", None),
             ("class_emb", "class_embedding", None), ("conv_in", "conv_in", None)]
    for level in range(levels):
        for j in range(config.num_res_blocks):
            pairs.append((f"down.{level}.blocks.{j}", f"down_blocks.{level}.resnets.{j}", RES_PARTS))
            if level in attn:
                pairs.append((f"down.{level}.attns.{j}", f"down_blocks.{level}.attentions.{j}", ATTN_PARTS))
        pairs.append((f"down.{level}.resample.conv", f"down_blocks.{level}.downsamplers.0.conv", None))
    pairs += [("mid_block1", "mid_block.resnets.0", RES_PARTS), ("mid_attn", "mid_block.attentions.0", ATTN_PARTS),
              ("mid_block2", "mid_block.resnets.1", RES_PARTS)]
    for k in range(levels):  # our self.up, like diffusers' up_blocks, runs from the lowest resolution up
        for j in range(config.num_res_blocks + 1):
            pairs.append((f"up.{k}.blocks.{j}", f"up_blocks.{k}.resnets.{j}", RES_PARTS))
            if levels - 1 - k in attn:
                pairs.append((f"up.{k}.attns.{j}", f"up_blocks.{k}.attentions.{j}", ATTN_PARTS))
        pairs.append((f"up.{k}.resample.conv", f"up_blocks.{k}.upsamplers.0.conv", None))
    pairs += [("norm_out", "conv_norm_out", None), ("conv_out", "conv_out", None)]
    names = {}
    for ours, theirs, parts in pairs:
        for a, b in (parts or {"": ""}).items():
            names[f"{ours}.{a}".rstrip(".")] = f"{theirs}.{b}".rstrip(".")
    return names


def to_diffusers_weights(ema: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our U-Net's state dict as UNet2DModel's (q, k, v split into three Linears)."""
    names, out = _module_names(config), {}
    for key, value in ema.items():
        module, param = key.rsplit(".", 1)
        if module not in names:
            raise UsageError(f"weight {key!r} has no place in diffusers' UNet2DModel (it is not a ddpm U-Net weight).")
        if module.endswith(".qkv"):
            for name, part in zip(QKV, value.chunk(3, dim=0), strict=True):
                out[f"{names[module]}.{name}.{param}"] = part.clone()  # a view would share qkv's storage
        else:
            out[f"{names[module]}.{param}"] = value.contiguous()
    return out


def from_diffusers_weights(weights: dict[str, torch.Tensor], config: ModelConfig, source: Path) -> dict[str, torch.Tensor]:
    """UNet2DModel's state dict as ours, float32, checked name by name and shape by shape against
    the U-Net that `config` builds."""
    weights = {_modern_name(k): v for k, v in weights.items()}
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = UNet(config).state_dict()
    names, out, used = _module_names(config), {}, set()
    for key, like in expected.items():
        module, param = key.rsplit(".", 1)
        theirs = [f"{names[module]}.{n}.{param}" for n in QKV] if module.endswith(".qkv") else [f"{names[module]}.{param}"]
        for name, part in zip(theirs, like.chunk(len(theirs)), strict=True):
            if name not in weights:
                raise CheckpointError(f"{source} lacks weight {name!r}, which its config.json implies.")
            if weights[name].shape != part.shape:
                raise CheckpointError(f"{source}: weight {name!r} has shape {tuple(weights[name].shape)}; its "
                                      f"config.json implies {tuple(part.shape)}.")
        value = torch.cat([weights[k] for k in theirs]) if len(theirs) > 1 else weights[theirs[0]]
        out[key] = value.float() if value.is_floating_point() else value
        used.update(theirs)
    extra = sorted(set(weights) - used)
    if extra:
        raise CheckpointError(f"{source} holds {len(extra)} weight(s) that its config.json does not explain, e.g. {extra[:3]}.")
    return out


def _modern_name(key: str) -> str:
    module, _, param = key.rpartition(".")
    parent, _, last = module.rpartition(".")
    return f"{parent}.{LEGACY_ATTN[last]}.{param}" if last in LEGACY_ATTN else key


# Configs ------------------------------------------------------------------------------------------

def model_config_from_unet(values: dict[str, Any], source: Path, num_classes: int | None = None) -> ModelConfig:
    """The ModelConfig of a UNet2DModel config.json, or a CheckpointError naming the setting that
    has no equivalent. num_classes: what ddpm.json says (a class table is ours only with it)."""
    c = {**UNET_DEFAULTS, **{k: v for k, v in values.items() if not k.startswith("_")}}

    def refuse(field: str, why: str) -> CheckpointError:
        value = c.get(field, values.get(field))
        return CheckpointError(f"{source}: {field}={value!r} cannot be represented by ddpm's U-Net: {why}.")

    if values.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise refuse("_class_name", "only UNet2DModel (unconditional pixel-space DDPM) is supported")
    unknown = sorted(k for k in c if k not in UNET_DEFAULTS and c[k] not in (None, False))
    if unknown:
        raise refuse(unknown[0], "a setting this mapping (checked against diffusers "
                     f"{DIFFUSERS_VERSION}) does not know")
    for field, (value, why) in UNET_FIXED.items():
        if c[field] != value:
            raise refuse(field, f"{why} (needs {value!r})")
    if c["act_fn"] not in ("silu", "swish"):
        raise refuse("act_fn", "ddpm's blocks use SiLU")
    if c["in_channels"] != c["out_channels"]:
        raise refuse("out_channels", f"ddpm predicts one value per input channel (in_channels={c['in_channels']}; "
                     "twice as many is a learned variance)")
    widths = [int(w) for w in c["block_out_channels"]]
    levels, base = len(widths), widths[0]
    if any(w % base for w in widths):
        raise refuse("block_out_channels", f"every width must be a multiple of the first ({base}), ddpm's base_dim")
    if c["time_embedding_dim"] not in (None, 4 * base):
        raise refuse("time_embedding_dim", f"ddpm's timestep MLP is 4 * block_out_channels[0] = {4 * base} wide")
    if c["attn_norm_num_groups"] not in (None, c["norm_num_groups"]):
        raise refuse("attn_norm_num_groups", "ddpm's attention GroupNorm has norm_num_groups groups")
    down = [str(b).removeprefix("UNetRes") for b in c["down_block_types"]]
    up = [str(b).removeprefix("UNetRes") for b in c["up_block_types"]]
    for field, types, kinds in (("down_block_types", down, ("DownBlock2D", "AttnDownBlock2D")),
                                ("up_block_types", up, ("UpBlock2D", "AttnUpBlock2D"))):
        if len(types) != levels or any(t not in kinds for t in types):
            raise refuse(field, f"needs {levels} entries (one per block_out_channels) of {kinds}")
    attn = tuple(i for i, t in enumerate(down) if t.startswith("Attn"))
    if attn != tuple(i for i in range(levels) if up[levels - 1 - i].startswith("Attn")):
        raise refuse("up_block_types", f"ddpm has attention at the same levels both ways; down_block_types has it at {attn}")
    head_dim = c["attention_head_dim"]
    heads = {w // head_dim if head_dim else 1 for w in [*(widths[i] for i in attn), widths[-1]]}
    if head_dim and (len(heads) > 1 or any(widths[i] % head_dim for i in [*attn, levels - 1])):
        raise refuse("attention_head_dim", "ddpm's attention layers all have the same number of heads "
                     f"(here {sorted(heads)} across the attention levels and the bottleneck)")
    size = c["sample_size"]
    size = size[0] if isinstance(size, (list, tuple)) and len(set(size)) == 1 else size
    if not isinstance(size, int) or size % 2 ** (levels - 1):
        raise refuse("sample_size", f"ddpm's images are square, with a side divisible by 2**(levels - 1) = {2 ** (levels - 1)}")
    if c["num_class_embeds"] is not None and num_classes != c["num_class_embeds"] - 1:
        raise refuse("num_class_embeds", f"ddpm's class table has a last 'no class' entry; only a folder that ddpm "
                     f"wrote says so (its {META})")
    if c["downsample_padding"] not in (0, 1):
        raise refuse("downsample_padding", "ddpm pads 1 (every side) or 0 (right and bottom)")
    if c["freq_shift"] not in (0, 1):
        raise refuse("freq_shift", "ddpm's embedding_freq_shift is 0 or 1")
    try:
        return ModelConfig(
            lowest_resolution_size=size // 2 ** (levels - 1), dim_multiply=tuple(w // base for w in widths),
            transformer_layers=attn, base_dim=base, image_channels=int(c["in_channels"]),
            num_res_blocks=int(c["layers_per_block"]), dropout=float(c["dropout"]), norm_groups=int(c["norm_num_groups"]),
            attention_heads=heads.pop(), embedding_placement="after_conv1",
            num_classes=0 if c["num_class_embeds"] is None else c["num_class_embeds"] - 1,
            norm_eps=float(c["norm_eps"]), downsample_padding=int(c["downsample_padding"]),
            embedding_flip_sin_to_cos=bool(c["flip_sin_to_cos"]), embedding_freq_shift=int(c["freq_shift"]))
    except ConfigError as err:
        raise CheckpointError(f"{source}: the U-Net it describes is not a valid ddpm model: {err}") from None


# The fields that say what a log-SNR-shifted schedule is, exported to diffusers as its betas.
SHIFTED_SCHEDULE_FIELDS = ("timesteps_diff", "beta_schedule", "beta_start", "beta_end", "schedule_shift",
                           "zero_terminal_snr")


def _own_shifted_schedule(trained_betas: list[float] | None, base: dict[str, Any]) -> DiffusionConfig | None:
    """ddpm.json's DiffusionConfig if it has a log-SNR shift and its betas are trained_betas (a folder
    that write_diffusers made from a shifted schedule), else None."""
    if trained_betas is None or not base.get("schedule_shift"):
        return None
    try:
        own = config_from_dict(DiffusionConfig, base)
    except ConfigError:
        return None
    theirs = torch.tensor(trained_betas, dtype=torch.float64)
    ours = schedule_betas(own)
    return own if theirs.shape == ours.shape and torch.allclose(theirs, ours, rtol=1e-6, atol=1e-12) else None


def diffusion_config_from_scheduler(values: dict[str, Any], source: Path, base: dict[str, Any]) -> DiffusionConfig:
    """The DiffusionConfig of a scheduler_config.json: its forward process, prediction type and the
    reverse variance and clipping of its DDPM sampling; the other fields from base (a config dict)."""
    c = {**SCHEDULER_DEFAULTS, **{k: v for k, v in values.items() if not k.startswith("_")}}

    def refuse(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{source}: {field}={c.get(field)!r} cannot be represented by ddpm's schedule: {why}.")

    own = _own_shifted_schedule(c["trained_betas"], base)
    if c["trained_betas"] is not None and own is None:
        why = ("its ddpm.json gives a shifted schedule with other betas" if base.get("schedule_shift") else
               "ddpm's schedules are linear or cosine, and only a log-SNR-shifted one that ddpm exported (with its "
               "ddpm.json) goes as trained betas")
        raise CheckpointError(f"{source}: trained_betas=[{len(c['trained_betas'])} values] cannot be represented by "
                              f"ddpm's schedule: {why}.")
    if c["beta_schedule"] not in BETA_SCHEDULES:
        raise refuse("beta_schedule", f"choose one of {sorted(BETA_SCHEDULES)}")
    if c["prediction_type"] not in PREDICTION_TYPES:
        raise refuse("prediction_type", f"choose one of {sorted(PREDICTION_TYPES)}")
    if c["variance_type"] not in VARIANCE_TYPES:
        raise refuse("variance_type", "ddpm's network predicts no variance; choose fixed_small or fixed_large")
    if c["thresholding"] or (c["clip_sample"] and c["clip_sample_range"] != 1.0):
        warnings.warn(f"{source}: ddpm's samplers clip x_0 to [-1, 1] (clip_x0), without dynamic thresholding; "
                      f"thresholding={c['thresholding']}, clip_sample_range={c['clip_sample_range']} are not used.",
                      stacklevel=3)
    schedule = dict(timesteps_diff=int(c["num_train_timesteps"]), beta_schedule=BETA_SCHEDULES[c["beta_schedule"]],
                    zero_terminal_snr=bool(c["rescale_betas_zero_snr"]), prediction=PREDICTION_TYPES[c["prediction_type"]],
                    sample_variance=VARIANCE_TYPES[c["variance_type"]], clip_x0=bool(c["clip_sample"]),
                    beta_start=None, beta_end=None, schedule_shift=0.0)  # diffusers' own schedules are unshifted
    values = dict(base)
    if own is not None:  # a shifted schedule that ddpm wrote: its own fields say what the betas are
        schedule.update({k: getattr(own, k) for k in SHIFTED_SCHEDULE_FIELDS})
    elif schedule["beta_schedule"] == "linear":
        betas = (float(c["beta_start"]), float(c["beta_end"]))
        try:  # keep ddpm.json's unset betas where they resolve to the scheduler's
            same = config_from_dict(DiffusionConfig, {**values, **schedule}).resolved_betas() == betas
        except ConfigError:
            same = False
        if not same:
            schedule["beta_start"], schedule["beta_end"] = betas
    try:
        return config_from_dict(DiffusionConfig, {**values, **schedule})
    except ConfigError as err:
        raise CheckpointError(f"{source}: its schedule is not a valid ddpm schedule: {err}") from None


def unet_config(config: ModelConfig) -> dict[str, Any]:
    """UNet2DModel's config.json for a ModelConfig, or a UsageError saying what diffusers lacks."""
    def refuse(field: str, value: Any, why: str) -> UsageError:
        return UsageError(f"ModelConfig.{field}={value!r} has no equivalent in diffusers' UNet2DModel: {why}.")

    if config.patch_size != 1:
        raise refuse("patch_size", config.patch_size, "it works on pixels; a model trained on patches has no "
                     "UNet2DModel form (train with --patch-size 1 to export to diffusers)")
    if config.embedding_placement != "after_conv1":
        raise refuse("embedding_placement", config.embedding_placement,
                     "its ResNet blocks add the timestep embedding after the first convolution (the official DDPM "
                     "placement, 'after_conv1'), this model adds it to the block's input (the seed's); train with "
                     "--embedding-placement after_conv1 to export to diffusers")
    if config.dim_multiply[0] != 1:
        raise refuse("dim_multiply", list(config.dim_multiply), "its first level is as wide as conv_in and the "
                     "timestep sinusoid (block_out_channels[0]); start dim_multiply with 1")
    widths = [config.base_dim * m for m in config.dim_multiply]
    attn_widths = {widths[i] for i in config.transformer_layers} | {widths[-1]}
    head_dims = {w // config.attention_heads for w in attn_widths}
    if config.attention_heads != 1 and len(head_dims) > 1:
        raise refuse("attention_heads", config.attention_heads, "its attention_head_dim is one width per head for "
                     f"every level, and {config.attention_heads} heads over widths {sorted(attn_widths)} are not")
    levels = len(widths)
    attn = set(config.transformer_layers)
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": config.image_size, "in_channels": config.image_channels, "out_channels": config.image_channels,
        "center_input_sample": False, "time_embedding_type": "positional", "time_embedding_dim": None,
        "freq_shift": config.embedding_freq_shift, "flip_sin_to_cos": config.embedding_flip_sin_to_cos,
        "down_block_types": ["AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(levels)],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if levels - 1 - k in attn else "UpBlock2D" for k in range(levels)],
        "block_out_channels": widths, "layers_per_block": config.num_res_blocks, "mid_block_scale_factor": 1,
        "downsample_padding": config.downsample_padding, "downsample_type": "conv", "upsample_type": "conv",
        "dropout": config.dropout, "act_fn": "silu",
        "attention_head_dim": None if config.attention_heads == 1 else head_dims.pop(),
        "norm_num_groups": config.norm_groups, "attn_norm_num_groups": None, "norm_eps": config.norm_eps,
        "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
        # Our 'no class' entry is the table's last row: class_labels=num_classes runs the model unconditionally.
        "num_class_embeds": config.num_classes + 1 if config.num_classes else None, "num_train_timesteps": None,
    }


def scheduler_config(config: DiffusionConfig) -> dict[str, Any]:
    """DDPMScheduler's scheduler_config.json for a DiffusionConfig (every ddpm schedule has one)."""
    beta_start, beta_end = config.resolved_betas() if config.beta_schedule == "linear" else (0.0001, 0.02)
    return {
        "_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": config.timesteps_diff, "beta_start": beta_start, "beta_end": beta_end,
        "beta_schedule": {v: k for k, v in BETA_SCHEDULES.items()}[config.beta_schedule],
        # diffusers has no log-SNR shift: a shifted schedule goes as its betas, already rescaled.
        "trained_betas": schedule_betas(config).tolist() if config.schedule_shift else None,
        "rescale_betas_zero_snr": config.zero_terminal_snr and not config.schedule_shift,
        "prediction_type": {v: k for k, v in PREDICTION_TYPES.items()}[config.prediction],
        "variance_type": "fixed_small" if config.sample_variance == "beta_tilde" else "fixed_large",
        "clip_sample": config.clip_x0, "clip_sample_range": 1.0, "thresholding": False,
        "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "timestep_spacing": "leading", "steps_offset": 0,
    }


# Folders ------------------------------------------------------------------------------------------

def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read as JSON ({type(err).__name__}: {err}).") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a {type(value).__name__}, not a JSON object.")
    return value


def _first(paths: list[Path], what: str) -> Path:
    for path in paths:
        if path.is_file():
            return path
    raise CheckpointError(f"{paths[0]} does not exist ({what}); a diffusers model folder has "
                          f"unet/config.json, unet/{WEIGHTS} and scheduler/scheduler_config.json.")


def _read_weights(unet_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    path = _first([unet_dir / WEIGHTS, unet_dir / WEIGHTS_BIN], "the U-Net's weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu"), path
        return torch.load(path, map_location="cpu", weights_only=True), path
    except Exception as err:  # truncated, corrupt, or (a .bin) holding pickled code
        raise CheckpointError(f"{path} cannot be loaded safely ({type(err).__name__}: {str(err)[:300]}).") from None


def read_diffusers(folder: str | Path) -> dict[str, Any]:
    """A diffusers model folder as a checkpoint's state: ema (our U-Net's weights, float32, CPU),
    model_config, diffusion_config (dicts), step and class_names (from ddpm.json, else 0 and [])."""
    folder = Path(folder)
    unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    config_path = _first([folder / "unet" / "config.json", folder / "config.json"], "the U-Net's configuration")
    # A folder's own scheduler/, else beside config.json, else (FOLDER = a pipeline's unet/) the pipeline's.
    scheduler_path = _first([folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json",
                             *([folder.parent / "scheduler" / "scheduler_config.json"] if folder.name == "unet" else [])],
                            "the noise schedule")
    meta = _json(folder / META) if (folder / META).is_file() else {}
    saved_model = meta.get("model_config") or {}
    model_config = model_config_from_unet(_json(config_path), config_path, saved_model.get("num_classes"))
    # Fields diffusers has no place for: ddpm.json's where ddpm wrote the folder, else the defaults.
    base = meta.get("diffusion_config") or {"dataset_name": "unknown", "extra": {"imported_from": str(folder)}}
    diffusion_config = diffusion_config_from_scheduler(_json(scheduler_path), scheduler_path, base)
    weights, weights_path = _read_weights(unet_dir)
    return {"ema": from_diffusers_weights(weights, model_config, weights_path),
            "model_config": config_to_dict(model_config), "diffusion_config": config_to_dict(diffusion_config),
            "step": int(meta.get("step", 0)), "class_names": list(meta.get("class_names", []))}


def write_diffusers(state: dict[str, Any], out: str | Path) -> Path:
    """Write a checkpoint's EMA model as a folder that diffusers.DDPMPipeline.from_pretrained loads.

    Args:
        state: a checkpoint's state (checkpoint.load_source): ema, model_config, diffusion_config, step.
        out: the folder; unet/, scheduler/, model_index.json and ddpm.json are written into it.
    A class-conditional model maps exactly onto UNet2DModel's num_class_embeds (our 'no class' is the
    last entry), but DDPMPipeline passes no class_labels: call its unet with class_labels yourself.
    """
    from safetensors.torch import save_file

    model_config = config_from_dict(ModelConfig, state["model_config"])
    diffusion_config = config_from_dict(DiffusionConfig, state["diffusion_config"])
    unet, scheduler = unet_config(model_config), scheduler_config(diffusion_config)  # refuse before writing
    weights = to_diffusers_weights(state["ema"], model_config)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; a diffusers model is a folder: name a new or existing folder.")
    (out / "unet").mkdir(parents=True, exist_ok=True)
    (out / "scheduler").mkdir(exist_ok=True)
    save_file(weights, str(out / "unet" / WEIGHTS), metadata={"format": "pt"})
    files = {
        out / "unet" / "config.json": unet,
        out / "scheduler" / "scheduler_config.json": scheduler,
        out / "model_index.json": {"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
                                   "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]},
        out / META: {"model_config": config_to_dict(model_config), "diffusion_config": config_to_dict(diffusion_config),
                     "step": int(state["step"]), "class_names": list(state.get("class_names", []))},
    }
    for path, value in files.items():
        path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    return out
