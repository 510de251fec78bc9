"""Exceptions with messages meant for users (the CLI prints them without a traceback)."""
from __future__ import annotations


class Slam3rError(Exception):
    """Base class: the message is complete and names the file, key or value at fault."""


class ConfigError(Slam3rError):
    """A config key is missing, unknown, of the wrong type or out of range."""


class SourceError(Slam3rError):
    """A frame source cannot be opened or read (missing folder, corrupt file, ...)."""


class BadFrameError(SourceError):
    """One frame could not be read; the source may skip it (``source.on_bad_frame: skip``)."""


class FrontendError(Slam3rError):
    """The frontend cannot run (no checkpoint, wrong input, tracking failure with on_failure: stop)."""


class EvaluationError(Slam3rError):
    """Trajectories cannot be evaluated (no common timestamps, too few poses, NaN poses, ...)."""
