"""Every figure of the report, and ``report.md``, from a finished study:

    python -m analysis.report --experiment STORAGE/NAME --data-root R --out DIR

Evaluates the best checkpoint of every seed of each strategy's best configuration on the test
split, then writes dataset samples (Figs 1-2), training curves per strategy (Figs 4-5; with
repeated seeds, their mean with a bootstrap band), the best fine-tuned FCN against the best
fine-tuned SegFormer (Fig 10), confusion matrices, ROC curves and predicted masks (Figs 6-9),
the report's claims as tested findings (``findings.csv``, ``analysis.findings``), which model is best
(``which_model.csv``, a Holm family of its own), and beyond the report: every searched key against best val mIoU
and its importance, quality against cost, where ASHA stopped each trial, and with several objectives or
constraints in ``study.json`` the Pareto set chosen on val and tested on test (``analysis.objectives_report``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figures as fig
from analysis import objectives_report as objectives
from analysis.findings import (
    DEFAULT_MARGIN,
    MIN_SEEDS,
    describe,
    findings,
    mean_ci,
    model_headline,
    model_ranking,
    which_model,
)
from analysis.importance import hyperparameter_importance
from analysis.load import (
    best_configuration,
    best_configuration_trials,
    completed,
    configuration_keys,
    load_experiment,
    mirror_experiment,
    model_colours,
    model_label,
    searched_keys,
    study_settings,
    trial_table,
)
from analysis.pareto import INFEASIBLE
from analysis.score import per_class_frame, score_checkpoint
from foundation import storage
from foundation.errors import ConfigError, DataError
from foundation.io import atomic_write_text, write_json
from study.budget import report_lines as budget_lines
from study.cli import OneLineParser, add_option, exit_cli, path_type
from study.config import DEVICES, TrainConfig, parse_image_size
from study.data import Labels
from study.data.cache import build
from study.data.formats import FORMATS, open_source
from study.data.sources import IGNORE_INDEX
from study.layout import model_slug
from study.options import declaration, is_missing
from study.summary import results_experiment
from study.task import load_task

log = logging.getLogger(__name__)

SAMPLE_SIZE = 128  # a record without an image size (none has had one since the first)
FINDINGS_FILE = "findings.csv"
WHICH_MODEL_FILE = "which_model.csv"
PER_CLASS_FILE = "per_class_iou.csv"
TEST_SCORES = ("seeds", "test_miou_mean", "ci_low", "ci_high")  # test_summary.csv: model, strategy, the searched keys


def _lr_suffix(strategy: str) -> str:
    """The test-figure folder's mark of a lower learning rate: ``_lr_half`` for ``lr/2`` (as before), else the ratio."""
    ratio = strategy.rpartition("lr/")[2] if "lr/" in strategy else ""
    return "" if not ratio else "_lr_half" if ratio == "2" else f"_lr_div_{model_slug(ratio)}"


def _runs(groups) -> str:
    """How a figure's lines were made: 'trials a, b' or 'each the mean of 3 seeds'."""
    groups = list(groups)
    seeds = max((len(g) for g in groups), default=0)
    if seeds > 1:
        return f"each line the mean of its {seeds} seeds, with a bootstrap 95 % band"
    return "trials " + ", ".join(g[0] for g in groups if g)


def write_report(experiment: str | Path, data_root: str | Path | None = None, out: str | Path | None = None,
                 cache_dir: str | None = None, device: str = "auto", overwrite: bool = True,
                 margin: float | None = None) -> Path:
    """Write every figure, its CSV and ``report.md`` into ``out`` (default ``experiment/report``).

    ``experiment`` may be on object storage (``s3://...``): it is then mirrored into a temporary
    folder first (``analysis.load.mirror_experiment``) and ``out`` must be a local folder.
    """
    if storage.is_remote(experiment):
        if out is None:
            raise ConfigError(f"--out: required when --experiment is a storage URI ({storage.display(experiment)})")
        with tempfile.TemporaryDirectory(prefix="segstudy-mirror-") as tmp:
            local = mirror_experiment(str(experiment), Path(tmp) / Path(storage.display(experiment)).name)
            return _write_report(local, data_root, Path(out), cache_dir, device, overwrite, margin,
                                 remote=str(experiment))
    experiment = Path(experiment)
    return _write_report(experiment, data_root, Path(out) if out else experiment / "report", cache_dir, device,
                         overwrite, margin)


