"""A study's settings, declared once per option (``study.options``): ``StudySettings`` extends a trial's
``TrainConfig`` with the study's own options, is resolved by ``study.resolve`` and frozen; what the study asks the
cluster for is a ``ResourcePlan`` beside it, never written back into it."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundation import storage
from foundation.errors import ConfigError
from study.config import (
    EQUIVALENCE_MARGIN,
    SPEED_OPTIONS,
    STUDY_STAGE,
    TRIAL_RUNNERS,
    TrainConfig,
    parse_image_size,
)
from study.constraints import BEFORE_TRAINING, unmeetable
from study.layout import CONFIRM_DIR, STUDY_FILE
from study.options import Choice, Duration, Flag, Kind, LocalPath, Number, Text, option
from study.samplers import SAMPLERS

log = logging.getLogger(__name__)

# The confirm stage's seeds are seed + CONFIRM_SEED_OFFSET + k: they cannot meet the search's (every search
# trial trains with --seed), so no seed of a confirmed configuration is the run that selected it.
CONFIRM_SEED_OFFSET = 1000


# The built-in presets, as data in the grammar of a space file (study.space reads them).
PRESET_FOLDER = Path(__file__).resolve().parents[1] / "search_spaces"
PRESETS = tuple(sorted(path.stem for path in PRESET_FOLDER.glob("*.yaml")))
OBJECTIVE_METRICS = ("val_miou", *BEFORE_TRAINING)  # what an objective or a constraint may name
RUN = ("run", "resume")  # options of study.run that may change on --resume (resources, views)


def entry_values(entry: tuple) -> list[Any]:
    """The values of a space entry a check needs: a choice's or a grid's each (``("choice", [v, ...])``), a range's
    two bounds (``(kind, low, high)``)."""
    kind, *args = entry
    return list(args[0]) if kind in ("choice", "grid") else list(args)


@dataclass(frozen=True)
class ResourcePlan:
    """What a study asks the cluster for, computed from its settings and the cluster (``study.orchestrate.cluster``)
    and never written back into the settings: recorded beside them in ``study.json``."""

    cpus_per_trial: float
    gpus_per_trial: float
    workers_per_trial: int = 1
    max_concurrent: int = 1
    pretrain_workers: int = 1
    gpus_per_model: dict[str, float] = field(default_factory=dict)  # each model's share, sized by its memory

    def trial_resources(self, config: dict[str, Any]) -> dict[str, float]:
        """What a one-worker trial of ``config`` (Tune's sampled values) asks Tune for: its CPUs, and its model's
        GPU share from ``gpus_per_model``, else ``gpus_per_trial``."""
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_model.get(config.get("model"), self.gpus_per_trial)}

    def memory_share(self) -> float:
        """The fraction of a GPU's memory one trial may use (its GPU share), for where its data is placed."""
        share = self.gpus_per_trial or 1.0
        return float(min(share, 1.0)) if self.workers_per_trial == 1 else 1.0


class Objectives(Kind):
    expected = f"a mapping of metric -> max | min, metrics among {', '.join(OBJECTIVE_METRICS)}"

    def check(self, value: Any) -> Any:
        if not isinstance(value, dict) or not value or any(
                k not in OBJECTIVE_METRICS or v not in ("max", "min") for k, v in value.items()):
            raise ValueError(self.expected)
        return dict(value)


class Constraints(Kind):
    expected = f"a mapping of metric -> {{max: X}} and/or {{min: X}}, metrics among {', '.join(OBJECTIVE_METRICS)}"

    def check(self, value: Any) -> Any:
        def bound(b: Any) -> bool:
            return (isinstance(b, dict) and b and set(b) <= {"max", "min"}
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b.values()))

        if not isinstance(value, dict) or any(k not in OBJECTIVE_METRICS or not bound(b) for k, b in value.items()):
            raise ValueError(self.expected)
        value = {k: {d: float(x) for d, x in b.items()} for k, b in value.items()}
        problem = unmeetable(value)
        if problem:
            raise ValueError(f"bounds some value can meet; {problem}")
        return value


