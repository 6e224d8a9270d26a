"""What a person watches during a run: metrics.jsonl, TensorBoard event files, sample grids."""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np

from .run_dir import RunDir


class Monitor:
    """Writes one JSON object per logged step to metrics.jsonl and, where installed, TensorBoard events.

    TensorBoard is the optional extra `pip install 'ddpm[tensorboard]'`; without it only the JSON
    lines are written (and a warning says so once). View with `tensorboard --logdir RUN_DIR`.
    """

    def __init__(self, run_dir: RunDir, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.path = run_dir.metrics_path
        if resume_step is not None:
            # Rows logged after the checkpoint we resume from belong to a future that was lost: drop them.
            run_dir.keep_metrics_until(resume_step)
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("TensorBoard is not installed, so only metrics.jsonl is written; "
                              "`pip install tensorboard` (or the extra ddpm[tensorboard]) adds event files.", stacklevel=2)
            else:
                self._tb = SummaryWriter(log_dir=str(run_dir.tensorboard_dir), purge_step=resume_step)

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        """Log a row of scalars for this step."""
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def image(self, step: int, tag: str, image_hwc: np.ndarray) -> None:
        """Log a (H, W, C) uint8 image (a sample grid) to TensorBoard."""
        if self._tb is not None:
            self._tb.add_image(tag, image_hwc, step, dataformats="HWC")

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

