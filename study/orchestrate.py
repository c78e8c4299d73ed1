"""Study orchestration: check inputs, start or join Ray, pretrain encoders, run Tune, summarise.

Everything the user can get wrong is checked before Ray starts, and an existing
experiment is never overwritten: a new run into it is refused unless ``--resume``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from study import storage
from study.config import TrainConfig
from study.errors import ConfigError
from study.io import csv_text, json_text
from study.results import STUDY_FILE, SUMMARY_FILE, TRAIN_RUNS, best_checkpoint, train_run_name, trial_dirname
from study.run import SUMMARY_COLUMNS, StudySettings

log = logging.getLogger(__name__)

NEEDS_ENCODER = ("finetune", "freeze")
# A custom resource that only on-demand nodes offer (cluster.yaml gives it to the head). When the cluster
# has it, trial drivers (and so their Train controllers) ask for one unit and stay off spot nodes.
DRIVER_RESOURCE = "on_demand"


def run_study(settings: StudySettings) -> pd.DataFrame:
    check_experiment_dir(settings)
    prepare_data(settings)
    import ray

    started_here = start_ray()
    try:
        check_cluster_resources(settings)
        record_settings(settings)
        pretrained = pretrain_encoders(settings)
        results = run_tune(settings, pretrained)
        summary = summarise(settings, results)
    finally:
        if started_here:
            ray.shutdown()  # stops a local Ray we started; only disconnects from a cluster
    if settings.report:
        make_report(settings)
    return summary


# ---------------------------------------------------------------- checks before Ray starts
def check_experiment_dir(settings: StudySettings) -> None:
    if storage.is_remote(settings.storage):
        check_remote_experiment(settings)
        return
    storage_dir, experiment = Path(settings.storage), Path(settings.experiment_dir)
    exists = experiment.is_dir() and any(experiment.iterdir())
    if exists and not settings.resume:
        raise ConfigError(f"--name {settings.name}: {experiment} already holds an experiment; pass --resume to continue "
                          "it or choose another --name")
    if settings.resume and not exists:
        raise ConfigError(f"--resume: nothing to resume in {experiment}")
    try:
        storage_dir.mkdir(parents=True, exist_ok=True)
        probe = storage_dir / f".segstudy-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--storage {storage_dir}: not writable ({exc.strerror})") from None


def check_remote_experiment(settings: StudySettings) -> None:
    """The same refusals for object storage (``s3://...``), plus a write probe with the study's own credentials."""
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
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--storage {storage.display(settings.storage)}: not usable ({message})") from None


def record_settings(settings: StudySettings) -> None:
    """Write STORAGE/NAME/study.json once (kept on resume): what the analysis needs to read the study."""
    target = storage.join(settings.experiment_dir, STUDY_FILE)
    if not storage.exists(target):
        data = {k: v for k, v in dataclasses.asdict(settings).items() if k != "resume"}
        storage.write_bytes(target, json_text(data).encode())


def prepare_data(settings: StudySettings) -> None:
    """Write the toy data if the preset uses it, then decode + validate every split once (fills the cache)."""
    from study.data import build_dataset
    from study.data.toy import toy_exists, write_toy

    root = Path(settings.data_root)
    if settings.toy and not toy_exists(root):
        write_toy(root)
    for split in ("train", "val"):
        build_dataset(settings.dataset, split, root, settings.image_size, cache_dir=settings.cache_dir)
    if models_to_pretrain(settings):  # one pretraining dataset, whichever models use it
        for split in ("train", "val"):
            build_dataset(settings.pretrain["dataset"], split, root, settings.pretrain["image_size"],
                          cache_dir=settings.cache_dir)


def trial_arms(settings: StudySettings) -> set[tuple[str, str]]:
    """Every (model, init) pair the study may run."""
    arms = {(p["model"], p["init"]) for p in settings.points}
    if settings.space:
        arms |= {(m, i) for m in settings.space["model"][1] for i in settings.space["init"][1]}
    return arms


def given_source(settings: StudySettings, model: str) -> str | None:
    return settings.pretrained_segformer if model == "segformer" else settings.pretrained_fcn


def models_to_pretrain(settings: StudySettings) -> list[str]:
    needed = {m for m, i in trial_arms(settings) if i in NEEDS_ENCODER}
    return [m for m in settings.pretrain.get("models", []) if m in needed and not given_source(settings, m)]


# ---------------------------------------------------------------- Ray
def start_ray(num_cpus: int | None = None) -> bool:
    """Join the cluster at RAY_ADDRESS (or the Ray this process already runs), else start a local one.

    Every Ray process of the study gets RAY_ADDRESS in its environment: Ray Train's placement-group
    cleaner looks the cluster up through the State API, and with no address and a second Ray instance
    on the same machine it fails, leaving the placement groups of stopped trials reserved (the next
    trials then wait forever).
    """
    import socket

    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": {"RAY_ADDRESS": address}})
        return True
    with socket.socket() as probe:  # a free port for the GCS, so the address is known before Ray starts
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    address = f"{ray.util.get_node_ip_address()}:{port}"
    try:  # the dashboard stays on: the placement-group cleaner needs the State API
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 runtime_env={"env_vars": {"RAY_ADDRESS": address}})
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]
    if ray.get_runtime_context().gcs_address != address:
        log.warning("Ray started at %s, not %s: trials stopped early may not release their resources",
                    ray.get_runtime_context().gcs_address, address)
    return True