def _write_report(experiment: Path, data_root: str | Path | None, out: Path, cache_dir: str | None, device: str,
                  overwrite: bool, margin: float | None, remote: str | None = None) -> Path:
    """``remote``: the URI ``experiment`` is a mirror of (named in the report instead of the mirror);
    ``margin``: the equivalence margin of the findings (default: the study's ``--equivalence-margin``)."""
    if (out / "report.md").exists() and not overwrite:
        raise ConfigError(f"--out {out}: already holds report.md; choose another --out or pass --overwrite")
    df = load_experiment(experiment)
    settings = study_settings(experiment)
    data_root = data_root or settings.get("data_root")
    if not data_root:
        raise ConfigError(f"--data-root: not given and {experiment}/study.json does not name one")
    table = trial_table(df)
    dataset = settings.get("dataset", "pets")
    figures: list[tuple[Path, str]] = []
    notes: list[str] = []

    figures += _sample_figures(settings, dataset, data_root, out, notes)
    configurations = {model: chosen for model in sorted(set(df["model"].dropna()))
                      if (chosen := best_configuration_trials(df, model))}
    figures += _curve_figures(df, table, configurations, out, notes)
    table["test_miou"] = math.nan  # Figs 6-9: each seed of each strategy's best configuration on the test split
    keys = searched_keys(settings, table)
    scoring = dict(dataset=dataset, data_root=data_root, device=device, cache_dir=cache_dir)
    test_summary, figured = _score_configurations(table, configurations, out, figures, notes, scoring, keys)
    test_summary.to_csv(out / "test_summary.csv", index=False)
    per_class = per_class_table(figured)
    per_class.to_csv(out / PER_CLASS_FILE, index=False)
    _score_trials(table, objectives.pareto_trial_ids(table, settings, keys), notes, scoring)  # the val Pareto set
    margin = margin if margin is not None else settings.get("equivalence_margin", DEFAULT_MARGIN)
    test_miou = table.set_index("trial_id")["test_miou"]
    found = findings(df, margin, test_miou=test_miou)  # chosen on val, tested on test
    found.to_csv(out / FINDINGS_FILE, index=False)
    models = which_model(df, test_miou, margin)  # their own Holm family
    models.to_csv(out / WHICH_MODEL_FILE, index=False)
    figures += _analysis_figures(table, settings, keys, experiment, out, notes)
    front_figures, sections, front_notes = objectives.objective_report(table, settings, keys, out)
    figures += front_figures
    notes += front_notes
    sections = [*([line, ""] if (line := model_headline(model_ranking(df), models)) else []), *sections,
                *objectives.which_model_lines(models, table["seed"].nunique()),
                *objectives.infeasible_lines(table, keys), *budget_lines(str(experiment))]

    if remote:  # name the checkpoints where they really are
        table["best_checkpoint"] = [storage.join(remote, Path(p).relative_to(experiment).as_posix()) if p else ""
                                    for p in table["best_checkpoint"]]
    table.to_csv(out / "trials.csv", index=False)
    confirmed = results_experiment(str(experiment)) != str(experiment)  # the trials are a confirm stage's
    markdown = render_markdown(storage.display(remote or experiment), settings, table, figures, notes, out,
                               found, test_summary, margin, confirmed, per_class, keys=keys, sections=sections)
    atomic_write_text(out / "report.md", markdown)
    log.info("report written to %s", out / "report.md")
    return out / "report.md"


