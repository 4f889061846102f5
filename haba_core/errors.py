"""Exceptions raised by haba_core. Every message says what was wrong and what to do about it."""

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, options: Iterable[str], prefix: str = "") -> str:
    """`` Did you mean 'a' or 'b'?`` for the options closest to a mistyped ``name`` (``""`` if none is close):
    the one hint every unknown-name error in haba_core carries."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(prefix + c) for c in close)}?" if close else ""


class HabaError(Exception):
    """Base class for every error haba_core raises on purpose."""


class ConfigError(HabaError, ValueError):
    """A configuration value is invalid or inconsistent with another one."""


class UnknownNameError(HabaError, KeyError):
    """A registry lookup failed; the message lists the valid names and close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


class BudgetError(ConfigError):
    """The storage budget cannot hold the requested synthetic set."""


class DatasetNotFoundError(HabaError, FileNotFoundError):
    """A dataset's files are not in the data root and could not be fetched."""


class CheckpointError(HabaError):
    """A checkpoint or synset file is missing, corrupted or of a foreign format."""


class DiskError(HabaError, OSError):
    """A file could not be written: the disk is full or read-only, or the folder is not writable. ``errno`` is the
    system's; the message names the folder and what to do."""


class ResourceError(ConfigError):
    """The settings need more memory than this machine can give; the message says which setting to lower."""
