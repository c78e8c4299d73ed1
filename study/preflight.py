"""Everything a study checks before Ray starts, so a mistake costs seconds and one line, not a cluster.

The experiment folder (refused if it holds a study, unless ``--resume``), the data (decoded and
validated once, which also fills the cache), and every encoder source the trials will load.
No Ray here: these run in the CLI's process.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from foundation import storage
from foundation.errors import ConfigError, UsageError
from segmodels import model_spec
from study.config import STUDY_STAGE
from study.settings import StudySettings

log = logging.getLogger(__name__)

NEEDS_ENCODER = ("finetune", "freeze")


def check_experiment_dir(settings: StudySettings) -> None:
    """Refuse to overwrite a study (or to resume nothing), then probe that the storage is writable."""
    shown = storage.display(settings.experiment_dir)
    try:
        exists = bool(storage.list_files(settings.experiment_dir))
        if exists and not settings.resume:
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


def prepare_data(settings: StudySettings) -> list[dict]:
    """Write the toy data if the preset uses it, then decode + validate every split once (fills the cache);
    returns each class's pixel count and share per split (``study.data.frequencies``), shown once here."""
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
    return rows


def preflight(settings: StudySettings) -> list[dict]:
    """Every check before Ray starts; returns the class frequencies (written to the experiment once it exists)."""
    check_experiment_dir(settings)
    check_models(settings)
    frequencies = prepare_data(settings)
    check_encoders(settings)
    return frequencies
