"""ddpm: Denoising Diffusion Probabilistic Models (Ho et al., 2020) from scratch in PyTorch."""

from .config import DiffusionConfig, ModelConfig

__all__ = ["DiffusionConfig", "ModelConfig", "train_diffusion"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Import the training loop lazily so `import ddpm` stays light for the CLI's --help.
    if name == "train_diffusion":
        from .train import train_diffusion

        return train_diffusion
    raise AttributeError(f"module 'ddpm' has no attribute {name!r}")
