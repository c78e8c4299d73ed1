"""Everything a study checks before Ray starts, so a mistake costs seconds and one line, not a cluster.

The search's sampler (Ray pickles it), the experiment folder (refused if it holds a study, unless ``--resume``),
the data (decoded and validated once, which also fills the cache), and every encoder source the trials will load.
Every trial the study can run is built as its trial would be and checked whole, before the data (``check_config``,
which ``--print-space`` runs too) and again with what the data tells (its train images and classes).
No Ray here: these run in the CLI's process.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from foundation import storage
from foundation.errors import ConfigError, UsageError
from segmodels import model_spec
from study.config import STUDY_STAGE, TrainConfig, check_trial_data
from study.constraints import COUNTED, before_training, bounds, violations
from study.layout import CLASS_FREQUENCIES_FILE, LOGS, STUDY_FILE
from study.recipes import RECIPES
from study.samplers import build_sampler
from study.settings import ResourcePlan, StudySettings
from study.space import produced
from study.summary import model_cost, study_num_classes

log = logging.getLogger(__name__)

NEEDS_ENCODER = ("finetune", "freeze")


def check_sampler(settings: StudySettings) -> None:
    """A search's sampler can be pickled: Ray pickles the searcher, and the sampler with it, when the Tuner is built
    and whenever it saves the searcher's state, so one that cannot be would fail the study inside Ray."""
    if settings.searcher == "grid":
        return
    sampler = build_sampler(settings.sampler, settings.seed, settings.num_samples)
    try:
        pickle.dumps(sampler)
    except Exception as exc:  # pickle raises TypeError, AttributeError, PicklingError... as the object decides
        raise ConfigError(f"--sampler {settings.sampler}: {type(sampler).__name__} cannot be pickled ({exc}), and Ray "
                          "pickles the searcher; choose another sampler") from None


def started(files: list[str]) -> bool:
    """The experiment folder's ``files`` hold a study that ran a stage (pretraining, a Tuner), not only what
    ``run_study`` records before its first stage (``study.json``, the class frequencies, ``logs/``): all that a
    study which failed before its Tuner started leaves, which a rerun replaces."""
    return any(f not in (STUDY_FILE, CLASS_FREQUENCIES_FILE) and not f.startswith(f"{LOGS}/") for f in files)


def check_experiment_dir(settings: StudySettings) -> None:
    """Refuse to overwrite a study (or to resume nothing), then probe that the storage is writable."""
    shown = storage.display(settings.experiment_dir)
    try:
        files = storage.list_files(settings.experiment_dir)
        exists = bool(files)
        if started(files) and not settings.resume:
            raise ConfigError(f"--name {settings.name}: {shown} already holds an experiment; pass --resume to "
                              "continue it or choose another --name")
        if settings.resume and not exists:
            raise ConfigError(f"--resume: nothing to resume in {shown}")
        probe = storage.join(settings.storage, f".segstudy-write-test-{os.getpid()}")
        storage.write_bytes(probe, b"")
        storage.delete_file(probe)
    except (OSError, ValueError) as exc:  # pyarrow: unknown scheme, no bucket, no credentials, access denied
        message = getattr(exc, "strerror", None) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise ConfigError(f"--storage {storage.display(settings.storage)}: not usable ({message})") from None


def trial_arms(settings: StudySettings) -> set[tuple[str, str]]:
    """Every (model, init) pair the study may run."""
    arms = {(p["model"], p["init"]) for p in settings.points}
    if settings.space:
        arms |= {(m, i) for m in settings.space["model"][1] for i in settings.space["init"][1]}
    return arms


ALIAS_OPTIONS = {"segformer": "pretrained_segformer", "fcn_resnet50": "pretrained_fcn"}  # the report's two


def given_source(settings: StudySettings, model: str) -> str | None:
    """The encoder source the user named for ``model``: ``--pretrained-segformer``/``--pretrained-fcn`` for the
    report's two, ``--pretrained-model NAME=SOURCE`` for any registered model."""
    if model in ALIAS_OPTIONS:
        return getattr(settings, ALIAS_OPTIONS[model])
    return settings.pretrained_models.get(model)


def source_option(model: str) -> str:
    """The option that names ``model``'s encoder source, for messages."""
    return f"--{ALIAS_OPTIONS[model].replace('_', '-')}" if model in ALIAS_OPTIONS else f"--pretrained-model {model}"


def models_to_pretrain(settings: StudySettings) -> list[str]:
    """The models whose encoder the study's own pretraining stage trains: the preset's (its ``pretrain`` block),
    unless a source is given, and any named ``--pretrained-... cityscapes``; only those some trial fine-tunes or
    freezes."""
    needed = {m for m, i in trial_arms(settings) if i in NEEDS_ENCODER}
    preset = [m for m in settings.pretrain.get("models", []) if not given_source(settings, m)]
    asked = [m for m in sorted(needed) if given_source(settings, m) == STUDY_STAGE]
    return [m for m in dict.fromkeys([*preset, *asked]) if m in needed]


