"""The W&B API key, handed to the W&B logging actors without Ray ever seeing it.

Ray's ``WandbLoggerCallback`` (ray/air/integrations/wandb.py, ``_start_logging_actor``) copies
``WANDB_API_KEY`` from the driver's environment into its logging actors' ``runtime_env``. A runtime env is
public to the whole cluster: ``ray list actors --detail``, ``ray list tasks --detail`` and ``ray list
runtime-envs`` show it in plain text (the dashboard masks it for browsers only), and every node's
``runtime_env_agent.log`` prints it. Ray's ``WANDB_SETUP_API_KEY_HOOK`` is no way around that: Ray calls
the hook on the driver and puts its answer into that same environment variable, which it then copies.

So the key leaves the driver's environment (``withhold_key``) for a file that only its user can read, in a
fresh private folder (0700, under ``$XDG_RUNTIME_DIR`` or the temp folder) on the driver's node; the file
goes when the experiment ends, or with the driver. ``SecretWandbCallback`` starts each trial's logging
actor with no runtime env of its own; Ray pins those actors to the driver's node, where each reads the file
into its own process environment just before ``wandb.init``: only that process and the wandb service
processes it starts ever hold the key. A key from ``wandb login`` stays in the user's netrc, which wandb
reads there itself. What Tune saves of the callback in the experiment folder holds the file's path at most.

``withhold_key`` may be called early, and is best called before a local Ray starts: a Ray that the driver
starts copies the driver's environment into every Ray process (raylet, GCS, dashboard), and so into every
worker's. That is no runtime env (no State API view or log shows it), but needlessly wide.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray.air.integrations.wandb import (
    WANDB_GROUP_ENV_VAR,
    WandbLoggerCallback,
    _get_wandb_project,
    _WandbLoggingActor,
)
from ray.air.util.node import _force_on_current_node

from foundation.errors import ConfigError

log = logging.getLogger(__name__)

KEY_VAR = "WANDB_API_KEY"
KEY_FILE = "api_key"
# This driver's key (out of its environment) and the private file the logging actors read it from.
_held: dict[str, str] = {}
_cleanup_registered: list[bool] = []


def withhold_key() -> str | None:
    """Move ``WANDB_API_KEY`` out of this process's environment (so that no Ray process it starts, and no
    runtime env Ray builds from it, has it) into the private key file. Returns the file's path, or None
    when this process was given no key. Safe to call again: a key set anew in the environment replaces the
    held one, and the file is written again if it was removed."""
    key = os.environ.pop(KEY_VAR, None)
    if key and key != _held.get("key"):
        _held["key"] = key
        _held.pop("file", None)
    if not _held.get("key"):
        return None
    path = _held.get("file")
    if not path or not os.path.isfile(path):
        path = _write_private(_held["key"])
        _held["file"] = path
    return path


def _write_private(key: str) -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")  # per-user, in memory, cleared at logout
    root = runtime if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK) else None
    folder = tempfile.mkdtemp(prefix="segstudy-wandb-", dir=root)  # mode 0700: nobody else may even list it
    path = os.path.join(folder, KEY_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key)
    if not _cleanup_registered:
        atexit.register(forget_key_file)
        _cleanup_registered.append(True)
    return path


def forget_key_file() -> None:
    """Remove the private key file and its folder (the key stays in this process for a later experiment)."""
    path = _held.pop("file", None)
    if path:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def read_key_file(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError:  # gone (the experiment ended) or not on this node: wandb falls back to its own login
        return None


def key_from_login() -> bool:
    """Whether wandb has credentials for this user without ``WANDB_API_KEY``: the key ``wandb login`` wrote
    to the netrc (or an identity token file). Read locally, as wandb itself reads it; nothing is sent."""
    import wandb

    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth
    except ImportError:  # an older wandb: its api object reads the netrc
        try:
            return bool(wandb.api.api_key)
        except Exception:  # no readable login is no login
            return False
    try:
        settings = wandb_setup.singleton().settings
        return bool(os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or wbauth.read_netrc_auth(host=settings.base_url))
    except Exception:  # a malformed netrc: wandb warns about it itself
        return False


def wandb_mode() -> str:
    """``WANDB_MODE`` if set, else online with a key (``WANDB_API_KEY`` or ``wandb login``), offline without."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if withhold_key() or key_from_login() else "offline"  # withheld: out of the environment


