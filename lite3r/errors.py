"""User-facing errors: one readable line that names the file and the fix.

Library code raises these for bad input (unreadable images, wrong checkpoints, unsupported precision
on this device, …). The CLI prints ``error: <message>`` (plus ``fix: <hint>``) and exits with a
non-zero code; the app shows the same text in a dialog. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class Lite3RError(Exception):
    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (fix: {self.hint})"


class InputError(Lite3RError):
    """Bad photos or folders: missing, unreadable, truncated, unsupported, too few."""


class CheckpointError(Lite3RError):
    """A checkpoint that is missing, truncated, for another model, or with wrong keys/shapes."""


class WeightsNotFoundError(CheckpointError):
    """Weights are not on disk and cannot be downloaded (offline)."""


class UnsupportedError(Lite3RError):
    """A combination this device or build cannot run (e.g. fp8 without FP8 tensor cores)."""


class OutputError(Lite3RError):
    """An output path that cannot be written."""


class CancelledError(Lite3RError):
    exit_code = 3
