"""ddpm: Denoising Diffusion Probabilistic Models (Ho et al., 2020) from scratch in PyTorch.

The public API:
    DiffusionConfig, ModelConfig, train_diffusion     what to train and training it
    ConfigError, UsageError                           the errors a user can fix (field, value, fix named)
    load_model, sample_images, generate               sampling a trained model (ddpm.generation)
    SAMPLERS, run_sampler                             the samplers by name (ddpm.samplers)
    NoiseSchedule                                     the forward process (ddpm.schedule)
    UNet                                              the noise predictor (ddpm.unet)
    RunDir                                            a run folder's layout (ddpm.run_dir)
"""

from .config import ConfigError, DiffusionConfig, ModelConfig
from .errors import UsageError

__all__ = [
    "ConfigError", "UsageError", "DiffusionConfig", "ModelConfig", "train_diffusion", "load_model", "sample_images", "generate",
    "SAMPLERS", "run_sampler", "NoiseSchedule", "UNet", "RunDir",
]
__version__ = "0.1.0"

# Where each lazily imported name lives: `import ddpm` stays light for the CLI's --help.
_LAZY = {
    "train_diffusion": "training", "load_model": "generation", "sample_images": "generation", "generate": "generation",
    "SAMPLERS": "samplers", "run_sampler": "samplers", "NoiseSchedule": "schedule", "UNet": "unet",
    "RunDir": "run_dir",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ddpm' has no attribute {name!r}")
