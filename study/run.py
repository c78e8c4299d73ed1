"""The study's command line: ``python -m study.run --preset {demo,report,search}``.

Parses the options into ``StudySettings``, then ``study.orchestrate.run_study`` runs the study
(Ray Tune drives the trials; see that package) and writes the report. Every option is checked
against every other before Ray starts.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from search_spaces import PRESETS, load_preset
from study import storage
from study.cli import OneLineParser, image_size_arg, main_guard, native_stderr_diverted, sigterm_as_sigint
from study.config import PRECISIONS, STUDY_STAGE, TRIAL_RUNNERS
from study.settings import StudySettings


def settings_from_args(argv: list[str] | None) -> StudySettings:
    parser = OneLineParser(prog="python -m study.run", description="Run a segmentation hyperparameter study on Ray.")
    parser.add_argument("--preset", choices=PRESETS, default="demo")
    parser.add_argument("--data-root",
                        help="folder with oxford-iiit-pet/ and cityscapes/ (demo: toy data, made if missing)")
    parser.add_argument("--storage", help="results folder, shared filesystem or s3:// URI (default: ./results)")
    parser.add_argument("--name", help="experiment name (default: the preset's name)")
    parser.add_argument("--num-samples", type=int, help="trials to run (search/demo presets)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    parser.add_argument("--cpus-per-trial", type=float)
    parser.add_argument("--gpus-per-trial", type=float, help="fractional for single-worker trials, e.g. 0.25")
    parser.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial (DDP when > 1)")
    parser.add_argument("--trial-runner", choices=TRIAL_RUNNERS,
                        help="auto (default): Tune runs one-worker trials itself, Ray Train runs DDP trials")
    parser.add_argument("--pretrain-workers", type=int,
                        help="DDP workers of the Cityscapes stage (default: every GPU of one node, else 1)")
    parser.add_argument("--autoscaler-config",
                        help="the cluster launcher config the autoscaler runs with, to size trials against the largest "
                             "cluster it may grow to (default: found from the running autoscaler, or "
                             "~/ray_bootstrap_config.yaml)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--image-size", type=image_size_arg)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--repeats", type=int,
                        help="seeds per configuration (SEED, SEED+1, ...): the report preset's grid, or a search's "
                             "confirm stage")
    parser.add_argument("--confirm-top", type=int,
                        help="after a search, rerun its K best distinct configurations with --repeats seeds to the "
                             "full epochs (no ASHA); the summary and report use those trials")
    parser.add_argument("--equivalence-margin", type=float,
                        help="mIoU margin of the report's equivalence claim in the findings (default 0.01)")
    parser.add_argument("--pretrained-segformer",
                        help=f"SegFormer encoder source, a file (skips the Cityscapes stage) or {STUDY_STAGE} "
                             "(the default: the study's own Cityscapes stage)")
    parser.add_argument("--pretrained-fcn",
                        help=f"FCN ResNet-50 encoder source: imagenet (default), coco_voc, a file, or {STUDY_STAGE} "
                             "(pretrained by the study's own Cityscapes stage, as SegFormer's)")
    parser.add_argument("--cache-dir", help="decoded-data cache folder on every node")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="autocast dtype (default auto: bf16 on CPUs with native bf16, fp32 elsewhere)")
    parser.add_argument("--wandb", action="store_true", default=None, help="log each trial to Weights & Biases")
    parser.add_argument("--resume", action="store_true", help="continue the experiment STORAGE/NAME")
    parser.add_argument("--no-report", action="store_true", help="skip analysis.report at the end")
    parser.add_argument("--verbose", action="store_true", default=None,
                        help="also show Ray's own output (workers, Tune, Train) on the console")
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
    for option in ("cache_dir", "autoscaler_config"):
        if getattr(settings, option):
            setattr(settings, option, str(Path(getattr(settings, option)).resolve()))
    settings.validate()
    return settings


def main(argv: list[str] | None = None) -> int:
    settings = settings_from_args(argv)
    from study.orchestrate import run_study  # imports Ray: only once the options are known to be good
    from study.orchestrate.console import say

    started = time.monotonic()
    with sigterm_as_sigint(), native_stderr_diverted(enabled=not settings.verbose) as native_log:  # C++ -> logs/
        settings.native_stderr_log = native_log
        run_study(settings)
    if settings.report:
        say(f"report: {storage.display(make_report(settings))}")
    say(f"done in {time.monotonic() - started:.0f} s")
    return 0


def make_report(settings: StudySettings) -> str:
    """analysis.report into STORAGE/NAME/report (written locally, then copied when storage is remote)."""
    from analysis import report

    target = storage.join(settings.experiment_dir, "report")
    with tempfile.TemporaryDirectory(prefix="segstudy-report-") as tmp:
        local = target if not storage.is_remote(target) else Path(tmp) / "report"
        report.write_report(settings.experiment_dir, settings.data_root, local, cache_dir=settings.cache_dir)
        if local != target:
            storage.upload(local, target)
    return storage.join(target, "report.md")


if __name__ == "__main__":
    raise SystemExit(main_guard("study.run", main))
