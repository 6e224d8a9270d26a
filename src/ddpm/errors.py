"""The errors a user can fix by changing what they asked for, as opposed to a bug of ours.

`ddpm` prints these (and the other project errors: ConfigError, DatasetNotFoundError,
CheckpointError, RunDirBusy) as one line with exit code 2; any other exception is a bug and
shows its traceback.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A request that cannot be met as given: a flag value, a file, a class or an option a sampler
    does not take. The message names the value and the fix. A ValueError, so `except ValueError`
    in callers of the library keeps working."""


class CheckpointError(RuntimeError):
    """A model file or folder cannot be used (a checkpoint, an export, a diffusers folder); the message
    names the file and why. Defined here, not in checkpoint.py, so that interop.py (which checkpoint.py
    calls for diffusers folders) raises it too."""