def check_key(mode: str | None) -> str | None:
    """Withhold the key (``withhold_key``) and return its file; online runs without any key are an error."""
    key_file = withhold_key()
    if mode == "online" and not key_file and not key_from_login():
        raise ConfigError("--wandb: WANDB_MODE=online but no W&B key: set WANDB_API_KEY or run `wandb login` "
                          "(or unset WANDB_MODE: runs are then written offline)")
    return key_file


def warn_if_the_job_has_the_key() -> None:
    """Too late to hide, but worth saying: a key given in the Ray job's runtime env is public to the cluster."""
    runtime_env = ray.get_runtime_context().runtime_env if ray.is_initialized() else None
    if KEY_VAR in ((runtime_env or {}).get("env_vars") or {}):
        log.warning("WANDB_API_KEY is in this Ray job's runtime env, which everyone on the cluster can read "
                    "(ray list jobs --detail): replace the key, and give the new one by `wandb login` on the head "
                    "(docs/cluster.md)")


def keyed_actor_class(key_file: str | None) -> type:
    """Ray's W&B logging actor, reading the key from ``key_file`` (on its node: the driver's) at start."""

    class KeyedWandbLoggingActor(_WandbLoggingActor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            key = read_key_file(key_file)
            if key:  # this process only: wandb.init reads it, and hands it to the service it starts
                os.environ[KEY_VAR] = key
            super().__init__(*args, **kwargs)

    # Its name in the State API and the dashboard. Not a name this module has, so cloudpickle ships the
    # class (with its key_file) by value.
    KeyedWandbLoggingActor.__qualname__ = "KeyedWandbLoggingActor"
    return KeyedWandbLoggingActor


class SecretWandbCallback(WandbLoggerCallback):
    """Ray's ``WandbLoggerCallback`` without the key in a runtime env: one W&B run per trial, logged by an
    actor on the driver's node that gets the key from the driver's private key file (see the module)."""

    def setup(self, *args: Any, **kwargs: Any) -> None:
        # Ray's setup, less its _set_api_key: that one puts the key (from api_key, api_key_file or the
        # WANDB_SETUP_API_KEY_HOOK) into os.environ, whence the logging actors' runtime env, and demands a key
        # even for offline runs.
        self.api_key_file = None
        self.key_file = check_key(self.kwargs.get("mode"))
        warn_if_the_job_has_the_key()
        self.project = _get_wandb_project(self.project)
        if not self.project:
            raise ValueError("WandbLoggerCallback: no W&B project")
        if not self.group and os.environ.get(WANDB_GROUP_ENV_VAR):
            self.group = os.environ.get(WANDB_GROUP_ENV_VAR)

    def _start_logging_actor(self, trial: Any, exclude_results: list[str], **wandb_init_kwargs: Any) -> None:
        key_file = withhold_key()  # the key stays out of the environment that Ray's own code copies
        if self._remote_logger_class is None or key_file != getattr(self, "_actor_key_file", None):
            # What Ray's method builds, less runtime_env={"env_vars": {"WANDB_API_KEY": ...}}.
            self._actor_key_file = key_file
            self._remote_logger_class = ray.remote(num_cpus=0, **_force_on_current_node(), max_restarts=-1,
                                                   max_task_retries=-1)(keyed_actor_class(key_file))
        super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        try:
            super().on_experiment_end(trials, **info)  # waits for the logging actors, then ends them
        finally:
            forget_key_file()
            self._remote_logger_class = None