def _sample_figures(settings: dict, dataset: str, data_root: str | Path, out: Path,
                    notes: list[str]) -> list[tuple[Path, str]]:
    """Figs 1-2: four training images of the study's task, and of its own pretraining stage's task when it had one
    (``pretrain`` in study.json), beside their masks; only those four are decoded, at the size the study trained
    them at."""
    stages = [(dataset, data_root, Labels.of(settings), settings.get("image_size"), f"samples_{dataset}")]
    stage = settings.get("pretrain") or {}
    if stage.get("dataset") and (stage["dataset"], stage.get("data_root", data_root)) != (dataset, data_root):
        stem = f"samples_{stage['dataset']}" if stage["dataset"] != dataset else f"samples_pretrain_{dataset}"
        stages.append((stage["dataset"], stage.get("data_root", data_root), Labels.of(stage), stage.get("image_size"),
                       stem))
    figures = []
    for name, root, labels, size, stem in stages:
        try:
            data = training_samples(name, root, labels, size or SAMPLE_SIZE)
        except DataError as exc:
            notes.append(f"No {name} samples: {exc}")
            continue
        images = data["images"].permute(0, 2, 3, 1).numpy()
        figures.append((fig.dataset_samples(images, data["masks"].numpy(), data["files"], data["class_names"],
                                            f"4 random {name} training images and labels", out / stem,
                                            ignore_index=IGNORE_INDEX),
                        f"Four random {name} training images beside their label masks."))
    return figures


def training_samples(name: str, root: str | Path, labels: Labels, size: object, count: int = 4) -> dict:
    """``count`` random (seeded) training pairs of ``name`` under ``root``, decoded and resized to ``size`` alone,
    not the whole split: {"images": uint8 N,3,H,W, "masks", "files", "class_names"}."""
    source = open_source(name, "train", root, labels=labels)
    pick = sorted(np.random.default_rng(0).choice(len(source.indices), size=min(count, len(source.indices)),
                                                  replace=False).tolist())
    chosen = dataclasses.replace(source, indices=[source.indices[k] for k in pick],
                                 image_files=[source.image_files[k] for k in pick],
                                 label_files=[source.label_files[k] for k in pick])
    return {**build(chosen, parse_image_size(size)), "class_names": source.class_names}


def _curve_figures(df: pd.DataFrame, table: pd.DataFrame, configurations: dict, out: Path,
                   notes: list[str]) -> list[tuple[Path, str]]:
    """Figs 4-5 and 10: the curves of each strategy's best configuration, and every model's best fine-tune."""
    figures = []
    for (model, strategy), _ in objectives.trained(table).groupby(["model", "strategy"]):
        if strategy not in configurations.get(model, {}):
            notes.append(f"{model_label(model)} {strategy}: no trial completed its epochs, so it has no "
                         "curve, test evaluation or finding.")
    for model, chosen in configurations.items():  # Figs 4-5: the best configuration of each strategy
        ids = [trial_id for trial_ids in chosen.values() for trial_id in trial_ids]
        figures.append((fig.training_curves(df[df["trial_id"].isin(ids)],
                                            f"{model_label(model)}: training metrics per strategy",
                                            out / f"curves_{model_slug(model)}"),
                        f"{model_label(model)}: loss and mIoU per epoch for the best configuration of "
                        f"each strategy ({_runs(chosen.values())})."))

    best_tuned = {m: chosen["fine-tune"] for m, chosen in configurations.items() if "fine-tune" in chosen}
    if len(best_tuned) >= 2:  # Fig 10: every model's best fine-tuned configuration
        ids = [trial_id for trial_ids in best_tuned.values() for trial_id in trial_ids]
        part = df[df["trial_id"].isin(ids)].assign(model_label=lambda d: d["model"].map(model_label))
        names = [model_label(m) for m in best_tuned]
        title = (f"Best fine-tuned {names[0]} against best fine-tuned {names[1]}" if len(names) == 2
                 else "Best fine-tuned configuration of each model")
        figures.append((fig.training_curves(part, title, out / "best_models_comparison", label_column="model_label",
                                            colours=model_colours(best_tuned)),
                        f"The best fine-tuned {', '.join(names[:-1])} and {names[-1]} configurations on the same four "
                        f"panels ({_runs(best_tuned.values())})."))
    else:
        notes.append("No comparison of fine-tuned models: fewer than two models have a fine-tuned trial that "
                     "completed its epochs.")
    return figures


