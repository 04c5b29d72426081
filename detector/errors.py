"""Errors a user can cause and fix.

Each message is one line that names the problem and the fix; the CLI prints it
as ``error: <message>`` and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations


class DetectorError(Exception):
    """Base class of every error the user can fix (bad input, config, weights, paths)."""


class ConfigError(DetectorError, ValueError):
    """A config file or option is malformed, unknown or out of range (also a ``ValueError``, as a
    bad argument value is to any Python API)."""


class WeightsError(DetectorError):
    """Model weights are missing, corrupt or do not fit the model."""


class SourceError(DetectorError):
    """An input (image, folder, video) is missing or cannot be decoded."""


class SinkError(DetectorError):
    """An output (video, image, JSON Lines) cannot be written."""


class StopPipeline(Exception):  # noqa: N818 (a signal to stop, not an error)
    """Raise from a stage or sink (e.g. a window's q key) to end a run early without an error."""


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) turned into an exception by the CLI, so every
    ``finally`` runs and outputs are finalised, as for Ctrl-C."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(name)
        self.signum = signum
        self.name = name
        self.detail = ""
        """What was kept, e.g. "; the frames processed so far are in out.mp4"."""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class EngineError(DetectorError):
    """An inference engine is missing, or an exported model file is corrupt or does not fit."""
