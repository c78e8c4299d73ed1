"""The project's one error hierarchy: what a user can fix, named in one line (CLIs exit 2, no traceback).

It lives in the lowest layer so that every layer above (data, loop, study, analysis) raises the
same classes; ``foundation.errors`` re-exports it.
"""

from __future__ import annotations


class UsageError(Exception):
    """A problem with the user's input; the message names the option or file."""

    exit_code = 2


class ConfigError(UsageError):
    """An option or configuration value is out of range, unknown, or contradicts another."""


class DataError(UsageError):
    """A data file is missing, unreadable or not in the expected format."""


class ModelError(UsageError):
    """A model cannot be built or its weights cannot be had."""


class PretrainedUnavailable(ModelError):
    """Pretrained weights are needed but are neither given nor cached, and cannot be downloaded."""


class StudyInterrupted(Exception):
    """A study stopped by SIGINT or SIGTERM after Tune saved its state: ``--resume`` continues it (exit 130)."""

    exit_code = 130


class StudyFailed(Exception):
    """A study ran but no trial completed: its results hold only errors (exit 1, so scripts and CI see it)."""

    exit_code = 1