def _score_configurations(table: pd.DataFrame, configurations: dict, out: Path, figures: list, notes: list[str],
                          scoring: dict, keys: list[str]) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Every seed of each strategy's best configuration on the test split (``table``'s ``test_miou``), the
    figures of its first seed; returns the test summary (model, strategy, each searched key of ``keys`` but model
    and init, which the strategy names, then ``TEST_SCORES``) and the metrics of the checkpoints the figures show."""
    shown = [k for k in keys if k not in ("model", "init")]
    test_rows = []
    figured: dict[str, dict] = {}  # label -> metrics of the checkpoint whose figures the report shows
    for model, chosen in configurations.items():
        for strategy, trial_ids in chosen.items():
            runs = table[table["trial_id"].isin(trial_ids)]  # ranked by best val mIoU: the first gets figures
            label = f"{model_label(model)} {strategy}"
            stem = out / "test" / f"{model_slug(model)}_{runs.iloc[0]['init']}{_lr_suffix(strategy)}"
            for rank, run in enumerate(runs.itertuples()):
                result = _score_trial(table, run, label, notes, scoring, stem if rank == 0 else None)
                if rank == 0 and result is not None:
                    write_json(stem / "metrics.json", result)
                    figures += captioned_test_figures(stem, label, run.trial_id, len(result["class_names"]))
                    figured[label] = result
            evaluated = table.loc[table["trial_id"].isin(trial_ids), "test_miou"].dropna().to_numpy()
            mean, low, high = mean_ci(evaluated)
            test_rows.append({"model": model, "strategy": strategy, **{k: runs.iloc[0].get(k) for k in shown},
                              "seeds": len(evaluated), "test_miou_mean": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(test_rows, columns=["model", "strategy", *shown, *TEST_SCORES]), figured


def _score_trial(table: pd.DataFrame, run, label: str, notes: list[str], scoring: dict,
                 stem: Path | None = None) -> dict | None:
    """One trial's best checkpoint on the test split, recorded in ``table``'s ``test_miou``; figures into
    ``stem`` when given. None (and a note) for a trial without a checkpoint."""
    if not run.best_checkpoint:
        notes.append(f"No checkpoint for {label} (trial {run.trial_id}): not evaluated.")
        return None
    result = score_checkpoint(run.best_checkpoint, scoring["dataset"], scoring["data_root"], "test",
                              scoring["device"], cache_dir=scoring["cache_dir"], figures=stem, title=label)
    table.loc[table["trial_id"] == run.trial_id, "test_miou"] = result["miou"]
    return result


def _score_trials(table: pd.DataFrame, trial_ids: list[str], notes: list[str], scoring: dict) -> None:
    """The trials among ``trial_ids`` not yet scored on test, scored (no figures): the Pareto set's seeds."""
    todo = table[table["trial_id"].isin(trial_ids) & table["test_miou"].isna()]
    for run in todo.itertuples():
        _score_trial(table, run, f"{model_label(run.model)} {run.strategy}", notes, scoring)


def _analysis_figures(table: pd.DataFrame, settings: dict, keys: list[str], experiment: Path, out: Path,
                      notes: list[str]) -> list[tuple[Path, str]]:
    """Beyond the report: the searched keys against val mIoU, quality against cost, where ASHA stopped each trial,
    and hyperparameter importance, all over the trials that trained."""
    trained = objectives.trained(table)
    figures = []
    numeric = [k for k in keys if k not in ("model", "init") and trained[k].map(repr).nunique() > 1]
    if numeric:
        figures.append((fig.hyperparameter_scatter(trained, out / "hyperparameters", numeric),
                        f"Each searched hyperparameter ({', '.join(numeric)}) against best val mIoU, coloured by "
                        "model and strategy."))
    axis = objectives.cost_axis(trained)
    if axis is not None:
        figures.append((fig.cost_figure(trained, out / "cost", axis[0], axis[1]), axis[2]))
    confirmed = results_experiment(str(experiment)) != str(experiment)  # the trials are a confirm stage's
    if settings.get("scheduler") == "asha" and not confirmed:
        grace, factor, epochs = settings["grace_period"], settings["reduction_factor"], settings["epochs"]
        rungs = [grace * factor**k for k in range(10) if grace * factor**k < epochs]
        figures.append((fig.asha_stops(trained, epochs, rungs, out / "asha_stops"),
                        "Epochs each trial reached before ASHA stopped it (or it completed)."))
    importances = hyperparameter_importance(trained, keys, settings.get("space"))
    if importances:
        figures.append((fig.importance_figure(importances, out / "importance"),
                        "Hyperparameter importance for best val mIoU (Optuna's fANOVA over the finished trials) of "
                        f"every searched key that varied ({', '.join(importances)})."))
    else:
        notes.append("No hyperparameter importance: fewer than 3 trials with scores, or no varied hyperparameter.")
    return figures


