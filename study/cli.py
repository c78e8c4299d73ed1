"""Small helpers shared by the command-line entry points (argparse, one-line errors)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

from study.errors import StudyInterrupted, UsageError


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def main_guard(prog: str, main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main``; turn a UsageError into one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(main(argv) or 0)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse's own errors (already printed as one line) and --help
        return exc.code if isinstance(exc.code, int) else 2
    except StudyInterrupted as exc:
        print(f"{prog}: interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def exit_cli(prog: str, main: Callable[[list[str] | None], int | None]) -> NoReturn:
    """A ``python -m`` entry point: run ``main`` under ``main_guard`` and exit with its code. What the run made is
    first frozen out of the interpreter's last garbage collection, which would otherwise walk every object that
    torch, torchvision and transformers created: measured on 2 cores, 3 s of every exit, 0.4 s frozen. A
    stopped study's driver then exits within ``ray job stop``'s 3 s wait instead of being killed in its
    teardown. Exit handlers (Ray's disconnect among them) still run."""
    code = main_guard(prog, main)
    gc.freeze()
    raise SystemExit(code)


@contextlib.contextmanager
def sigterm_as_sigint() -> Iterator[None]:
    """While active, SIGTERM (``kill``, a batch scheduler, ``ray job stop``) takes Ctrl-C's path: whatever
    handles SIGINT at that moment runs, i.e. Ray Tune's graceful stop (it saves the experiment and searcher
    state, then stops the trials) during a ``Tuner.fit``, and KeyboardInterrupt elsewhere. The handler is
    called directly, not re-raised as a signal: a Ray Job's driver has SIGINT blocked. A second SIGTERM
    (or Ctrl-C) during the graceful stop cuts it short, as Tune's own handler does for SIGINT."""

    def forward(signum: int, frame: object) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):  # SIG_IGN or SIG_DFL: nothing in Python would see Ctrl-C either
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    if threading.current_thread() is not threading.main_thread():  # signals are the main thread's
        yield
        return
    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def native_stderr_diverted(enabled: bool = True) -> Iterator[str | None]:
    """While active, file descriptor 2 goes to a log file and Python's own stderr stays where it was.

    Native libraries (Ray's C++ core worker in this process) write to fd 2 directly, past Python's
    logging; a study's console should show its own lines only. Yields the file that receives them.
    """
    if not enabled:
        yield None
        return
    fd, path = tempfile.mkstemp(prefix="segstudy-native-", suffix=".err")
    saved = os.dup(2)
    python_on_fd2 = sys.stderr is sys.__stderr__  # not so under a test runner's capture: leave that alone
    previous = sys.stderr
    if python_on_fd2:
        stream = os.fdopen(os.dup(saved), "w", buffering=1, encoding=previous.encoding or "utf-8",
                           errors="backslashreplace")
        handlers = [h for h in logging.getLogger().handlers
                    if isinstance(h, logging.StreamHandler) and h.stream is previous]
        for handler in handlers:
            handler.setStream(stream)
        sys.stderr = stream
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield path
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if python_on_fd2:
            for handler in handlers:
                handler.setStream(previous)
            sys.stderr = previous
            stream.close()


def image_size_arg(text: str) -> tuple[int, int]:
    """Parse ``64`` or ``64x128`` (height x width) for argparse."""
    from study.config import parse_image_size

    try:
        return parse_image_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def class_weights_arg(text: str) -> str | list[float]:
    """``none``, ``inverse_frequency``, ``median_frequency`` or ``w0,w1,...`` for argparse."""
    from study.config import check_class_weights

    value: str | list[float] = text
    if "," in text:
        try:
            value = [float(w) for w in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    try:
        check_class_weights(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--class-weights: ")) from None
    return value


def model_source_arg(text: str) -> tuple[str, str]:
    """``NAME=SOURCE`` (``--pretrained-model``): split at the last ``=`` (a Hub id or path holds none)."""
    name, sep, source = text.rpartition("=")
    if not sep or not name or not source:
        raise argparse.ArgumentTypeError(f"expected NAME=SOURCE, e.g. tv:deeplabv3_resnet50=imagenet, got {text!r}")
    return name, source