def encoder_sources(settings: StudySettings) -> dict[str, str]:
    """The encoder source of every model whose trials need one and that no pretraining stage makes: the one
    given, else the registry entry's default (torchvision: ImageNet; Hugging Face: the model's own id or folder;
    the ``segformer`` alias: ``nvidia/mit-<variant>``). The presets' default for SegFormer is their own Cityscapes
    stage (``models_to_pretrain``)."""
    needed = {m for m, i in trial_arms(settings) if i in NEEDS_ENCODER}
    staged = set(models_to_pretrain(settings))
    sources = {}
    for model in sorted(needed - staged):
        source = given_source(settings, model) or model_spec(model, settings.variant).default_pretrained
        if source is None:
            raise ConfigError(f"{source_option(model)}: the trials fine-tune or freeze {model} and no "
                              "encoder source is given")
        sources[model] = source
    return sources


def check_config(settings: StudySettings) -> None:
    """Every check that needs neither the data nor the experiment folder, which ``--print-space`` runs too: the
    sampler, the models, the encoder sources, every trial the study can run (``check_trials``) and its constraints
    checked before training (``check_cost_bounds``, when the class count is known before the data is read)."""
    check_sampler(settings)
    check_models(settings)
    encoder_sources(settings)
    check_trials(settings)
    num_classes = known_classes(settings)
    if num_classes is not None:
        check_cost_bounds(settings, num_classes)


def known_classes(settings: StudySettings) -> int | None:
    """The class count known before the data is read: the task's classes, else its format's."""
    return study_num_classes({"classes": settings.classes, "dataset": settings.dataset})


def trial_params(settings: StudySettings) -> list[tuple[str, dict[str, Any]]]:
    """Every trial the study can run, as (where it comes from, its searched values): each point (a grid's trials),
    and each trial its space can produce (``study.space.produced``: choices enumerated, ranges at their bounds)."""
    label = "grid trial {}" if settings.searcher == "grid" else "points[{}]"
    found = [(label.format(k + (settings.searcher == "grid")), point) for k, point in enumerate(settings.points)]
    return found + [("space", params) for params in (produced(settings.space) if settings.space else [])]


def check_trials(settings: StudySettings, check: Callable[[TrainConfig], None] = lambda cfg: None) -> None:
    """Build every trial the study can run as the trial will (``study.trial.trial_config``: the study's values with
    its searched ones), so the options are checked together (recipe, schedule, warmup, class weights, model and
    image size), and pass each to ``check``; the first that fails is refused with the fewest searched values that
    still fail, e.g. ``space {schedule: exponential}: --warmup: ...``."""
    from study.trial import trial_config

    base = settings.trial_base({}, ResourcePlan(cpus_per_trial=settings.cpus_per_trial, gpus_per_trial=0.0))

    def error(params: dict[str, Any]) -> ConfigError | None:
        try:
            check(trial_config(params, base))
        except ConfigError as exc:
            return exc
        return None

    for where, params in trial_params(settings):
        if error(params) is None:
            continue
        culprit = dict(params)
        for key in params:  # drop each value the trial still fails without (it then has the study's own)
            fewer = {k: v for k, v in culprit.items() if k != key}
            if error(fewer) is not None:
                culprit = fewer
        exc = error(culprit)
        if not culprit:  # every trial fails with the study's own values: the options are to blame
            raise exc from None
        shown = ", ".join(f"{k}: {v}" for k, v in culprit.items())
        raise ConfigError(f"{where} {{{shown}}}: {exc}{_study_value(settings, str(exc), culprit)}") from None


def _study_value(settings: StudySettings, message: str, culprit: dict[str, Any]) -> str:
    """`` (the study's --warmup: 0.01, --recipe standard's)``: the value of the option ``message`` names, when the
    study gives it rather than the trial."""
    named = re.match(r"--([\w-]+)", message)
    key = named.group(1).replace("-", "_") if named else None
    if key is None or key in culprit or not hasattr(settings, key):
        return ""
    value = getattr(settings, key)
    recipe = RECIPES[settings.recipe](settings.image_size)
    origin = f", --recipe {settings.recipe}'s" if key in recipe and recipe[key] == value else ""
    return f" (the study's --{named.group(1)}: {value}{origin})"


def cost_is_measured_here(settings: StudySettings) -> bool:
    """Whether the trials run on this machine's device (a local study: no RAY_ADDRESS; on its GPU when it has one,
    unless the trials get none), so that a cost measured here is theirs."""
    from study.loop import resolve_device

    on_gpu = resolve_device(settings.device).type == "cuda"
    return not os.environ.get("RAY_ADDRESS") and (not on_gpu or settings.gpus_per_trial != 0)