def captioned_test_figures(stem: Path, label: str, trial_id: str, classes: int) -> list[tuple[Path, str]]:
    """The test figures ``analysis.score`` wrote into ``stem``, captioned for ``classes`` classes."""
    confusion = f"{label} (trial {trial_id}): row-normalised test confusion matrix"
    if classes > fig.CONFUSION_TOP:
        confusion += (f" of the (at most) {fig.CONFUSION_TOP} classes with the most test pixels, of {classes}; "
                      "the rest are summed into one \"other\" row and column")
    roc = f"{label}: one-vs-rest ROC curves on the test split, AUC per class."
    if classes > fig.FEW_CLASSES:
        roc = (f"{label}: one-vs-rest ROC on the test split: the macro and micro averages over the classes in "
               f"the split (of {classes}) and the {fig.ROC_WORST} classes with the lowest AUC.")
    shown = [(stem / "confusion_matrix.png", confusion + "."), (stem / "roc.png", roc)]
    if classes > fig.FEW_CLASSES:  # a few classes read as well from the per-class table
        shown.append((stem / "per_class_iou.png", f"{label}: test IoU per class, sorted, with each class's share "
                      "of the labelled test pixels."))
    masks = f"{label}: predicted masks beside image and ground truth"
    return shown + [(stem / "predicted_masks.png",
                     masks + (" (legend: the classes in either mask)." if classes > fig.FEW_CLASSES else "."))]


def per_class_table(results: dict[str, dict]) -> pd.DataFrame:
    """Every class's test pixels, their share, and its IoU under each configuration (``results``: label ->
    metrics), best test mIoU first; rows sorted by that configuration's IoU (``analysis.score.per_class_frame``)."""
    if not results:
        return pd.DataFrame(columns=["class", "pixels", "frequency"])
    order = sorted(results, key=lambda label: -(results[label]["miou"] or 0.0))
    table = per_class_frame(results[order[0]]).drop(columns="iou")
    for label in order:
        iou = results[label]["per_class_iou"]
        table[label] = [math.nan if iou[name] is None else iou[name] for name in table["class"]]
    return table


def _per_class_section(per_class: pd.DataFrame) -> list[str]:
    """Per-class test IoU of every class, in the task's class names."""
    labels = [c for c in per_class.columns if c not in ("class", "pixels", "frequency")]
    lines = ["## Per-class test IoU", "",
             f"Each of the {len(per_class)} classes on the test split: its labelled pixels and their share, and its "
             "IoU under each configuration's best checkpoint (the seed the figures show), sorted by the IoU of "
             f"{labels[0]}, the best test mIoU (`{PER_CLASS_FILE}`). A dash: the class is neither in the targets "
             "nor predicted.", "",
             "| class | test pixels | share | " + " | ".join(labels) + " |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in labels) + " |"]
    for row in per_class.itertuples(index=False):
        ious = " | ".join("—" if math.isnan(v) else f"{v:.3f}" for v in row[3:])
        lines.append(f"| {row[0]} | {row[1]} | {100 * row[2]:.3g} % | {ious} |")
    return lines + [""]


def _ended(row: object) -> str:
    """The table's "stopped early" cell: yes (ASHA), no (completed), or the recorded fate otherwise."""
    return {"stopped early (ASHA)": "yes", "completed": "no"}.get(row.stop_reason, row.stop_reason)


def _headline(table: pd.DataFrame, keys: list[str] | None = None) -> str:
    """The best configuration, chosen as every strategy's is (highest mean best val mIoU over its completed
    seeds, equal ``keys``: default the summary's searched columns), told by its mean over those seeds (with a
    95 % CI when it has several), not by its luckiest seed, and by every searched key it sets."""
    done = completed(objectives.trained(table)).dropna(subset=["best_val_miou"])
    if not len(done):
        return "**Best configuration:** none: no trial completed its epochs."
    keys = keys or configuration_keys(done)
    runs = done[done["trial_id"].isin(best_configuration(done, configuration_keys(done)))]
    first = runs.iloc[0]
    told = []
    for column, name in (("best_val_miou", "best val mIoU"), ("test_miou", "test mIoU")):
        mean, low, high = mean_ci(runs[column].to_numpy())
        if not math.isnan(mean):
            told.append(f"{name} {mean:.4f}" + (f" [95 % CI {low:.4f}, {high:.4f}]" if not math.isnan(low) else ""))
    seeds = f"mean over {len(runs)} seeds" if len(runs) > 1 else f"one seed, trial `{first['trial_id']}`"
    shown = [f"{k} {_cell(first[k], k)}" if k != "init" else f"init `{first['init']}`" for k in keys
             if k != "model" and k in first and not is_missing(first[k])]
    return (f"**Best configuration:** {model_label(first['model'])}, {first['strategy']} "
            f"({', '.join(shown)}), {seeds}: " + ", ".join(told) + ".")


def _cell(value: object, key: str = "") -> str:
    """A searched key's value in a table: lr to 3 significant digits, other numbers to 4, a dash when unset."""
    if is_missing(value):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.3g}" if key == "lr" else f"{value:.4g}"
    return str(value)


