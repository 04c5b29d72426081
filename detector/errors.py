"""Errors a user can cause and fix.

Each message is one line that names the problem and the fix; the CLI prints it
as ``error: <message>`` and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations


class DetectorError(Exception):
    """Base class of every error the user can fix (bad input, config, weights, paths)."""


class ConfigError(DetectorError):
    """A config file or option is malformed, unknown or out of range."""


class WeightsError(DetectorError):
    """Model weights are missing, corrupt or do not fit the model."""


class SourceError(DetectorError):
    """An input (image, folder, video) is missing or cannot be decoded."""


class SinkError(DetectorError):
    """An output (video, image, JSON Lines) cannot be written."""


class EngineError(DetectorError):
    """An inference engine is missing, or an exported model file is corrupt or does not fit."""
