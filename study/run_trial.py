"""One local trial, no Ray: ``python -m study.run_trial --dataset pets --data-root R --model segformer ...``.

Writes ``OUT/config.json``, ``OUT/metrics.csv`` (one row per validation),
``OUT/best.pt`` (best weights by val mIoU) and ``OUT/last.pt`` (resumable state).
An ``OUT`` that already holds a run is refused unless ``--resume`` continues it.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from study.cli import OneLineParser, class_weights_arg, exit_cli, image_size_arg
from study.config import (
    COMPILE_MODES,
    DATA_PLACEMENTS,
    DATASETS,
    DEVICES,
    INITS,
    MODELS,
    PRECISIONS,
    SEGFORMER_VARIANTS,
    SWITCHES,
    TrainConfig,
)
from study.errors import ConfigError
from study.io import atomic_torch_save, load_checkpoint, write_csv, write_json
from study.loop import METRIC_COLUMNS, TrainResult, ValidationEvent, train
from study.task import FIELDS, load_task
from study.trial import build_trial_model, load_splits, model_checkpoint

log = logging.getLogger(__name__)

# Options that may differ when resuming (where the data lives, how long to train, which device).
RESUMABLE_CHANGES = {"data_root", "epochs", "device", "cache_dir", "data_placement", "device_memory_share"}

TASK_FIELDS = tuple(FIELDS.values())  # dataset, data_root, classes, ..., as options or from --task
SPEED_OPTIONS = ("tf32", "fused_adamw", "channels_last", "compile")  # how fast, not what is trained
RESUMABLE_CHANGES |= set(SPEED_OPTIONS)


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


def add_trial_options(parser: OneLineParser) -> None:
    """The options that define a trial, with TrainConfig's defaults (shared with other entry points)."""
    d = TrainConfig()
    # The task's options default to None: a value given here beats the --task file, which beats TrainConfig's.
    parser.add_argument("--task", metavar="FILE.yaml", help="the task file (study/task.py): dataset, root, classes...")
    parser.add_argument("--dataset", choices=DATASETS, help=f"dataset format (default {d.dataset})")
    parser.add_argument("--data-root", help=f"the dataset's root, e.g. the folder holding oxford-iiit-pet/ "
                                            f"(default {d.data_root})")
    parser.add_argument("--class-weights", type=class_weights_arg,
                        help="loss weights per class: none (default), inverse_frequency, median_frequency or w0,w1,...")
    parser.add_argument("--model", default=d.model, help=f"{', '.join(MODELS)} or hf:ID_OR_FOLDER (docs/models.md)")
    parser.add_argument("--init", choices=INITS, default=d.init)
    parser.add_argument("--pretrained", default=None,
                        help="encoder source: a file, a Hugging Face id/folder (hf:), imagenet or coco_voc (tv:)")
    parser.add_argument("--variant", choices=SEGFORMER_VARIANTS, default=d.variant, help="SegFormer MiT variant")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--gamma", type=float, default=d.gamma)
    parser.add_argument("--image-size", type=image_size_arg,
                        help=f"N or HxW, e.g. 64 or 64x128 (default {d.image_size[0]})")
    parser.add_argument("--val-every", type=int, default=d.val_every)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", choices=DEVICES, default=d.device)
    parser.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                        help="autocast dtype (auto: bf16 on CPUs with native bf16, fp32 elsewhere)")
    parser.add_argument("--data-placement", choices=DATA_PLACEMENTS, default=d.data_placement,
                        help="where the splits live while training: device, host (streamed to the GPU batch by "
                             "batch) or auto (device when they fit half the trial's free GPU memory)")
    parser.add_argument("--tf32", choices=SWITCHES, default=d.tf32,
                        help="TF32 matmuls and convolutions on CUDA (auto: on; off: strict fp32)")
    parser.add_argument("--fused-adamw", choices=SWITCHES, default=d.fused_adamw,
                        help="AdamW(fused=True), amsgrad kept (auto: on CUDA)")
    parser.add_argument("--channels-last", choices=SWITCHES, default=d.channels_last,
                        help="NHWC memory format (auto: the convnets on CUDA)")
    parser.add_argument("--compile", choices=COMPILE_MODES, default=d.compile,
                        help="torch.compile the model; reduce-overhead adds CUDA graphs (auto: reduce-overhead on "
                             "CUDA for trials long enough to pay for the compile, off on the CPU)")
    parser.add_argument("--cache-dir", default=None,
                        help="decoded-data cache (default $SEGSTUDY_CACHE or ~/.cache/segstudy)")
    parser.add_argument("--download", action="store_true", help="download Oxford-IIIT Pet if missing (needs internet)")


def config_from_args(args: Any) -> TrainConfig:
    task = load_task(args.task) if args.task else {}
    given = {name: getattr(args, name) for name in TASK_FIELDS if getattr(args, name, None) is not None}
    return TrainConfig(
        **{**task, **given}, model=args.model, init=args.init, pretrained=args.pretrained,
        variant=args.variant, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, gamma=args.gamma,
        val_every=args.val_every, seed=args.seed, device=args.device,
        precision=args.precision, cache_dir=args.cache_dir, data_placement=args.data_placement,
        **{name: getattr(args, name) for name in SPEED_OPTIONS},
    )


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m study.run_trial",
                           description="Train one segmentation trial locally (no Ray).")
    add_trial_options(parser)
    parser.add_argument("--out", default=None, help="run folder (default runs/DATASET-MODEL-INIT-seedSEED)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    out = args.out or f"runs/{cfg.dataset}-{cfg.model}-{cfg.init}-seed{cfg.seed}"
    run_local(cfg, out, resume=args.resume, progress=not args.no_progress, download=args.download)
    return 0


if __name__ == "__main__":
    exit_cli("study.run_trial", main)
