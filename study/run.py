"""The study: ``python -m study.run --preset {demo,report,search}``.

Ray Tune drives one trial per configuration (Optuna TPE + ASHA for ``search``/``demo``,
a fixed grid for ``report``); each trial is a Ray Train run of the shared loop. SegFormer
(and, in the demo, FCN) encoders are first pretrained on Cityscapes when a preset's
trials fine-tune or freeze them and no source is given. Results, checkpoints and
``summary.csv`` land in ``STORAGE/NAME``; ``--resume`` continues an interrupted study.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_spaces import PRESETS, load_preset
from study import storage
from study.cli import OneLineParser, image_size_arg, main_guard
from study.config import PRECISIONS, TrainConfig, parse_image_size
from study.errors import ConfigError

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("trial_id", "model", "init", "lr", "gamma", "epochs", "best_val_miou", "best_epoch",
                   "stopped_early", "status", "best_checkpoint")


@dataclass
class StudySettings:
    """A preset's values with the command line's overrides applied (names match the options)."""

    preset: str = "demo"
    name: str = ""
    storage: str = "results"
    data_root: str = "data/toy"
    toy: bool = False
    dataset: str = "pets"
    epochs: int = 6
    batch_size: int = 16
    image_size: Any = "32"
    val_every: int = 2
    seed: int = 0
    num_samples: int = 8
    max_concurrent: int = 0  # 0: as many as resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 if the cluster has GPUs, else 0
    workers_per_trial: int = 1
    scheduler: str = "asha"
    searcher: str = "optuna"
    grace_period: int = 2
    reduction_factor: int = 2
    space: dict[str, Any] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    pretrain: dict[str, Any] = field(default_factory=dict)
    pretrained_segformer: str | None = None
    pretrained_fcn: str | None = None
    precision: str = "auto"
    cache_dir: str | None = None
    wandb: bool = False
    resume: bool = False
    report: bool = True

    @property
    def experiment_dir(self) -> str:
        return storage.join(self.storage, self.name)

    def trial_base(self, pretrained_by_model: dict[str, str]) -> dict[str, Any]:
        """The TrainConfig fields every trial shares (Tune samples model, init, lr, gamma)."""
        return {"dataset": self.dataset, "data_root": self.data_root, "epochs": self.epochs,
                "batch_size": self.batch_size, "image_size": list(parse_image_size(self.image_size)),
                "val_every": self.val_every, "seed": self.seed, "precision": self.precision,
                "cache_dir": self.cache_dir, "pretrained_by_model": pretrained_by_model}

    def validate(self) -> None:
        models = {p["model"] for p in self.points} | set(self.space.get("model", ("choice", []))[1])
        for model in sorted(models) or ["fcn_resnet50"]:  # the trial-level ranges, named as options
            TrainConfig(dataset=self.dataset, model=model, epochs=self.epochs, batch_size=self.batch_size,
                        image_size=self.image_size, val_every=self.val_every, seed=self.seed,
                        precision=self.precision)
        checks = [("num-samples", self.num_samples >= 1, "an integer >= 1"),
                  ("max-concurrent", self.max_concurrent >= 0, "an integer >= 0"),
                  ("cpus-per-trial", self.cpus_per_trial > 0, "a number > 0"),
                  ("gpus-per-trial", self.gpus_per_trial is None or self.gpus_per_trial >= 0, "a number >= 0"),
                  ("workers-per-trial", self.workers_per_trial >= 1, "an integer >= 1")]
        for option, ok, expected in checks:
            if not ok:
                raise ConfigError(f"--{option}: expected {expected}, got {getattr(self, option.replace('-', '_'))!r}")
        if self.gpus_per_trial and self.workers_per_trial > 1 and not float(self.gpus_per_trial).is_integer():
            raise ConfigError(f"--gpus-per-trial: DDP trials ({self.workers_per_trial} workers) need whole GPUs, "
                              f"got {self.gpus_per_trial}")
        if self.name and (os.sep in self.name or self.name.startswith(".")):
            raise ConfigError(f"--name: expected a plain folder name, got {self.name!r}")


def settings_from_args(argv: list[str] | None) -> StudySettings:
    parser = OneLineParser(prog="python -m study.run", description="Run a segmentation hyperparameter study on Ray.")
    parser.add_argument("--preset", choices=PRESETS, default="demo")
    parser.add_argument("--data-root", help="folder with oxford-iiit-pet/ and cityscapes/ (demo: toy data, made if missing)")
    parser.add_argument("--storage", help="results folder, shared filesystem or s3:// URI (default: ./results)")
    parser.add_argument("--name", help="experiment name (default: the preset's name)")
    parser.add_argument("--num-samples", type=int, help="trials to run (search/demo presets)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    parser.add_argument("--cpus-per-trial", type=float)
    parser.add_argument("--gpus-per-trial", type=float, help="fractional for single-worker trials, e.g. 0.25")
    parser.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial (DDP when > 1)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--image-size", type=image_size_arg)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--pretrained-segformer", help="SegFormer encoder source (skips the Cityscapes stage)")
    parser.add_argument("--pretrained-fcn", help="FCN ResNet-50 encoder source (default: imagenet)")
    parser.add_argument("--cache-dir", help="decoded-data cache folder on every node")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="autocast dtype (default auto: bf16 on CPUs with native bf16, fp32 elsewhere)")
    parser.add_argument("--wandb", action="store_true", default=None, help="log each trial to Weights & Biases")
    parser.add_argument("--resume", action="store_true", help="continue the experiment STORAGE/NAME")
    parser.add_argument("--no-report", action="store_true", help="skip analysis.report at the end")
    args = parser.parse_args(argv)

    preset = load_preset(args.preset)
    known = {f.name for f in dataclasses.fields(StudySettings)}
    settings = StudySettings(preset=args.preset, name=args.preset, **{k: v for k, v in preset.items() if k in known})
    for key, value in vars(args).items():
        if key in known and value is not None and key != "preset":
            setattr(settings, key, value)
    settings.report = not args.no_report
    if settings.data_root and not storage.is_remote(settings.data_root):
        settings.data_root = str(Path(settings.data_root).resolve())
    if not storage.is_remote(settings.storage):
        settings.storage = str(Path(settings.storage).resolve())
    if settings.cache_dir:
        settings.cache_dir = str(Path(settings.cache_dir).resolve())
    settings.validate()
    return settings


def main(argv: list[str] | None = None) -> int:
    from study import orchestrate

    settings = settings_from_args(argv)
    orchestrate.run_study(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_guard("study.run", main))
