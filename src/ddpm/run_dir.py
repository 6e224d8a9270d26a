"""RunDir: the one owner of a run folder's layout (config, checkpoints, metrics, samples, figures).

    RUN_DIR/config.json          the resolved configs
    RUN_DIR/forward.png          the forward-process figure
    RUN_DIR/metrics.jsonl        one JSON object per logged step
    RUN_DIR/tensorboard/         TensorBoard event files
    RUN_DIR/checkpoints/         step_XXXXXXXX.pt, written atomically
    RUN_DIR/samples/             sample grids
    RUN_DIR/loss.png             the loss curve
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.pt$")


class RunDirBusy(RuntimeError):
    """Another process is training into this run folder; the message names it."""


class RunDir:
    """Paths and contents of one run folder; nothing else builds these paths."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_file = None

    @classmethod
    def default_for(cls, dataset_name: str) -> RunDir:
        """runs/<dataset>-<YYYYmmdd-HHMMSS>, with the dataset name made filename-safe."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name.replace("folder:", "")).strip("_") or "data"
        return cls(Path("runs") / f"{safe[-40:]}-{datetime.now():%Y%m%d-%H%M%S}")

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDir | None:
        """The run a checkpoint file lies in (RUN_DIR/checkpoints/step_*.pt), or None for any other file."""
        path = Path(checkpoint).resolve()
        if CHECKPOINT_PATTERN.match(path.name) and path.parent.name == "checkpoints":
            return cls(path.parent.parent)
        return None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # Paths -----------------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    @property
    def forward_figure_path(self) -> Path:
        return self.path / "forward.png"

    @property
    def loss_figure_path(self) -> Path:
        return self.path / "loss.png"

    @property
    def quality_figure_path(self) -> Path:
        return self.path / "quality.png"

    @property
    def best_checkpoint_path(self) -> Path:
        """RUN_DIR/checkpoints/best.pt: the best-evaluated checkpoint (keep_best); never pruned or resumed."""
        return self.checkpoints_dir / "best.pt"

    def checkpoint_path(self, step: int) -> Path:
        """RUN_DIR/checkpoints/step_XXXXXXXX.pt"""
        return self.checkpoints_dir / f"step_{step:08d}.pt"

    def sample_grid_path(self, step: int) -> Path:
        """RUN_DIR/samples/step_XXXXXXXX.png: the training-time grid after `step` steps."""
        return self.samples_dir / f"step_{step:08d}.png"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    # The trainer's lock --------------------------------------------------------------------------

    def acquire(self) -> None:
        """Become the one process that trains into this folder, or raise RunDirBusy naming the holder.

        An flock on RUN_DIR/.lock: held while this process lives, released by the OS when it
        exits or dies (no stale lock survives a crash). Linux maps flock onto NFS's byte-range
        locks, so it also holds between nodes on a shared filesystem. Sampling and export never
        take it, so they stay allowed while a run trains.
        """
        if self._lock_file is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        f = self.lock_path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunDirBusy(f"{self.path} is already being trained by {holder} (it holds {self.lock_path}). "
                             "Wait for that run to finish or stop it (Ctrl-C checkpoints it), or train into "
                             "another out_dir; sampling and export from this folder work meanwhile.") from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._lock_file = f

    def release(self) -> None:
        """Let another trainer in (also happens when this process exits)."""
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # Contents --------------------------------------------------------------------------------------

    def write_config(self, configs: dict[str, Any]) -> Path:
        """config.json with the resolved configs."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(configs, indent=2) + "\n")
        return self.config_path

    def checkpoints(self) -> list[Path]:
        """The run's checkpoints, oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
        return [p for _, p in sorted(found)]

    def prune_checkpoints(self, keep: int) -> None:
        """Delete all but the newest `keep` checkpoints (keep = 0: delete none)."""
        if keep > 0:
            for path in self.checkpoints()[:-keep]:
                path.unlink(missing_ok=True)

    def metrics(self) -> list[dict[str, Any]]:
        """All rows of metrics.jsonl; a line that does not read (a crash mid-write) is skipped with a warning."""
        return [row for _, row in self._metric_lines()]

    def keep_metrics_until(self, step: int) -> None:
        """Rewrite metrics.jsonl without the rows logged after `step` (a resumed run's lost future) and
        without lines that do not read, so that the rows appended next start on a line of their own."""
        if self.metrics_path.is_file():
            kept = [line for line, row in self._metric_lines() if row.get("step", 0) <= step]
            self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def _metric_lines(self) -> list[tuple[str, dict[str, Any]]]:
        """(line, row) of every readable line of metrics.jsonl."""
        if not self.metrics_path.is_file():
            return []
        rows = []
        for number, line in enumerate(self.metrics_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                warnings.warn(f"{self.metrics_path}, line {number}: not a complete JSON row (the process was "
                              f"probably stopped while writing it); skipped: {line[:80]!r}", stacklevel=3)
                continue
            rows.append((line, row))
        return rows
