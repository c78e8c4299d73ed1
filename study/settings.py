"""A study's settings: a preset's values with the command line's overrides, checked before Ray starts."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from study import storage
from study.config import EQUIVALENCE_MARGIN, STUDY_STAGE, TRIAL_RUNNERS, TrainConfig, parse_image_size
from study.errors import ConfigError
from study.layout import CONFIRM_DIR

log = logging.getLogger(__name__)

# The confirm stage's seeds are seed + CONFIRM_SEED_OFFSET + k: they cannot meet the search's (every search
# trial trains with --seed), so no seed of a confirmed configuration is the run that selected it.
CONFIRM_SEED_OFFSET = 1000


@dataclass
class StudySettings:
    """A preset's values with the command line's overrides applied (names match the options)."""

    preset: str = "demo"
    name: str = ""
    storage: str = "results"
    data_root: str = "data/toy"
    toy: bool = False
    dataset: str = "pets"
    task: str | None = None  # the --task file these task fields came from (study.task), recorded in study.json
    classes: list[str] | None = None
    ignore_index: int = 255
    reduce_zero_label: bool | None = None
    class_weights: str | list[float] = "none"
    epochs: int = 6
    batch_size: int = 16
    image_size: Any = "32"
    val_every: int = 2
    seed: int = 0
    repeats: int = 1  # seeds per configuration: seed, seed + 1, ... (grid presets, or the confirm stage)
    confirm_top: int = 0  # after a search: rerun the K best distinct configurations with `repeats` seeds
    equivalence_margin: float = EQUIVALENCE_MARGIN  # mIoU margin of the report's equivalence claim
    num_samples: int = 8
    max_concurrent: int = 0  # 0: as many as resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 if the cluster has GPUs, else 0
    gpus_per_model: dict[str, float] = field(default_factory=dict)  # sized by gpu_shares when --gpus-per-trial
    # is not given and the driver sees the GPU model; a model not in it asks for gpus_per_trial
    workers_per_trial: int = 1
    trial_runner: str = "auto"  # auto: Tune runs one-worker trials itself, Ray Train runs DDP trials
    pretrain_workers: int | None = None  # None: every GPU of one node when the cluster has GPUs, else 1
    autoscaler_config: str | None = None  # None: the running autoscaler's, else ~/ray_bootstrap_config.yaml
    scheduler: str = "asha"
    searcher: str = "optuna"
    grace_period: int = 2
    reduction_factor: int = 2
    space: dict[str, Any] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    pretrain: dict[str, Any] = field(default_factory=dict)
    pretrained_segformer: str | None = None
    pretrained_fcn: str | None = None
    pretrained_models: dict[str, str] = field(default_factory=dict)  # --pretrained-model NAME=SOURCE, any model
    precision: str = "auto"
    # The loop's speed options (study.speed.resolve_speed), passed to every trial and the Cityscapes stage.
    tf32: str = "auto"
    fused_adamw: str = "auto"
    channels_last: str = "auto"
    compile: str = "auto"
    data_placement: str = "auto"  # auto | device | host (study.data.stream)
    cache_dir: str | None = None
    wandb: bool = False
    resume: bool = False
    report: bool = True
    verbose: bool = False
    native_stderr_log: str | None = None  # where the CLI sent native (C++) stderr; copied into logs/ at the end

    @property
    def experiment_dir(self) -> str:
        return storage.join(self.storage, self.name)

    def labels(self) -> dict[str, Any]:
        """The task's label fields, as TrainConfig names them (the class weights are searchable as well)."""
        return {"classes": self.classes, "ignore_index": self.ignore_index,
                "reduce_zero_label": self.reduce_zero_label, "class_weights": self.class_weights}

    def speed_options(self) -> dict[str, str]:
        """The TrainConfig fields that set how fast a trial trains, never what it learns."""
        return {"tf32": self.tf32, "fused_adamw": self.fused_adamw, "channels_last": self.channels_last,
                "compile": self.compile}

    def trial_base(self, pretrained_by_model: dict[str, str]) -> dict[str, Any]:
        """The TrainConfig fields every trial shares; a trial's searched fields (``study.config.SEARCHABLE``:
        batch_size and image_size too) override them in ``study.trial.trial_config``."""
        return {"dataset": self.dataset, "data_root": self.data_root, **self.labels(), "epochs": self.epochs,
                "batch_size": self.batch_size, "image_size": list(parse_image_size(self.image_size)),
                "val_every": self.val_every, "seed": self.seed, "precision": self.precision,
                "data_placement": self.data_placement, "device_memory_share": self.memory_share(),
                "memory_share_by_model": dict(self.gpus_per_model), "cache_dir": self.cache_dir,
                "pretrained_by_model": pretrained_by_model, **self.speed_options()}

    def memory_share(self) -> float:
        """The fraction of a GPU's memory one trial may use (its GPU share), for where its data is placed."""
        share = self.gpus_per_trial or 1.0
        return float(min(share, 1.0)) if self.workers_per_trial == 1 else 1.0

    def validate(self) -> None:
        models = {p["model"] for p in self.points} | set(self.space.get("model", ("choice", []))[1])
        for model in sorted(models) or ["fcn_resnet50"]:  # the trial-level ranges, named as options
            TrainConfig(dataset=self.dataset, **self.labels(), model=model, epochs=self.epochs,
                        batch_size=self.batch_size,
                        image_size=self.image_size, val_every=self.val_every, seed=self.seed,
                        precision=self.precision, data_placement=self.data_placement, **self.speed_options())
        checks = [("num-samples", self.num_samples >= 1, "an integer >= 1"),
                  ("repeats", self.repeats >= 1, "an integer >= 1"),
                  ("confirm-top", self.confirm_top >= 0, "an integer >= 0"),
                  ("equivalence-margin", 0 < self.equivalence_margin < 1, "an mIoU margin in (0, 1)"),
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
        if self.trial_runner not in TRIAL_RUNNERS:
            raise ConfigError(f"--trial-runner: expected one of {', '.join(TRIAL_RUNNERS)}, got {self.trial_runner!r}")
        if self.trial_runner == "tune" and self.workers_per_trial > 1:
            raise ConfigError(f"--trial-runner tune: runs one worker per trial, but --workers-per-trial is "
                              f"{self.workers_per_trial}; use --trial-runner train (or auto) for DDP trials")
        if self.autoscaler_config and not os.path.isfile(self.autoscaler_config):
            raise ConfigError(f"--autoscaler-config {self.autoscaler_config}: no such file")
        if self.pretrain_workers is not None and self.pretrain_workers < 1:
            raise ConfigError(f"--pretrain-workers: expected an integer >= 1, got {self.pretrain_workers!r}")
        if self.pretrain and self.pretrain.get("epochs", 1) < 1:
            raise ConfigError(f"--preset {self.preset}: pretraining epochs must be >= 1")
        self._validate_stages()
        if self.scheduler == "asha" and self.grace_period > self.epochs:
            log.warning("ASHA's grace period (%d epochs) is longer than --epochs %d: clamped to %d",
                        self.grace_period, self.epochs, self.epochs)
            self.grace_period = self.epochs

    def _validate_stages(self) -> None:
        if self.searcher == "grid" and self.confirm_top:
            raise ConfigError(f"--confirm-top: --preset {self.preset} already runs every configuration to its full "
                              "epochs; use --repeats alone")
        if self.searcher != "grid" and self.repeats > 1 and not self.confirm_top:
            raise ConfigError(f"--repeats {self.repeats}: a search's seeds run in its confirm stage; add "
                              "--confirm-top K (the K best configurations, each with the seeds)")
        if self.confirm_top > self.num_samples:
            raise ConfigError(f"--confirm-top {self.confirm_top}: more than the {self.num_samples} trials the search "
                              "runs (--num-samples)")
        for option, source in (("fcn", self.pretrained_fcn), ("segformer", self.pretrained_segformer),
                               *(("model " + m, s) for m, s in self.pretrained_models.items())):
            if source == STUDY_STAGE and not self.pretrain:
                raise ConfigError(f"--pretrained-{option} {STUDY_STAGE}: --preset {self.preset} has no "
                                  "Cityscapes stage")

    def trial_resources(self, config: dict[str, Any]) -> dict[str, float]:
        """What a one-worker trial of ``config`` (Tune's sampled values) asks Tune for: its CPUs, and its model's
        GPU share from ``gpus_per_model``, else ``--gpus-per-trial``."""
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_model.get(config.get("model"),
                                                                           self.gpus_per_trial or 0.0)}

    def gpu_shares(self, gpu_bytes: int) -> dict[str, float]:
        """Per model the study may train: the share of a GPU of ``gpu_bytes`` its estimated peak memory needs
        (``study.gpu_memory``) at the largest batch and image size it may train with; {} when the study's class
        count is not known before its data is read."""
        from study.gpu_memory import estimate_peak_bytes, gpu_share, training_memory
        from study.summary import study_num_classes

        num_classes = study_num_classes(dataclasses.asdict(self))
        if num_classes is None:
            return {}
        batch = max(int(b) for b in self._values("batch_size", self.batch_size))
        height, width = max((parse_image_size(v) for v in self._values("image_size", self.image_size)),
                            key=lambda size: size[0] * size[1])
        shares = {}
        for model in sorted(set(self._values("model", None)) - {None}):
            parameters, activations = training_memory(model, getattr(self, "variant", "b0"), num_classes, height,
                                                      width)
            peak = estimate_peak_bytes(parameters, activations, batch)
            shares[model] = gpu_share(peak, gpu_bytes)
            if peak > gpu_bytes:
                log.warning("%s at %dx%d, batch %d: an estimated %.1f GiB at its peak, more than the GPU's %.1f GiB; "
                            "lower --batch-size or --image-size", model, height, width, batch, peak / 2**30,
                            gpu_bytes / 2**30)
        return shares

    def _values(self, name: str, default: Any) -> list[Any]:
        """Every value ``name`` may take: the warm-start points', and the space's (a range: its bounds)."""
        values = [point[name] for point in self.points if name in point]
        spec = self.space.get(name)
        if spec:  # ("choice", [v, ...]) and ("grid", [...]); a range is (kind, low, high)
            values += list(spec[1]) if spec[0] in ("choice", "grid") else list(spec[1:])
        return values or [default]

    def seeds(self) -> list[int]:
        """The seeds every configuration runs with: ``seed``, ``seed + 1``, ... (``repeats`` of them)."""
        return [self.seed + k for k in range(self.repeats)]

    def grid_points(self) -> list[dict[str, Any]]:
        """The grid's trials: every point with every seed, seed by seed (an interrupted study has whole seeds)."""
        return [{**point, "seed": seed} for seed in self.seeds() for point in self.points]

    def trial_count(self) -> int:
        """The trials the study runs: a grid's points x seeds, or a search's samples and its confirm stage."""
        if self.searcher == "grid":
            return len(self.points) * self.repeats
        return self.num_samples + self.confirm_top * self.repeats

    def confirm_stage(self, points: list[dict[str, Any]]) -> StudySettings:
        """The confirm stage of a search: ``points`` x its seeds to the full epochs, no early stopping, as its
        own Tune experiment in ``STORAGE/NAME/confirm``. Its seeds are ``seed + CONFIRM_SEED_OFFSET + k``,
        disjoint from the search's (all ``seed``): the selected search run is never one of its own seeds."""
        return dataclasses.replace(self, storage=self.experiment_dir, name=CONFIRM_DIR, searcher="grid",
                                   scheduler="fifo", points=points, confirm_top=0, num_samples=len(points),
                                   seed=self.seed + CONFIRM_SEED_OFFSET)

    @property
    def runner(self) -> str:
        """The trial runner in effect: ``tune`` (the loop inside Tune's trainable) or ``train`` (Ray Train)."""
        if self.trial_runner != "auto":
            return self.trial_runner
        return "train" if self.workers_per_trial > 1 else "tune"
