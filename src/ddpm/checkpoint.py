"""Checkpoints: written atomically, loaded without running code (weights_only=True)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from .config import DiffusionConfig, ModelConfig, config_from_dict
from .errors import CheckpointError
from .run_dir import RunDir
from .unet import UNet

# The checkpoint layout's version, stored in every checkpoint and export. Bump it when the layout
# changes and add the step that lifts the previous version to MIGRATIONS: old files keep loading.
# (A renamed config field needs only an entry in config.RENAMED_FIELDS.)
FORMAT_VERSION = 1


def _v0_to_v1(state: dict[str, Any]) -> dict[str, Any]:
    # Version 0 (before 2026-11-29) had no version field; its layout is version 1's.
    return state


MIGRATIONS = {0: _v0_to_v1}  # version v -> the function that turns a v state into a v + 1 state


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, permission, folder gone); nothing half-written is left."""


# What each errno means for a user whose checkpoint did not get written, and what to do about it.
WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full: free space there",
    errno.EDQUOT: "the disk quota is used up: free space there",
    errno.EACCES: "permission denied: make the folder writable",
    errno.EPERM: "permission denied: make the folder writable",
    errno.EROFS: "the filesystem is read-only: train into a writable out_dir",
    errno.ENOENT: "the folder was removed: recreate it, or train into another out_dir",
}


def atomic_save(obj: Any, path: Path) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over path.

    A crash or Ctrl-C at any moment leaves either the old file or the complete new one. A failed
    write (disk full, permission denied, folder removed) removes the temporary file and raises
    CheckpointWriteError saying which of these happened.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        cause = err if isinstance(err, OSError) else err.__cause__ or err.__context__
        if isinstance(cause, OSError):
            why = WRITE_FAILURES.get(cause.errno, f"{cause.strerror or cause}")
            raise CheckpointWriteError(f"Could not write {path}: {why} ({type(cause).__name__}: {cause}).") from None
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True: tensors and plain Python values only, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, corrupt, or holding pickled code
        raise CheckpointError(f"Checkpoint {path} cannot be loaded safely ({type(err).__name__}: {str(err)[:300]}).") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint {path} holds a {type(state).__name__}, not a dict; it was not written by ddpm.")
    # Migrate first: a migration may rename the very keys checked here.
    state = migrate(state, path)
    missing = [k for k in ("model_config", "diffusion_config", "ema", "step") if k not in state]
    if missing:
        raise CheckpointError(f"Checkpoint {path} lacks {missing}; it was not written by ddpm.")
    return state


def migrate(state: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """Lift a checkpoint (or export) state of any earlier format version to FORMAT_VERSION."""
    version = int(state.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{source} has checkpoint format {version}, newer than this ddpm reads "
                              f"({FORMAT_VERSION}); upgrade ddpm to load it.")
    for v in range(version, FORMAT_VERSION):
        state = MIGRATIONS[v](state)
    state["format_version"] = FORMAT_VERSION
    return state


def export_ema(checkpoint: str | Path | dict[str, Any], out: str | Path) -> Path:
    """Write a checkpoint's EMA weights to safetensors, with the configs in its metadata and beside it.

    Args:
        checkpoint: a checkpoint file, or a state already loaded from one (see load_source).
        out: the .safetensors path; OUT.json gets the same configs for people and other tools.
    The .safetensors file is all `ddpm sample --checkpoint` needs.
    """
    from safetensors.torch import save_file

    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    configs = {"model_config": state["model_config"], "diffusion_config": state["diffusion_config"], "step": state["step"],
               "class_names": state.get("class_names", []), "format_version": FORMAT_VERSION}
    metadata = {key: json.dumps(value) for key, value in configs.items()}
    save_file({k: v.contiguous() for k, v in state["ema"].items()}, str(out), metadata=metadata)
    out.with_suffix(".json").write_text(json.dumps(configs, indent=2) + "\n")
    return out


def _load_safetensors(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = f.metadata() or {}
            ema = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no items())
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}).") from None
    # Migrate first, then check: a migration may rename model_config. Another tool's metadata need not be JSON.
    state = migrate({"ema": ema, **{k: _json_or_text(v) for k, v in meta.items()}}, path)
    if "model_config" not in state:
        raise CheckpointError(f"{path} has no model_config in its metadata; export it with `ddpm export`.")
    return state


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def model_from_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[UNet, DiffusionConfig, ModelConfig, int]:
    """The EMA model (eval mode), its configs and its training step, from a checkpoint, an export or a
    diffusers model folder."""
    path = Path(path)
    return model_from_state(_load_model_state(path, map_location), path, map_location)


def model_from_state(
    state: dict[str, Any], source: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[UNet, DiffusionConfig, ModelConfig, int]:
    """Like model_from_checkpoint, from a state already loaded (source names it in errors)."""
    model_config = config_from_dict(ModelConfig, state["model_config"])
    diffusion_config = config_from_dict(DiffusionConfig, state["diffusion_config"])
    model = UNet(model_config)
    try:
        model.load_state_dict(state["ema"])
    except RuntimeError as err:
        raise CheckpointError(f"Checkpoint {source}: EMA weights do not fit its ModelConfig ({str(err)[:300]}).") from None
    return model.to(map_location).eval(), diffusion_config, model_config, int(state["step"])


def _load_model_state(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if path.is_dir():
        if (path / "checkpoints").is_dir():
            raise CheckpointError(f"{path} is a run folder: pass it as --run (its newest checkpoint), or one of its "
                                  "checkpoints/step_*.pt as --checkpoint.")
        from .interop import read_diffusers

        return read_diffusers(path)  # a diffusers model folder (UNet2DModel + DDPMScheduler)
    return _load_safetensors(path, map_location) if path.suffix == ".safetensors" else load_checkpoint(path, map_location)


def latest_valid_checkpoint(run: RunDir, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """(state, path) of the run's newest checkpoint that loads; broken newer ones are reported and passed over."""
    found = run.checkpoints()
    if not found:
        raise CheckpointError(f"No checkpoint in {run.checkpoints_dir}.")
    errors = []
    for path in reversed(found):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as err:
            errors.append(str(err))
            warnings.warn(f"{err} Trying the previous checkpoint.", stacklevel=2)
            continue
        return state, path
    raise CheckpointError("No checkpoint of the run loads: " + " | ".join(errors))


def load_source(
    checkpoint: str | Path | None, run_dir: str | Path | None, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path]:
    """(state, path) of the model a command should use: the given checkpoint, export or diffusers
    model folder, else the newest checkpoint of run_dir that loads (broken newer ones are reported
    and passed over)."""
    if checkpoint is not None:
        path = Path(checkpoint)
        return _load_model_state(path, map_location), path
    if run_dir is None:
        raise CheckpointError("Name a model: --run RUN_DIR (its newest checkpoint) or --checkpoint FILE.")
    return latest_valid_checkpoint(RunDir(run_dir), map_location)
