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

from search_spaces import PRESETS, load_preset, load_space
from search_spaces.spec import PRESET_KEYS, to_text
from study import storage
from study.cli import (
    OneLineParser,
    class_weights_arg,
    exit_cli,
    image_size_arg,
    model_source_arg,
    native_stderr_diverted,
    sigterm_as_sigint,
)
from study.config import COMPILE_MODES, DATA_PLACEMENTS, PRECISIONS, STUDY_STAGE, SWITCHES, TRIAL_RUNNERS
from study.settings import StudySettings
from study.task import load_task, recorded_task


def settings_from_args(argv: list[str] | None) -> StudySettings:
    parser = OneLineParser(prog="python -m study.run", description="Run a segmentation hyperparameter study on Ray.")
    parser.add_argument("--preset", choices=PRESETS, help="default: demo, or search under a --space file")
    parser.add_argument("--space", dest="space_file", metavar="FILE.yaml",
                        help="a search-space file, in the presets' grammar (search_spaces/spec.py): each key it gives "
                             "replaces the preset's; the options here override both")
    parser.add_argument("--print-space", action="store_true",
                        help="print the resolved space and the trial count, then exit (starts no Ray)")
    parser.add_argument("--task", metavar="FILE.yaml",
                        help="the task: dataset format, root, classes, ignore_index, reduce_zero_label, image_size, "
                             "class_weights (study/task.py); options given here override it")
    parser.add_argument("--data-root",
                        help="folder with oxford-iiit-pet/ and cityscapes/ (demo: toy data, made if missing)")
    parser.add_argument("--class-weights", type=class_weights_arg,
                        help="loss weights per class: none (default), inverse_frequency, median_frequency or w0,w1,...")
    parser.add_argument("--storage", help="results folder, shared filesystem or s3:// URI (default: ./results)")
    parser.add_argument("--name", help="experiment name (default: the --space file's name, else the preset's)")
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
    parser.add_argument("--pretrained-model", action="append", type=model_source_arg, metavar="NAME=SOURCE",
                        help="encoder source of any --model name, e.g. tv:deeplabv3_resnet50=imagenet or "
                             f"hf:/models/x=/enc.pt or NAME={STUDY_STAGE} (repeatable)")
    parser.add_argument("--cache-dir", help="decoded-data cache folder on every node")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="autocast dtype (default auto: bf16 on CPUs with native bf16, fp32 elsewhere)")
    parser.add_argument("--data-placement", choices=DATA_PLACEMENTS,
                        help="where each trial keeps its splits: device, host (streamed to the GPU batch by batch) "
                             "or auto (the default: device when they fit half the trial's free GPU memory)")
    parser.add_argument("--tf32", choices=SWITCHES, help="TF32 matmuls and convolutions on CUDA (default auto: on)")
    parser.add_argument("--fused-adamw", choices=SWITCHES,
                        help="AdamW(fused=True), amsgrad kept (default auto: on CUDA)")
    parser.add_argument("--channels-last", choices=SWITCHES,
                        help="NHWC memory format (default auto: the convnets on CUDA)")
    parser.add_argument("--compile", choices=COMPILE_MODES,
                        help="torch.compile each trial's model; reduce-overhead adds CUDA graphs (default auto: "
                             "reduce-overhead on CUDA for trials long enough to pay for it, off on the CPU)")
    parser.add_argument("--wandb", action="store_true", default=None, help="log each trial to Weights & Biases")
    parser.add_argument("--resume", action="store_true", help="continue the experiment STORAGE/NAME")
    parser.add_argument("--no-report", action="store_true", help="skip analysis.report at the end")
    parser.add_argument("--verbose", action="store_true", default=None,
                        help="also show Ray's own output (workers, Tune, Train) on the console")
    args = parser.parse_args(argv)

    # A space file is a real study: it builds on the search preset's recipe, not on the demo's toy data.
    args.preset = args.preset or ("search" if args.space_file else "demo")
    preset = load_preset(args.preset)
    if args.space_file:
        preset = load_space(args.space_file, preset)
    known = {f.name for f in dataclasses.fields(StudySettings)}
    name = Path(args.space_file).stem if args.space_file else args.preset  # a space file names its experiment
    settings = StudySettings(preset=args.preset, name=name, **{k: v for k, v in preset.items() if k in known})
    if args.task:  # the task file beats the preset (its data is the user's: no toy data is written)
        for key, value in load_task(args.task).items():
            setattr(settings, key, value)
        settings.toy = False
    args.pretrained_models = dict(args.pretrained_model) if args.pretrained_model else None
    for key, value in vars(args).items():
        if key in known and value is not None and key != "preset":
            setattr(settings, key, value)
    if args.resume and not args.task:  # the same task as recorded, unless an option names another value
        recorded = recorded_task(settings.experiment_dir)
        for key, value in recorded.items():
            if getattr(args, key, None) is None:
                setattr(settings, key, value)
        settings.toy = settings.toy and not recorded.get("task")
    settings.report = not args.no_report
    if settings.data_root and not storage.is_remote(settings.data_root):
        settings.data_root = str(Path(settings.data_root).resolve())
    if not storage.is_remote(settings.storage):
        settings.storage = str(Path(settings.storage).resolve())
    for option in ("cache_dir", "autoscaler_config", "task"):
        if getattr(settings, option):
            setattr(settings, option, str(Path(getattr(settings, option)).resolve()))
    settings.validate()
    if args.print_space:  # as --help does: print, exit, start nothing
        print(to_text({key: getattr(settings, key) for key in PRESET_KEYS}) + f"# trials: {settings.trial_count()}")
        raise SystemExit(0)
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
    exit_cli("study.run", main)
