"""User-facing errors: one line, exit code 2, no traceback (``study.cli.main_guard`` prints them).

The one hierarchy lives in ``segmodels.errors`` (the lowest layer, so every layer raises the same
classes): ``UsageError`` > ``ConfigError`` (an option), ``DataError`` (a data file), ``ModelError``
(a model or its weights) > ``PretrainedUnavailable``.
"""

from segmodels.errors import ConfigError, DataError, ModelError, PretrainedUnavailable, StudyInterrupted, UsageError

__all__ = ["ConfigError", "DataError", "ModelError", "PretrainedUnavailable", "StudyInterrupted", "UsageError"]
