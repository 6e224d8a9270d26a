"""Training: the run loop (loop.py: run folder, logging, checkpoints, signals) and one process's
state and optimiser step (trainer.py)."""

from .loop import dry_run, train_diffusion
from .trainer import Trainer, ema_decay_at, ema_update

__all__ = ["train_diffusion", "dry_run", "Trainer", "ema_update", "ema_decay_at"]
