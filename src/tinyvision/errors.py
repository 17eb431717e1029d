"""Errors that a user can fix; the CLI prints their message without a traceback."""


class TinyVisionError(Exception):
    """Base class: the message names the value, what is allowed and the fix."""


class ConfigError(TinyVisionError, ValueError):
    """A configuration value that cannot work."""


class DataError(TinyVisionError):
    """Data files that are missing, truncated or malformed."""


class TrainingDiverged(TinyVisionError):
    """The loss stopped being a finite number."""


class WriteFailed(TinyVisionError):
    """A file could not be written (a full disk, no permission); what was there before is kept."""


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
