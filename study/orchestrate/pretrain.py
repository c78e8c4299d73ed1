"""The Cityscapes stage: the study's one long run, trained with Ray Train (``runners.run_training``: DDP over
``--pretrain-workers`` workers, by default every GPU of one node)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from foundation import storage
from foundation.errors import ConfigError
from foundation.io import load_checkpoint
from segmodels import build_model, save_encoder
from study.config import TrainConfig
from study.layout import model_slug, pretrained_encoder_file
from study.orchestrate.runners import run_training
from study.preflight import encoder_sources, models_to_pretrain
from study.settings import ResourcePlan, StudySettings
from study.space import PRETRAIN_TASK_KEYS

log = logging.getLogger(__name__)


def pretrain_resources(plan: ResourcePlan) -> dict[str, float]:
    """``--pretrain-workers`` DDP workers, one GPU each on a GPU cluster, else CPUs."""
    workers = plan.pretrain_workers
    gpus = float(workers) if plan.gpus_per_trial else 0.0
    return {"workers": workers, "cpus": max(plan.cpus_per_trial, 1) * workers, "gpus": gpus}


def pretrain_encoders(settings: StudySettings, plan: ResourcePlan, announce=log.info) -> dict[str, str]:
    """Encoder source per model: given, the default (FCN: torchvision's ImageNet), or pretrained here."""
    sources = dict(encoder_sources(settings))
    for model in models_to_pretrain(settings):
        encoder_uri = pretrained_encoder_file(settings.experiment_dir, model)
        sources[model] = encoder_uri
        if storage.is_file(encoder_uri):
            announce(f"pretraining: reusing the {model} encoder trained earlier ({storage.display(encoder_uri)})")
            continue
        p = settings.pretrain
        task = {k: p[k] for k in PRETRAIN_TASK_KEYS if k != "data_root" and k in p}  # another task's labels
        cfg = TrainConfig(dataset=p["dataset"], data_root=p.get("data_root", settings.data_root), **task,
                          model=model, init="scratch",
                          epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], gamma=p["gamma"],
                          image_size=p["image_size"], val_every=settings.val_every, seed=settings.seed,
                          cache_dir=settings.cache_dir, **settings.speed_options())
        resources = pretrain_resources(plan)
        announce(f"pretraining: {model} on {p['dataset']}, {p['epochs']} epochs, {resources['workers']:g} worker(s)")
        best = run_training(cfg, f"pretrain-{p['dataset']}-{model_slug(model)}", settings.experiment_dir, resources)
        if best is None:
            raise ConfigError(f"--storage {settings.storage}: the {model} pretraining run left no checkpoint")
        with tempfile.TemporaryDirectory(prefix="segstudy-encoder-") as tmp:
            local_best = storage.download(best, Path(tmp) / "best.pt") if storage.is_remote(best) else best
            checkpoint = load_checkpoint(local_best)
            net = build_model(model, len(checkpoint["class_names"]), "scratch")
            net.load_state_dict(checkpoint["model_state"])
            storage.upload(save_encoder(net, Path(tmp) / "encoder.pt"), encoder_uri)  # every node reads it there
        announce(f"pretraining: {model} encoder (val mIoU {checkpoint['val_miou']:.3f} on {p['dataset']}) saved to "
                 f"{storage.display(encoder_uri)}")
    return sources
