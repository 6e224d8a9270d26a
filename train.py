"""The seed's entry point, run from the repository root:

    from train import train_diffusion, DiffusionConfig, ModelConfig

It re-exports the package's public API; the training loop lives in src/ddpm/training/loop.py.
"""

try:
    from ddpm import DiffusionConfig, ModelConfig, train_diffusion
except ImportError:  # a fresh clone that was not installed: use the source tree beside this file
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from ddpm import DiffusionConfig, ModelConfig, train_diffusion

__all__ = ["DiffusionConfig", "ModelConfig", "train_diffusion"]