# ``ray up`` leaves the cluster's config on the head node here; it says how far the autoscaler may grow the cluster.
AUTOSCALER_CONFIG = Path.home() / "ray_bootstrap_config.yaml"


def autoscaler_capacity(config_path: str | Path = AUTOSCALER_CONFIG) -> dict[str, float]:
    """Resources of the largest cluster the autoscaler may grow to: the head's plus each worker type's
    ``resources`` x its ``max_workers`` (within the cluster's ``max_workers``). Empty without a launcher
    config (a laptop, a fixed cluster)."""
    import yaml

    path = Path(config_path)
    if not path.is_file():
        return {}
    config = yaml.safe_load(path.read_text()) or {}
    nodes_left = int(config.get("max_workers", 1 << 30))
    capacity: dict[str, float] = {}
    for name, node_type in (config.get("available_node_types") or {}).items():
        if name == config.get("head_node_type"):
            count = 1
        else:
            count = min(int(node_type.get("max_workers", 0)), nodes_left)
            nodes_left -= count
        for resource, amount in (node_type.get("resources") or {}).items():
            capacity[resource] = capacity.get(resource, 0) + float(amount) * count
    return capacity


def check_cluster_resources(settings: StudySettings) -> None:
    """Default and bound --gpus-per-trial by what the cluster has, or may grow to under the autoscaler."""
    import ray

    plan_resources(settings, ray.cluster_resources(), autoscaler_capacity())


