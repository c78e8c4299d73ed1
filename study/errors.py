"""User-facing errors: one line, exit code 2, no traceback.

Anything the user can fix (a wrong option, a missing or broken file) raises a
``UsageError`` subclass; the command-line entry points catch it in
``study.cli.main_guard`` and print exactly one line.
"""

from __future__ import annotations


class UsageError(Exception):
    """A problem with the user's input; the message names the option or file."""

    exit_code = 2


class ConfigError(UsageError):
    """An option or configuration value is out of range or unknown."""


class DataError(UsageError):
    """A data file is missing, unreadable or not in the expected format."""