def _test_section(test_summary: pd.DataFrame, dataset: str) -> list[str]:
    """The "Test mIoU" section, with the searched keys ``test_summary`` has (those between its strategy and its
    seeds); it says so where the format's "test" is the val split that chose everything."""
    columns = list(test_summary.columns)
    shown = columns[columns.index("strategy") + 1 : columns.index("seeds")]
    fmt = FORMATS.get(dataset)
    same_split = fmt is not None and fmt.test_is_val
    lines = ["## Test mIoU", "", "The best checkpoint of every seed of each strategy's best configuration, on the "
             "test split: mean and Student-t 95 % CI over seeds (`test_summary.csv`; `seeds` counts the seeds "
             "evaluated)." + (f" **`{dataset}` has no independent test split here: its \"test\" is the official val "
                              "split, the same images that chose the checkpoints and the configurations, so these "
                              "figures are optimistic.**" if same_split else ""), "",
             "| model | strategy | " + "".join(f"{k} | " for k in shown) + "seeds | test mIoU | 95 % CI |",
             "| --- | --- | " + "---: | " * len(shown) + "---: | ---: | --- |"]
    for _, row in test_summary.iterrows():
        ci = "—" if math.isnan(row["ci_low"]) else f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]"
        mean = "—" if math.isnan(row["test_miou_mean"]) else f"{row['test_miou_mean']:.4f}"
        lines.append(f"| {model_label(row['model'])} | {row['strategy']} | " + "".join(f"{_cell(row[k], k)} | "
                     for k in shown) + f"{row['seeds']} | {mean} | {ci} |")
    return lines