def plan_resources(settings: StudySettings, present: dict[str, float], capacity: dict[str, float]) -> None:
    """Fill in --gpus-per-trial and --max-concurrent; refuse what the cluster can never give."""
    gpus = max(present.get("GPU", 0), capacity.get("GPU", 0))
    cpus = max(present.get("CPU", 0), capacity.get("CPU", 0))
    if gpus > present.get("GPU", 0):
        log.info("the cluster has %g GPUs now; the autoscaler may grow it to %g as trials ask for them",
                 present.get("GPU", 0), gpus)
    if settings.gpus_per_trial is None:
        settings.gpus_per_trial = 1.0 if gpus else 0.0
    if settings.gpus_per_trial > gpus:
        raise ConfigError(f"--gpus-per-trial: {settings.gpus_per_trial} is more than the cluster has ({gpus:g} GPUs)")
    if settings.cpus_per_trial > cpus:
        raise ConfigError(f"--cpus-per-trial: {settings.cpus_per_trial:g} is more than the cluster has ({cpus:g} CPUs)")
    if not settings.max_concurrent:
        # Trial drivers ask for no CPU, so Tune alone would start every trial at once and leave most of them
        # waiting (each a Python process with torch loaded). Run only as many as the cluster can train.
        fits = [cpus // settings.cpus_per_trial] + ([gpus // settings.gpus_per_trial] if settings.gpus_per_trial else [])
        settings.max_concurrent = max(1, int(min(fits)))
        log.info("running up to %d trials at once (set --max-concurrent to change)", settings.max_concurrent)


def driver_resources() -> dict[str, Any]:
    """What a trial driver asks Tune for. The Train workers hold the trial's CPUs/GPUs; the driver asks for
    no CPU (so N CPUs run N single-CPU trials at once), only a token of memory (Tune needs a non-empty
    request) and, on a cluster that offers it, one unit of DRIVER_RESOURCE to stay off spot nodes."""
    import ray

    request: dict[str, Any] = {"cpu": 0, "memory": 64 * 1024**2}
    if ray.cluster_resources().get(DRIVER_RESOURCE, 0) >= 1:
        request[DRIVER_RESOURCE] = 1
    return request


def trial_resources(settings: StudySettings) -> dict[str, Any]:
    return {"workers": settings.workers_per_trial, "cpus": settings.cpus_per_trial, "gpus": settings.gpus_per_trial}


def pretrain_encoders(settings: StudySettings) -> dict[str, str]:
    """Encoder source per model: given, torchvision's ImageNet default, or pretrained here on Cityscapes."""
    from segmodels import build_model, save_encoder
    from study.io import load_checkpoint
    from study.trial import run_training

    sources = {"fcn_resnet50": settings.pretrained_fcn or "imagenet"}
    if settings.pretrained_segformer:
        sources["segformer"] = settings.pretrained_segformer
    for model in models_to_pretrain(settings):
        encoder_uri = storage.join(settings.experiment_dir, "pretrained", f"{model}_encoder.pt")
        sources[model] = encoder_uri
        if storage.is_file(encoder_uri):
            log.info("reusing the %s encoder pretrained earlier: %s", model, storage.display(encoder_uri))
            continue
        p = settings.pretrain
        cfg = TrainConfig(dataset=p["dataset"], data_root=settings.data_root, model=model, init="scratch",
                          epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], gamma=p["gamma"],
                          image_size=p["image_size"], val_every=settings.val_every, seed=settings.seed,
                          precision=settings.precision, cache_dir=settings.cache_dir)
        log.info("pretraining the %s encoder on %s (%d epochs)", model, p["dataset"], p["epochs"])
        best = run_training(cfg, f"pretrain-{p['dataset']}-{model}", settings.experiment_dir,
                            {**trial_resources(settings), "cpus": max(settings.cpus_per_trial, 1)})
        if best is None:
            raise ConfigError(f"--storage {settings.storage}: the {model} pretraining run left no checkpoint")
        with tempfile.TemporaryDirectory(prefix="segstudy-encoder-") as tmp:
            local_best = storage.download(best, Path(tmp) / "best.pt") if storage.is_remote(best) else best
            checkpoint = load_checkpoint(local_best)
            net = build_model(model, len(checkpoint["class_names"]), "scratch")
            net.load_state_dict(checkpoint["model_state"])
            if storage.is_remote(encoder_uri):  # every node downloads it (study.train.build_trial_model)
                save_encoder(net, Path(tmp) / "encoder.pt")
                storage.upload(Path(tmp) / "encoder.pt", encoder_uri)
            else:
                save_encoder(net, encoder_uri)
        log.info("%s encoder (val mIoU %.3f on %s) saved to %s", model, checkpoint["val_miou"], p["dataset"],
                 storage.display(encoder_uri))
    return sources


def tune_space(space: dict[str, Any]) -> dict[str, Any]:
    from ray import tune

    kinds = {"choice": lambda v: tune.choice(v[0]), "loguniform": lambda v: tune.loguniform(*v),
             "uniform": lambda v: tune.uniform(*v)}
    return {name: kinds[spec[0]](spec[1:]) for name, spec in space.items()}


def run_tune(settings: StudySettings, pretrained: dict[str, str]) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from study.trial import trial_driver

    trainable = tune.with_parameters(trial_driver, base=settings.trial_base(pretrained),
                                     resources=trial_resources(settings), experiment_dir=settings.experiment_dir)
    trainable = tune.with_resources(trainable, driver_resources())
    if settings.resume and tune.Tuner.can_restore(settings.experiment_dir):
        tuner = tune.Tuner.restore(settings.experiment_dir, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        return tuner.fit()

    if settings.searcher == "grid":  # the report's grid: exactly these configurations
        values = {k: sorted({p[k] for p in settings.points}) for k in settings.points[0]}
        param_space = {k: tune.choice(v) for k, v in values.items()}
        search_alg = BasicVariantGenerator(points_to_evaluate=settings.points, random_state=settings.seed)
        num_samples = len(settings.points)
    else:
        import optuna

        param_space = tune_space(settings.space)
        search_alg = OptunaSearch(metric="val_miou", mode="max", seed=settings.seed,
                                  sampler=optuna.samplers.TPESampler(seed=settings.seed),
                                  points_to_evaluate=settings.points[: settings.num_samples] or None)
        num_samples = settings.num_samples
    if settings.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=settings.epochs, grace_period=settings.grace_period,
                                  reduction_factor=settings.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="val_miou", mode="max", search_alg=search_alg, scheduler=scheduler,
                                    num_samples=num_samples, max_concurrent_trials=settings.max_concurrent or None,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=settings.name, storage_path=settings.storage, callbacks=tune_callbacks(settings)),
    )
    return tuner.fit()


