"""Small helpers shared by the command-line entry points (argparse, one-line errors)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from foundation.errors import StudyFailed, StudyInterrupted, UsageError
from study.options import GROUPS, Flag, Kind, LocalPath, declared, flag, size_text


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
    except StudyFailed as exc:
        print(f"{prog}: failed: {exc}", file=sys.stderr)
        return exc.exit_code
    except StudyInterrupted as exc:
        print(f"{prog}: interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def exit_cli(prog: str, main: Callable[[list[str] | None], int | None]) -> NoReturn:
    """A ``python -m`` entry point: run ``main`` under ``main_guard`` and exit with its code. What the run made is
    first frozen out of the interpreter's last garbage collection, which would otherwise walk every object that
    torch, torchvision and transformers created (docs/reliability.md has the measured times). A stopped study's
    driver then exits within ``ray job stop``'s wait instead of being killed in its teardown. Exit handlers (Ray's
    disconnect among them) still run."""
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


def add_options(parser: argparse.ArgumentParser, cls: type, place: str,
                preset_defaults: bool = False) -> dict[str, argparse._ArgumentGroup]:
    """Every option of ``cls`` declared for ``place`` (``run`` or ``trial``), in its help group (``add_option``);
    the help says the default comes from the preset (``preset_defaults``) for the options a preset may set.
    Returns the help groups by name, for a command's own arguments."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for field in declared(cls):
        meta = field.metadata
        if place in meta["where"]:
            from_preset = preset_defaults and "space" in meta["where"]
            add_option(groups[meta["group"]], field, "from the preset" if from_preset else None)
    return groups


def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, field: dataclasses.Field,
               shown: str | None = None) -> None:
    """One declared option (``study.options.declaration``), typed by its kind. It defaults to None, so the caller
    sees what was given; its help gives the declared default, or ``shown`` where the default comes from elsewhere."""
    meta = field.metadata
    kind, default = meta["kind"], _default(field)
    help_text = meta["help"] if "default" in meta["help"] else f"{meta['help']} (default: {shown or _shown(default)})"
    option_flag = meta["cli"] or flag(field.name)
    if isinstance(kind, Flag) and default is True:
        parser.add_argument(f"--no-{field.name.replace('_', '-')}", dest=field.name, action="store_const",
                            const=False, default=None, help=help_text)
    elif isinstance(kind, Flag):
        parser.add_argument(option_flag, dest=field.name, action="store_const", const=True, default=None,
                            help=help_text)
    else:
        parser.add_argument(option_flag, dest=field.name, type=_parser(kind), choices=kind.choices(),
                            metavar=kind.metavar, action="append" if kind.append else None, default=None,
                            help=help_text)


def given(args: argparse.Namespace, cls: type, place: str) -> dict[str, Any]:
    """The options of ``cls`` for ``place`` that the command line gave, by field name."""
    values = {f.name: getattr(args, f.name) for f in declared(cls) if place in f.metadata["where"]}
    return {name: value for name, value in values.items() if value is not None}


def _default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]


def _shown(default: Any) -> str:
    if isinstance(default, tuple):
        return size_text(default)
    return "none" if default in (None, {}, []) else str(default)


def _parser(kind: Kind) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected {exc}, got {text!r}") from None

    return parse


def path_type(text: str) -> str:
    """argparse's ``type`` of a path option that is no declared field (``--out``, ``--save-predictions``): absolute
    against the working folder, as a declared path option is (``study.options.LocalPath``)."""
    return _parser(LocalPath(optional=False))(text)
