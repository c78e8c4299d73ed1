"""One local trial, no Ray: ``python -m study.run_trial --dataset pets --data-root R --model segformer ...``.

Writes ``OUT/config.json``, ``OUT/metrics.csv`` (one row per validation),
``OUT/best.pt`` (best weights by val mIoU) and ``OUT/last.pt`` (resumable state).
An ``OUT`` that already holds a run is refused unless ``--resume`` continues it; one whose run stopped before its
first checkpoint (no ``last.pt``) is started over. ``--resume`` keeps the run's recorded options but for those given
anew, by the one resume rule of ``study.run`` too (``study.resolve.resume_values``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path
from typing import Any

from foundation.errors import ConfigError
from foundation.io import atomic_torch_save, load_checkpoint, write_csv, write_json
from study.cli import OneLineParser, add_options, exit_cli, given, path_type
from study.config import TrainConfig, check_trial_data, parse_image_size
from study.layout import model_slug
from study.loop import METRIC_COLUMNS, TrainResult, ValidationEvent, train
from study.recipes import apply_recipe
from study.resolve import Given, resume_values
from study.settings import StudySettings
from study.task import load_task
from study.trial import build_trial_model, load_splits, model_checkpoint

log = logging.getLogger(__name__)

OWN_FILES = ("config.json", "metrics.csv", "best.pt", "last.pt")  # what a run writes in OUT


def read_run(out: Path, resume: bool) -> dict[str, Any] | None:
    """The ``config.json`` of the run in ``out`` that ``--resume`` continues (None without ``--resume``).

    A run is resumable once it has a ``last.pt``. A folder holding only a run's own files and no ``last.pt`` holds
    a run that stopped before its first checkpoint: it starts over, with ``--resume`` (from its ``config.json``,
    as the resume rule says) or without. Any other file in ``out`` is the user's: a new run there is refused."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; expected a folder")
    files = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not resume:
        if "last.pt" in files:
            raise ConfigError(f"--out {out}: already holds a run; pass --resume to continue it or choose another --out")
        others = [name for name in files if name not in OWN_FILES]
        if others:
            raise ConfigError(f"--out {out}: holds {', '.join(others[:3])}, not a run's files; choose an empty or "
                              "new folder")
        if files:
            log.info("%s: its run stopped before its first checkpoint (no last.pt); starting over", out)
        return None
    if "config.json" not in files:
        raise ConfigError(f"--resume: nothing to resume in {out} (no config.json)")
    try:
        recorded = json.loads((out / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: {out / 'config.json'}: not a run's configuration ({exc})") from None
    if not isinstance(recorded, dict):
        raise ConfigError(f"--resume: {out / 'config.json'}: not a run's configuration")
    return recorded


def check_out_dir(cfg: TrainConfig, out: Path, resume: bool) -> dict[str, Any] | None:
    """Refuse to overwrite another run, or to resume one with a setting that cannot change (``resume_values``);
    on ``--resume`` return the saved resumable state (None: the run stopped before its first checkpoint)."""
    recorded = read_run(out, resume)
    if recorded is None:
        return None
    resume_values(TrainConfig, recorded, cfg.to_dict(), f"the run in {out}")
    if not (out / "last.pt").is_file():
        log.info("resume: %s has no last.pt (the run stopped before its first checkpoint); training from the start",
                 out)
        return None
    return load_checkpoint(out / "last.pt", option="--resume")


def run_local(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = False,
              download: bool = False) -> TrainResult:
    """Train one trial into ``out``. Everything is validated before anything is written."""
    out = Path(out)
    state = check_out_dir(cfg, out, resume)
    train_set, val_set = load_splits(cfg, download=download)
    check_trial_data(cfg, len(train_set), train_set.num_classes)  # before anything is written or trained
    model = build_trial_model(cfg, train_set.num_classes)
    rows: list[dict[str, Any]] = []
    if state is not None:
        with open(out / "metrics.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= int(state["epoch"])]
        log.info("resuming %s after epoch %d", out, state["epoch"])
    out.mkdir(parents=True, exist_ok=True)
    if state is None:  # a run that stopped before its first checkpoint is started over: none of its files is kept
        for name in OWN_FILES:
            (out / name).unlink(missing_ok=True)
    write_json(out / "config.json", cfg.to_dict())

    def on_validation(event: ValidationEvent) -> None:
        # metrics.csv, then best.pt, then last.pt: a crash between any two leaves last.pt older than the
        # others, so --resume trains that epoch again and rewrites its row; no row is lost, and best.pt is
        # never ahead of metrics.csv.
        rows.append(event.row)
        write_csv(out / "metrics.csv", rows, METRIC_COLUMNS)
        if event.is_best:
            atomic_torch_save(model_checkpoint(cfg, event, train_set.class_names), out / "best.pt")
        atomic_torch_save({"config": cfg.to_dict(), **event.checkpoint()}, out / "last.pt")

    result = train(cfg, train_set, val_set, model, on_validation=on_validation, resume=state, progress=progress)
    log.info("best val mIoU %.4f at epoch %d; results in %s", result.best_val_miou, result.best_epoch, out)
    return result


def add_trial_options(parser: OneLineParser) -> dict[str, argparse._ArgumentGroup]:
    """The options that define a trial (``TrainConfig``'s, and ``--task``), grouped, with their defaults."""
    groups = add_options(parser, StudySettings, "trial")
    groups["task and data"].add_argument("--download", action="store_true",
                                         help="download Oxford-IIIT Pet if missing (needs internet; default: off)")
    return groups


def config_from_args(args: Any, recorded: dict[str, Any] | None = None, what: str = "the run") -> TrainConfig:
    """defaults < the recipe < the --task file < the options given; resuming, the ``recorded`` run's configuration
    (its ``config.json``) < what the --task file and the options give (``study.resolve.resume_values``)."""
    cli = given(args, StudySettings, "trial")
    task_file = cli.pop("task", None)
    task = load_task(task_file) if task_file else {}
    values = {**task, **cli}
    if recorded is not None:
        labelled = {key: Given(value, f"--task {task_file}: {key}") for key, value in task.items()}
        values = resume_values(TrainConfig, recorded, {**labelled, **cli}, what)
    return TrainConfig(**apply_recipe(values, parse_image_size(values.get("image_size", TrainConfig.image_size))))


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m study.run_trial",
                           description="Train one segmentation trial locally (no Ray).")
    groups = add_trial_options(parser)
    run = groups["storage and resume"]
    run.add_argument("--out", default=None, type=path_type,
                     help="run folder (default: runs/DATASET-MODEL-INIT-seedSEED)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last.pt (from the start when it has none), with its "
                          "recorded options but those given anew")
    groups["views"].add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    return parser


def out_dir(args: argparse.Namespace, cfg: TrainConfig | None) -> str:
    """``--out``, else ``runs/DATASET-MODEL-INIT-seedSEED`` (``cfg``'s); absolute either way."""
    return args.out or path_type(f"runs/{cfg.dataset}-{model_slug(cfg.model)}-{cfg.init}-seed{cfg.seed}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fresh = None if args.resume and args.out else config_from_args(args)  # the default --out is named after it
    out = Path(out_dir(args, fresh))
    # resuming: the recorded run's settings, but for what the command line (or --task) gives anew
    cfg = config_from_args(args, read_run(out, resume=True), f"the run in {out}") if args.resume else fresh
    run_local(cfg, out, resume=args.resume, progress=not args.no_progress, download=args.download)
    return 0


if __name__ == "__main__":
    exit_cli("study.run_trial", main)