class Sources(Kind):
    """``--pretrained-model NAME=SOURCE`` (repeatable): split at the last ``=`` (a Hub id or path holds none)."""

    expected = "NAME=SOURCE, e.g. tv:deeplabv3_resnet50=imagenet"
    metavar = "NAME=SOURCE"
    append = True

    def parse(self, text: str) -> Any:
        name, sep, source = text.rpartition("=")
        if not sep or not name or not source:
            raise ValueError(self.expected)
        return name, source

    def check(self, value: Any) -> Any:
        value = dict(value or {})
        if not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()):
            raise ValueError(self.expected)
        return value


@dataclass(frozen=True)
class StudySettings(TrainConfig):
    """A study: the trial options (``TrainConfig``'s, the base every trial starts from before its searched values)
    and the study's own. Resolved from defaults < preset < space file < task file < command line (``resolve``)."""

    preset: str = option("demo", "the built-in study (default: demo, or search under a --space file)", "search",
                         Choice(PRESETS), where=("run",))
    name: str = option("", "experiment name (default: the --space file's name, else the preset's)",
                       "storage and resume", Text(metavar="NAME", expected="a plain folder name"),
                       where=("run",))
    storage: str = option("results", "results folder, shared filesystem or s3:// URI", "storage and resume",
                          LocalPath(optional=False, metavar="URI"), where=("run",))
    toy: bool = option(False, "write toy data into --data-root when it is missing", "task and data", Flag(),
                       where=("space",))
    task: str | None = option(None, "the task file (docs/tasks.md): the dataset, its classes and labels; options "
                                    "given here override it",
                              "task and data", LocalPath(metavar="FILE.yaml"), where=("run", "trial"))
    repeats: int = option(1, "seeds per configuration (SEED, SEED+1, ...): the report preset's grid, or a search's "
                             "confirm stage", "search", Number(int, 1), where=("run",))
    confirm_top: int = option(0, "after a search, rerun its K best distinct configurations with --repeats seeds to "
                                 "the full epochs (no ASHA); the summary and report use those trials", "search",
                              Number(int, 0), where=("run",))
    equivalence_margin: float = option(EQUIVALENCE_MARGIN, "mIoU margin of the report's equivalence claim",
                                       "views", Number(float, 0, 1, low_open=True), where=("run",))
    num_samples: int = option(8, "trials a search runs", "search", Number(int, 1), where=("run", "space"))
    scheduler: str = option("asha", "asha or fifo (a space file's scheduler: none)", "search",
                            Choice(("asha", "fifo")), where=("space",))
    grace_period: int = option(2, "ASHA's first rung, in epochs", "search", Number(int, 1), where=("space",))
    reduction_factor: int = option(2, "ASHA's reduction factor", "search", Number(int, 2), where=("space",))
    searcher: str = option("optuna", "optuna or grid", "search", Choice(("optuna", "grid")), where=("space",))
    sampler: str = option("tpe", "the Optuna sampler of a search", "search", Choice(lambda: tuple(SAMPLERS)),
                          where=("space",))
    objectives: dict[str, str] = option(None, "what a search optimises: metric -> max | min", "search", Objectives(),
                                        where=("space",), factory=lambda: {"val_miou": "max"})
    constraints: dict[str, dict[str, float]] = option(None, "bounds a configuration must meet: metric -> {max: X}",
                                                      "search", Constraints(), where=("space",), factory=dict)
    budget: float | None = option(None, "the seconds the trials may hold their devices, summed over devices (GPUs, "
                                        "or 1 per CPU trial worker): seconds, or 90s, 30m, 2h; once spent no trial "
                                        "starts and a running one stops at its next validation (default: none)",
                                  "search", Duration(), where=("run", "space", "resume"))
    max_concurrent: int = option(0, "trials at once (0: as resources allow)", "resources", Number(int, 0), where=RUN)
    cpus_per_trial: float = option(1.0, "CPUs per trial", "resources", Number(float, 0, low_open=True), where=RUN)
    gpus_per_trial: float | None = option(None, "GPUs per trial, fractional for one-worker trials (default: sized "
                                                "per model from its estimated peak memory when the driver sees a "
                                                "GPU, else 0.25 on a GPU cluster, else 0)", "resources",
                                          Number(float, 0, optional=True), where=RUN)
    workers_per_trial: int = option(1, "Ray Train workers per trial (DDP when > 1)", "resources", Number(int, 1),
                                    where=RUN)
    trial_runner: str = option("auto", "auto: Tune runs one-worker trials itself, Ray Train runs DDP trials",
                               "resources", Choice(TRIAL_RUNNERS), where=RUN)
    pretrain_workers: int | None = option(None, "DDP workers of the Cityscapes stage (default: every GPU of one "
                                                "node, else 1)", "resources", Number(int, 1, optional=True),
                                          where=RUN)
    autoscaler_config: str | None = option(None, "the cluster launcher config the autoscaler runs with (default: "
                                                 "the running autoscaler's, or ~/ray_bootstrap_config.yaml)",
                                           "resources", LocalPath(metavar="FILE"), where=RUN)
    pretrained_segformer: str | None = option(None, f"SegFormer encoder source, a file (skips the Cityscapes "
                                                    f"stage) or {STUDY_STAGE} (the default: the study's own "
                                                    "Cityscapes stage)", "model", Text(metavar="SOURCE"),
                                              where=("run",))
    pretrained_fcn: str | None = option(None, f"FCN ResNet-50 encoder source: imagenet (default), coco_voc, a file, "
                                              f"or {STUDY_STAGE} (the study's own Cityscapes stage)", "model",
                                        Text(metavar="SOURCE"), where=("run",))
    pretrained_models: dict[str, str] = option(None, "encoder source of any model, e.g. "
                                                     "tv:deeplabv3_resnet50=imagenet (repeatable)", "model",
                                               Sources(), where=("run",), factory=dict, cli="--pretrained-model")
    wandb: bool = option(False, "log each trial to Weights & Biases", "views", Flag(), where=RUN)
    resume: bool = option(False, "continue the experiment STORAGE/NAME", "storage and resume", Flag(),
                          where=("run",))
    report: bool = option(True, "write analysis.report at the end", "views", Flag(), where=RUN)
    verbose: bool = option(False, "also show Ray's own output (workers, Tune, Train) on the console", "views",
                           Flag(), where=RUN)
    # Not options: what the space grammar holds (study.space).
    space: dict[str, Any] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    pretrain: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate()

    @property
    def experiment_dir(self) -> str:
        return storage.join(self.storage, self.name)

    @property
    def study_dir(self) -> str:
        """The study's own folder: its experiment folder, or for its confirm stage (``confirm_stage``) the
        search's, which holds the confirm stage's folder, ``optuna.db`` and ``budget.json``."""
        if self.name == CONFIRM_DIR and storage.exists(storage.join(self.storage, STUDY_FILE)):
            return self.storage
        return self.experiment_dir

    def trial_base(self, pretrained_by_model: dict[str, str], plan: ResourcePlan) -> dict[str, Any]:
        """The TrainConfig fields every trial shares (this study's values of them); a trial's searched fields
        override them in ``study.trial.trial_config``."""
        per_trial = {"model", "init", "pretrained", "device", "device_memory_share"}
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in per_trial}
        return {**base, "image_size": list(self.image_size), "device_memory_share": plan.memory_share(),
                "memory_share_by_model": dict(plan.gpus_per_model), "pretrained_by_model": pretrained_by_model}

    def speed_options(self) -> dict[str, Any]:
        """The options that set how fast a trial trains, never what it learns (the Cityscapes stage's too)."""
        return {name: getattr(self, name) for name in SPEED_OPTIONS}

    def searched_keys(self) -> list[str]:
        """The trial options this study searches (``study.summary.searched_keys``, the one answer, which the
        analysis reads from study.json): the console's and the summary's columns."""
        from study.summary import searched_keys

        return searched_keys({"space": self.space, "points": self.points})

    def models(self) -> list[str]:
        """Every model the study may train: its points' and its space's."""
        return sorted({p["model"] for p in self.points if "model" in p} | set(self._values("model", None)) - {None})

    def validate(self) -> None:
        """The checks between options (each option's own range is its declaration's)."""
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "model"}
        for model in self.models():  # the trial-level checks that depend on the model (the image size it takes)
            TrainConfig(**{**base, "model": model})
        if self.gpus_per_trial and self.workers_per_trial > 1 and not float(self.gpus_per_trial).is_integer():
            raise ConfigError(f"--gpus-per-trial: DDP trials ({self.workers_per_trial} workers) need whole GPUs, "
                              f"got {self.gpus_per_trial}")
        if self.name and (os.sep in self.name or self.name.startswith(".")):
            raise ConfigError(f"--name: expected a plain folder name, got {self.name!r}")
        if self.trial_runner == "tune" and self.workers_per_trial > 1:
            raise ConfigError(f"--trial-runner tune: runs one worker per trial, but --workers-per-trial is "
                              f"{self.workers_per_trial}; use --trial-runner train (or auto) for DDP trials")
        if self.autoscaler_config and not storage.is_remote(self.autoscaler_config) and not os.path.isfile(
                self.autoscaler_config):
            raise ConfigError(f"--autoscaler-config {self.autoscaler_config}: no such file")
        if self.pretrain and self.pretrain.get("epochs", 1) < 1:
            raise ConfigError(f"--preset {self.preset}: pretraining epochs must be >= 1")
        if self.scheduler == "asha" and self.searcher != "grid" and self.val_every > self.epochs:
            raise ConfigError(f"--val-every {self.val_every}: beyond --epochs {self.epochs}, so a trial validates only "
                              "at its end and ASHA can stop none; lower --val-every or raise --epochs")
        if self.sampler == "auto" and importlib.util.find_spec("optunahub") is None:
            raise ConfigError("--sampler auto: OptunaHub's AutoSampler needs the optunahub package (pip install "
                              "optunahub, and the network to fetch the sampler); choose tpe, nsga2, gp or random")
        if self.scheduler == "asha" and self.grace_period > self.epochs:
            log.warning("ASHA's grace period (%d epochs) is longer than --epochs %d: it decides at epoch %d",
                        self.grace_period, self.epochs, self.epochs)
        self._validate_stages()

    @property
    def asha_grace_period(self) -> int:
        """ASHA's first rung: the grace period, within the trials' epochs."""
        return min(self.grace_period, self.epochs)

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
        if self.searcher != "grid" and len(self.points) > self.num_samples:
            raise ConfigError(f"--num-samples {self.num_samples}: fewer than the space's {len(self.points)} "
                              f"warm-start points, which would be dropped; raise --num-samples to at least "
                              f"{len(self.points)} or give fewer points")
        for which, source in (("fcn", self.pretrained_fcn), ("segformer", self.pretrained_segformer),
                               *(("model " + m, s) for m, s in self.pretrained_models.items())):
            if source == STUDY_STAGE and not self.pretrain:
                raise ConfigError(f"--pretrained-{which} {STUDY_STAGE}: --preset {self.preset} has no "
                                  "Cityscapes stage")

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
        for model in self.models():
            parameters, activations = training_memory(model, self.variant, num_classes, height,
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
        if name in self.space:
            values += entry_values(self.space[name])
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
                                   scheduler="fifo", points=points, confirm_top=0, num_samples=max(1, len(points)),
                                   seed=self.seed + CONFIRM_SEED_OFFSET)

    @property
    def runner(self) -> str:
        """The trial runner in effect: ``tune`` (the loop inside Tune's trainable) or ``train`` (Ray Train)."""
        if self.trial_runner != "auto":
            return self.trial_runner
        return "train" if self.workers_per_trial > 1 else "tune"
