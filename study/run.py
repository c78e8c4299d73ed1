"""The study's command line: ``python -m study.run --preset {demo,report,search}``.

Parses the options into ``StudySettings``, then ``study.orchestrate.run_study`` runs the study
(Ray Tune drives the trials; see that package) and writes the report. Every option is checked
against every other before Ray starts.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from foundation import storage
from foundation.errors import StudyFailed
from study.cli import OneLineParser, add_options, exit_cli, given, native_stderr_diverted, sigterm_as_sigint
from study.layout import SUMMARY_FILE
from study.preflight import check_config
from study.resolve import resolve
from study.settings import StudySettings
from study.space import PRESET_KEYS, to_text


def settings_from_args(argv: list[str] | None) -> StudySettings:
    parser = OneLineParser(prog="python -m study.run", description="Run a segmentation hyperparameter study on Ray. "
                           "Settings resolve as defaults < preset < --space file < --task file < these options.")
    groups = add_options(parser, StudySettings, "run", preset_defaults=True)
    groups["search"].add_argument("--space", dest="space_file", metavar="FILE.yaml",
                        help="a search-space file in the presets' grammar (study/space.py): each key it gives "
                             "replaces the preset's (default: none)")
    groups["views"].add_argument("--print-space", action="store_true",
                       help="check the settings as a run does before it reads data, print the resolved space and "
                            "the trial count, then exit (starts no Ray)")
    args = parser.parse_args(argv)
    cli = given(args, StudySettings, "run")
    settings = resolve(cli, cli.pop("preset", None), args.space_file, cli.get("task"))
    if args.print_space:  # as --help does: print, exit, start nothing; after the checks a run makes before its data
        check_config(settings)
        values = {key: getattr(settings, key) for key in PRESET_KEYS}
        print(to_text(values) + f"# trials: {settings.trial_count()}")
        raise SystemExit(0)
    return settings


def main(argv: list[str] | None = None) -> int:
    settings = settings_from_args(argv)
    from study.orchestrate import run_study  # imports Ray: only once the options are known to be good
    from study.orchestrate.console import say

    started = time.monotonic()
    with sigterm_as_sigint(), native_stderr_diverted(enabled=not settings.verbose) as native_log:  # C++ -> logs/
        summary = run_study(settings, native_stderr_log=native_log)
    if not ((summary["status"] == "done") & summary["best_val_miou"].notna()).any():  # nothing to report on
        raise StudyFailed(f"no trial of {len(summary)} completed; their errors are in "
                          f"{storage.display(settings.experiment_dir)}/{SUMMARY_FILE} (column error) and logs/")
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
