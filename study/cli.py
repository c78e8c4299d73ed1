"""Small helpers shared by the command-line entry points (argparse, one-line errors)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from segmodels import ModelError
from study.errors import UsageError


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def main_guard(prog: str, main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main``; turn a UsageError into one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(main(argv) or 0)
    except (UsageError, ModelError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse's own errors (already printed as one line) and --help
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def image_size_arg(text: str) -> tuple[int, int]:
    """Parse ``64`` or ``64x128`` (height x width) for argparse."""
    from study.config import parse_image_size

    try:
        return parse_image_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
