"""One local trial, no Ray: ``python -m study.run_trial --dataset pets --data-root R --model segformer ...``.

Writes ``OUT/config.json``, ``OUT/metrics.csv`` (one row per validation),
``OUT/best.pt`` (best weights by val mIoU) and ``OUT/last.pt`` (resumable state).
An ``OUT`` that already holds a run is refused unless ``--resume`` continues it.
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
from study.config import TrainConfig, parse_image_size
from study.loop import METRIC_COLUMNS, TrainResult, ValidationEvent, train
from study.options import names
from study.recipes import apply_recipe
from study.settings import StudySettings
from study.task import load_task
from study.trial import build_trial_model, load_splits, model_checkpoint

log = logging.getLogger(__name__)

# Options that may differ when resuming (where the data lives, how long to train, which device, how fast).
RESUMABLE_CHANGES = set(names(TrainConfig, "resume"))


def check_out_dir(cfg: TrainConfig, out: Path, resume: bool) -> dict[str, Any] | None:
    """Refuse to overwrite another run; on ``--resume`` return the saved resumable state."""
    holds_run = out.is_dir() and any(out.iterdir())
    if not resume:
        if holds_run:
            raise ConfigError(f"--out {out}: already holds a run; pass --resume to continue it or choose another --out")
        return None
    if not (out / "last.pt").is_file():
        raise ConfigError(f"--resume: nothing to resume in {out} (no last.pt)")
    saved = json.loads((out / "config.json").read_text())
    current = cfg.to_dict()
    defaults = TrainConfig().to_dict()  # a field newer than the run: the run had its default
    saved = {**defaults, **saved}
    differing = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if differing:
        key = differing[0]
        raise ConfigError(f"--{key.replace('_', '-')}: {current[key]!r} differs from the run in {out} "
                          f"({saved.get(key)!r}); resume with the same settings or choose another --out")
    return load_checkpoint(out / "last.pt", option="--resume")


def run_local(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = False,
              download: bool = False) -> TrainResult:
    """Train one trial into ``out``. Everything is validated before anything is written."""
    out = Path(out)
    state = check_out_dir(cfg, out, resume)
    train_set, val_set = load_splits(cfg, download=download)
    model = build_trial_model(cfg, train_set.num_classes)
    rows: list[dict[str, Any]] = []
    if state is not None:
        with open(out / "metrics.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= int(state["epoch"])]
        log.info("resuming %s after epoch %d", out, state["epoch"])
    out.mkdir(parents=True, exist_ok=True)
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


def config_from_args(args: Any) -> TrainConfig:
    """defaults < the recipe < the --task file < the options given."""
    cli = given(args, StudySettings, "trial")
    task = load_task(cli.pop("task")) if "task" in cli else {}
    values = {**task, **cli}
    return TrainConfig(**apply_recipe(values, parse_image_size(values.get("image_size", TrainConfig.image_size))))


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m study.run_trial",
                           description="Train one segmentation trial locally (no Ray).")
    groups = add_trial_options(parser)
    run = groups["storage and resume"]
    run.add_argument("--out", default=None, type=path_type,
                     help="run folder (default: runs/DATASET-MODEL-INIT-seedSEED)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    groups["views"].add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    return parser


def out_dir(args: argparse.Namespace, cfg: TrainConfig) -> str:
    """``--out``, else ``runs/DATASET-MODEL-INIT-seedSEED``; absolute either way."""
    return args.out or path_type(f"runs/{cfg.dataset}-{cfg.model}-{cfg.init}-seed{cfg.seed}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    run_local(cfg, out_dir(args, cfg), resume=args.resume, progress=not args.no_progress, download=args.download)
    return 0


if __name__ == "__main__":
    exit_cli("study.run_trial", main)