def check_cost_bounds(settings: StudySettings, num_classes: int) -> None:
    """Refuse a constraint checked before training (``study.constraints.BEFORE_TRAINING``) that every trial the
    study can run breaks, naming the value that comes closest: parameters and FLOPs counted on the model, the
    measured costs measured as the trials measure them (``study.trial_cost.trial_cost``, cached) where the trials
    run on this machine's device (``cost_is_measured_here``; elsewhere each trial checks its own)."""
    limits = before_training(settings.constraints)
    if not cost_is_measured_here(settings):
        limits = {metric: bound for metric, bound in limits.items() if metric in COUNTED}
    if not limits:
        return
    configs: dict[tuple, TrainConfig] = {}
    check_trials(settings, lambda cfg: configs.setdefault(
        (cfg.model, cfg.variant, tuple(cfg.image_size), cfg.batch_size, cfg.precision, cfg.device), cfg))
    costs = [(cfg, _cost(cfg, num_classes, set(limits))) for cfg in configs.values()]
    for metric, side, bound in bounds(limits):
        if any(not violations({metric: {side: bound}}, cost) for _cfg, cost in costs):
            continue
        cfg, cost = (min if side == "max" else max)(costs, key=lambda pair: pair[1][metric])
        raise ConfigError(f"constraints.{metric}: {side} {bound:g} is broken by every trial the study can run; the "
                          f"closest, {cfg.model} at {cfg.image_size[0]}x{cfg.image_size[1]}, has {metric} "
                          f"{cost[metric]:.4g}")


def _cost(cfg: TrainConfig, num_classes: int, metrics: set[str]) -> dict[str, Any]:
    """``cfg``'s cost: measured and counted (``trial_cost``) when a measured metric is asked, else only counted."""
    if metrics - set(COUNTED):
        from study.trial_cost import trial_cost

        return trial_cost(cfg, num_classes)
    params, flops = model_cost(cfg.model, cfg.variant, num_classes, int(cfg.image_size[0]), int(cfg.image_size[1]))
    return {"params": params, "flops": flops}


def check_models(settings: StudySettings) -> None:
    """Every model the trials may build, whatever their init: a mistyped ``hf:`` folder or id stops the study now
    instead of failing each trial inside Ray."""
    for model in settings.models():
        model_spec(model, settings.variant).check_available()


def check_encoders(settings: StudySettings) -> None:
    """Load every encoder source the trials will need once, here: one that is unavailable (offline, a
    missing file, the wrong model) stops the study now instead of failing each trial inside Ray."""
    from segmodels import build_model

    for model, source in encoder_sources(settings).items():
        option = source_option(model)
        if storage.is_remote(source):
            if not storage.is_file(source):
                raise ConfigError(f"{option} {storage.display(source)}: no such file")
            continue
        try:
            build_model(model, 3, "finetune", source)
        except UsageError as exc:  # the model's one-line error, named after the study's option
            raise type(exc)(str(exc).replace("--pretrained ", f"{option} ", 1)) from None
        log.info("encoder for %s: %s (checked)", model, source)


def prepare_data(settings: StudySettings) -> tuple[list[dict], int]:
    """Write the toy data if the preset uses it, then decode + validate every split once (fills the cache);
    returns each class's pixel count and share per split (``study.data.frequencies``), shown once here, and the
    number of train images."""
    from study.data import Labels, build_dataset
    from study.data.frequencies import frequency_rows
    from study.data.toy import toy_exists, write_toy

    root = Path(settings.data_root)
    if settings.toy and not toy_exists(root):
        write_toy(root)
    labels = Labels.of(settings)
    splits = {split: build_dataset(settings.dataset, split, root, settings.image_size, cache_dir=settings.cache_dir,
                                   labels=labels) for split in ("train", "val")}
    rows = frequency_rows(splits["train"].class_names, {s: d.class_pixels for s, d in splits.items()})
    log.info("class pixel shares (train / val): %s", ", ".join(
        f"{r['class']} {100 * r['train_share']:.1f}% / {100 * r['val_share']:.1f}%" for r in rows))
    absent = [r["class"] for r in rows if not r["train_pixels"]]
    if absent:
        log.warning("%d of %d classes never occur in the train split: %s", len(absent), len(rows),
                    ", ".join(absent[:10]) + (", ..." if len(absent) > 10 else ""))
    if models_to_pretrain(settings):  # one pretraining task, whichever models use it
        pretrain = settings.pretrain
        for split in ("train", "val"):
            build_dataset(pretrain["dataset"], split, pretrain.get("data_root", root), pretrain["image_size"],
                          cache_dir=settings.cache_dir, labels=Labels.of(pretrain))
    return rows, len(splits["train"])


def preflight(settings: StudySettings) -> list[dict]:
    """Every check before Ray starts; returns the class frequencies (written to the experiment once it exists)."""
    check_config(settings)
    check_experiment_dir(settings)
    frequencies, train_images = prepare_data(settings)
    workers = settings.workers_per_trial
    check_trials(settings, lambda cfg: check_trial_data(cfg, train_images, len(frequencies), workers))
    if known_classes(settings) is None:  # not checked before the data: its class count was not known
        check_cost_bounds(settings, len(frequencies))
    check_encoders(settings)
    return frequencies