def tune_callbacks(settings: StudySettings) -> list:
    if not settings.wandb:
        return []
    from ray.air.integrations.wandb import WandbLoggerCallback

    # The key only ever comes from the environment; without one (or with WANDB_MODE=offline), runs are written offline.
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return [WandbLoggerCallback(project="segstudy", group=settings.name, mode=mode, log_config=True,
                                dir=None if storage.is_remote(settings.storage) else settings.experiment_dir)]


# ---------------------------------------------------------------- results
def summarise(settings: StudySettings, results: Any) -> pd.DataFrame:
    """One row per trial, ranked by best val mIoU; written to STORAGE/NAME/summary.csv."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        has_history = history is not None and "val_miou" in history
        epochs = int(history["epoch"].max()) if has_history else 0
        best_idx = history["val_miou"].idxmax() if has_history and history["val_miou"].notna().any() else None
        best = best_checkpoint(storage.join(settings.experiment_dir, TRAIN_RUNS, train_run_name(trial_id)),
                               max_epoch=epochs)
        rows.append({
            "trial_id": trial_id,
            "model": result.config.get("model"),
            "init": result.config.get("init"),
            "lr": result.config.get("lr"),
            "gamma": result.config.get("gamma"),
            "epochs": epochs,
            "best_val_miou": float(history.loc[best_idx, "val_miou"]) if best_idx is not None else math.nan,
            "best_epoch": int(history.loc[best_idx, "epoch"]) if best_idx is not None else 0,
            "stopped_early": result.error is None and epochs < settings.epochs,
            "status": "error" if result.error is not None else "done",
            "best_checkpoint": str(best) if best else "",
        })
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    summary = summary.sort_values("best_val_miou", ascending=False, na_position="last").reset_index(drop=True)
    storage.write_bytes(storage.join(settings.experiment_dir, SUMMARY_FILE),
                        csv_text(summary.to_dict("records"), SUMMARY_COLUMNS).encode())
    print_summary(settings, summary)
    return summary


def print_summary(settings: StudySettings, summary: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"segstudy {settings.name}: trials ranked by best val mIoU")
    for column in ("rank", "trial", "model", "init", "lr", "gamma", "epochs", "best val mIoU", "stopped early"):
        table.add_column(column, justify="right" if column not in ("trial", "model", "init") else "left")
    for rank, row in enumerate(summary.itertuples(), start=1):
        table.add_row(str(rank), str(row.trial_id), str(row.model), str(row.init), f"{row.lr:.2e}", f"{row.gamma:.4f}",
                      f"{row.epochs}/{settings.epochs}", f"{row.best_val_miou:.4f}",
                      "yes" if row.stopped_early else ("error" if row.status == "error" else "no"))
    console = Console(width=None if Console().is_terminal else 120)
    console.print(table)
    console.print(f"results: {storage.display(settings.experiment_dir)} ({SUMMARY_FILE})")


def make_report(settings: StudySettings) -> None:
    """analysis.report into STORAGE/NAME/report (on object storage: written locally, then uploaded)."""
    try:
        from analysis import report
    except ImportError:
        log.info("analysis.report is not available; skipping the report")
        return
    if not storage.is_remote(settings.experiment_dir):
        report.write_report(settings.experiment_dir, settings.data_root, Path(settings.experiment_dir) / "report",
                            cache_dir=settings.cache_dir)
        return
    with tempfile.TemporaryDirectory(prefix="segstudy-report-") as tmp:
        report.write_report(settings.experiment_dir, settings.data_root, Path(tmp) / "report",
                            cache_dir=settings.cache_dir)
        storage.upload(Path(tmp) / "report", storage.join(settings.experiment_dir, "report"))
    log.info("report uploaded to %s", storage.display(storage.join(settings.experiment_dir, "report", "report.md")))