def render_markdown(experiment: str, settings: dict, table: pd.DataFrame, figures: list[tuple[Path, str]],
                    notes: list[str], out: Path, found: pd.DataFrame | None = None,
                    test_summary: pd.DataFrame | None = None, margin: float = DEFAULT_MARGIN,
                    confirmed: bool = False, per_class: pd.DataFrame | None = None, keys: list[str] | None = None,
                    sections: list[str] | None = None) -> str:
    """``confirmed``: the trials are a search's confirm stage (``study.summary.results_experiment``);
    ``per_class``: ``per_class_table``; ``keys``: the searched keys (``analysis.load.searched_keys``; default the
    summary's searched columns); ``sections``: lines after the headline (which model, Pareto set, ...)."""
    errored = table[table["status"] == "error"]
    scored = table.dropna(subset=["best_val_miou"])
    seeds = table["seed"].nunique()
    refused = table["stop_reason"] == INFEASIBLE
    unfinished = table[table["status"].isin(["interrupted", "running"]) & ~refused]
    notes_on_count = [f"{len(errored)} errored, listed below"] if len(errored) else []
    notes_on_count += [f"{len(unfinished)} interrupted or still running"] if len(unfinished) else []
    notes_on_count += [f"{refused.sum()} infeasible, never trained, listed below"] if refused.any() else []
    count = f"{len(table)} trials" + (f" ({'; '.join(notes_on_count)})" if notes_on_count else "")
    lines = [
        f"# segstudy report: {experiment.rstrip('/').rsplit('/', 1)[-1]}",
        "",
        f"Preset `{settings.get('preset', '?')}` on `{settings.get('dataset', 'pets')}` "
        f"({settings.get('epochs', '?')} epochs, batch {settings.get('batch_size', '?')}, image size "
        f"{settings.get('image_size', '?')}), {count}" + (f", {seeds} seeds per configuration" if seeds > 1 else "")
        + f". Study folder: `{experiment}`.",
        "",
    ]
    if confirmed:
        lines += [f"These are the confirm stage's trials: the search's {settings['confirm_top']} best configurations, "
                  f"each rerun with {seeds} seed(s) to the full epochs without early stopping. The search's own "
                  "trials are in `search_summary.csv`.", ""]
    if len(scored):
        lines += [_headline(table, keys), ""]
    lines += sections or []
    if found is not None and len(found):
        lines += _findings_section(found, margin, seeds, grid=settings.get("searcher") == "grid")
    elif found is not None:  # nothing the claims compare ran: say so rather than leave the section out
        lines += ["## Findings", "", "No claim can be asked of what this study ran: the claims compare a model's "
                  "fine-tune with its scratch or freeze runs, one init at two learning rates, or two models' "
                  "fine-tuned runs, and none of these pairs ran (`findings.csv` is empty).", ""]
    if test_summary is not None and len(test_summary):
        lines += _test_section(test_summary, settings.get("dataset", "pets"))
        lines.append("")
    if per_class is not None and len(per_class):
        lines += _per_class_section(per_class)
    lines += _configurations_section(table[~refused], keys)
    lines += ["", "Test mIoU is given for every seed of each strategy's best configuration"
              + (" and of each configuration in the Pareto set." if sections and "## Pareto set" in sections else ".")
              , ""]
    lines += _errored_section(errored, len(table))
    lines += ["## Figures", ""]
    for k, (path, caption) in enumerate(figures, start=1):
        rel = path.relative_to(out)
        data = rel.with_suffix(".csv").as_posix()
        lines += [f"![{caption}]({rel.as_posix()})", "", f"*Figure {k}: {caption}* (data: `{data}`)", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def _errored_section(errored: pd.DataFrame, trials: int) -> list[str]:
    """The trials that ended with an error, each with its one-line error."""
    if not len(errored):
        return []
    lines = ["## Errored trials", "", f"{len(errored)} of {trials} trials ended with an error (details: "
             "`errors/<trial>.txt`, or Tune's `trial_<id>/error.txt`):", ""]
    lines += [f"- `{row.trial_id}` {model_label(row.model)} {row.strategy} (seed {row.seed}): {row.error}"
              for row in errored.itertuples()]
    return lines + [""]


def _configurations_section(table: pd.DataFrame, keys: list[str] | None) -> list[str]:
    """Every trial but the errored ones, with every searched key (``keys``; default: the summary's searched
    columns that hold a value) other than model and init, which the model and strategy columns give."""
    keys = keys if keys is not None else [k for k in configuration_keys(table) if table[k].notna().any()]
    shown = [k for k in keys if k not in ("model", "init") and k in table.columns]
    lines = ["## Configurations", "",
             "| trial | model | strategy | " + "".join(f"{k} | " for k in shown)
             + "seed | epochs | stopped early | best val mIoU | test mIoU |",
             "| --- | --- | --- | " + "---: | " * len(shown) + "---: | ---: | --- | ---: | ---: |"]
    for _, row in table[table["status"] != "error"].iterrows():
        best_val, test = (("—" if math.isnan(v) else f"{v:.4f}") for v in (row["best_val_miou"], row["test_miou"]))
        lines.append(f"| {row['trial_id']} | {model_label(row['model'])} | {row['strategy']} | "
                     + "".join(f"{_cell(row[k], k)} | " for k in shown)
                     + f"{row['seed']} | {row['epochs']} | {_ended(row)} | {best_val} | {test} |")
    return lines


def _findings_section(found: pd.DataFrame, margin: float, seeds: int = 1, grid: bool = False) -> list[str]:
    """The claims with a completed run in both groups (the others are named in one line). ``seeds``: seeds per
    configuration; with one, no claim can be tested, and the section says which command can."""
    rows = [row for _, row in found.iterrows() if row["n_a"] > 0 and row["n_b"] > 0]
    lines = ["## Findings", ""]
    if seeds <= 1:
        rerun = ("`--repeats 3` runs each configuration with 3 seeds" if grid else
                 "`--confirm-top K --repeats 3` reruns its K best configurations with 3 seeds each")
        lines += [f"This study ran one seed per configuration, so it cannot test its claims (a verdict needs at least "
                  f"{MIN_SEEDS} seeds per group); {rerun}, which can."
                  + (" Below, the single runs' differences, for the claims with a run in both groups." if rows else ""),
                  ""]
    else:
        lines += ["The original report's claims, asked of what this study ran (`findings.csv`): for each model, "
                  "fine-tune against scratch and freezing against fine-tuning; for each model and init run at two "
                  "learning rates, an equivalence test (TOST) with a margin of "
                  f"±{margin:g} mIoU; for each pair of models, their fine-tuned validation curves' instability. "
                  "Welch's t-test, with a Holm correction across every row tested. A verdict needs at least "
                  f"{MIN_SEEDS} seeds per group; see `analysis/findings.py` for why these tests.", ""]
    if rows:
        lines += ["| claim | metric | A | B | n (A/B) | mean A | mean B | A − B [CI] | p (Holm) | verdict |",
                  "| --- | --- | --- | --- | --- | ---: | ---: | --- | ---: | --- |"]
        for row in rows:
            ci = "" if math.isnan(row["ci_low"]) else f" [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
            p = "—" if math.isnan(row["p_holm"]) else f"{row['p_holm']:.3g}"
            lines.append(f"| {row['claim']} | {row['metric']} | {row['group_a']} | {row['group_b']} | "
                         f"{row['n_a']}/{row['n_b']} | {row['mean_a']:.3f} | {row['mean_b']:.3f} | "
                         f"{row['diff']:+.3f}{ci} | {p} | **{row['verdict']}** |")
        lines.append("")
        if seeds > 1:
            lines += [f"- **{row['claim']}** ({row['metric']}): {describe(row, margin)}" for row in rows]
            lines.append("")
    shown = {row["claim"] for row in rows}
    missing = [row["claim"] + (f" ({row['metric']})" if row["claim"] in shown else "") for _, row in found.iterrows()
               if row["n_a"] == 0 or row["n_b"] == 0]
    if missing:
        lines += ["Left out, with no completed trial to score in one of their groups (`findings.csv` has every claim): "
                  + "; ".join(dict.fromkeys(missing)) + ".", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m analysis.report", description="Write the report's figures and report.md.")
    parser.add_argument("--experiment", required=True, type=path_type,
                        help="STORAGE/NAME of a study (or a study.run_trial run folder)")
    parser.add_argument("--data-root", type=path_type,
                        help="dataset root for the test evaluation (default: the study's)")
    parser.add_argument("--task", metavar="FILE.yaml", type=path_type,
                        help="a task file whose root is the data's new place (default: the task the study recorded)")
    parser.add_argument("--out", type=path_type, help="output folder (default: EXPERIMENT/report)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    add_option(parser, declaration(TrainConfig, "cache_dir"))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    parser.add_argument("--equivalence-margin", type=float,
                        help="mIoU margin of the equivalence claim in the findings (default: the study's, else 0.01)")
    args = parser.parse_args(argv)
    if args.equivalence_margin is not None and not 0 < args.equivalence_margin < 1:
        raise ConfigError(f"--equivalence-margin: expected an mIoU margin in (0, 1), got {args.equivalence_margin}")
    if storage.is_remote(args.experiment):
        if not storage.list_files(args.experiment):
            raise ConfigError(f"--experiment {storage.display(args.experiment)}: nothing stored there")
    elif not Path(args.experiment).is_dir():
        raise ConfigError(f"--experiment {args.experiment}: not a folder")
    data_root = args.data_root or (load_task(args.task).get("data_root") if args.task else None)
    write_report(args.experiment, data_root, args.out, args.cache_dir, args.device, overwrite=args.overwrite,
                 margin=args.equivalence_margin)
    return 0


if __name__ == "__main__":
    exit_cli("analysis.report", main)
