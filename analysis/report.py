"""Every figure of the report, and ``report.md``, from a finished study:

    python -m analysis.report --experiment STORAGE/NAME --data-root R --out DIR

Evaluates the best checkpoint of every seed of each strategy's best configuration on the test
split, then writes dataset samples (Figs 1-2), training curves per strategy (Figs 4-5; with
repeated seeds, their mean with a bootstrap band), the best fine-tuned FCN against the best
fine-tuned SegFormer (Fig 10), confusion matrices, ROC curves and predicted masks (Figs 6-9),
the report's claims as tested findings (``findings.csv``, ``analysis.findings``), and beyond the
report: hyperparameter importance, lr/gamma against best val mIoU, and where ASHA stopped each trial.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figures as fig
from analysis.findings import DEFAULT_MARGIN, MIN_SEEDS, describe, findings, mean_ci
from analysis.load import (
    best_configuration_trials,
    completed,
    load_experiment,
    mirror_experiment,
    model_colours,
    model_label,
    study_settings,
    trial_table,
)
from analysis.score import per_class_frame, score_checkpoint
from study import storage
from study.cli import OneLineParser, exit_cli
from study.config import DEVICES
from study.data import Labels, build_dataset
from study.data.formats import FORMATS
from study.data.transforms import denormalize, normalize
from study.errors import ConfigError, DataError
from study.io import atomic_write_text, write_json
from study.layout import model_slug
from study.summary import HYPERPARAMETERS, results_experiment
from study.task import load_task

log = logging.getLogger(__name__)

SAMPLE_SIZES = {"pets": "128", "cityscapes": "128x256"}
FINDINGS_FILE = "findings.csv"
PER_CLASS_FILE = "per_class_iou.csv"
TEST_SUMMARY_COLUMNS = ("model", "strategy", "lr", "gamma", "seeds", "test_miou_mean", "ci_low", "ci_high")


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

    task_labels = Labels(tuple(settings["classes"]) if settings.get("classes") else None,  # as study.json has them
                         settings.get("ignore_index", 255), settings.get("reduce_zero_label"))
    for name in dict.fromkeys((dataset, "cityscapes")):  # Figs 1-2: the study's task, and the encoders' pretraining
        try:
            data = build_dataset(name, "train", data_root, SAMPLE_SIZES.get(name, "128"), cache_dir=cache_dir,
                                 labels=task_labels if name == dataset else Labels())
        except DataError as exc:
            notes.append(f"No {name} samples: {exc}")
            continue
        pick = sorted(np.random.default_rng(0).choice(len(data), size=min(4, len(data)), replace=False).tolist())
        images = (denormalize(normalize(data.images[pick])).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
        figures.append((fig.dataset_samples(images, data.masks[pick].numpy(), [data.files[i] for i in pick],
                                            data.class_names, f"4 random {name} training images and labels",
                                            out / f"samples_{name}", getattr(data, "palette", None),
                                            data.ignore_index),
                        f"Four random {name} training images beside their label masks."))

    configurations = {model: chosen for model in sorted(set(df["model"].dropna()))
                      if (chosen := best_configuration_trials(df, model))}
    for (model, strategy), _ in table.groupby(["model", "strategy"]):
        if strategy not in configurations.get(model, {}):
            notes.append(f"{model_label(model)} {strategy}: no trial completed its epochs, so it has no "
                         "curve, test evaluation or finding.")
    for model, chosen in configurations.items():  # Figs 4-5: the best configuration of each strategy
        ids = [trial_id for trial_ids in chosen.values() for trial_id in trial_ids]
        figures.append((fig.training_curves(df[df["trial_id"].isin(ids)],
                                            f"{model_label(model)}: training metrics per strategy",
                                            out / f"curves_{model}"),
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

    table["test_miou"] = math.nan  # Figs 6-9: each seed of each strategy's best configuration on the test split
    test_rows = []
    figured: dict[str, dict] = {}  # label -> metrics of the checkpoint whose figures the report shows
    for model, chosen in configurations.items():
        for strategy, trial_ids in chosen.items():
            runs = table[table["trial_id"].isin(trial_ids)]  # ranked by best val mIoU: the first gets figures
            label = f"{model_label(model)} {strategy}"
            stem = out / "test" / f"{model_slug(model)}_{runs.iloc[0]['init']}{_lr_suffix(strategy)}"
            for rank, run in enumerate(runs.itertuples()):
                if not run.best_checkpoint:
                    notes.append(f"No checkpoint for {label} (trial {run.trial_id}): not evaluated.")
                    continue
                result = score_checkpoint(run.best_checkpoint, dataset, data_root, "test", device,
                                          cache_dir=cache_dir, figures=stem if rank == 0 else None, title=label)
                table.loc[table["trial_id"] == run.trial_id, "test_miou"] = result["miou"]
                if rank == 0:
                    write_json(stem / "metrics.json", result)
                    figures += captioned_test_figures(stem, label, run.trial_id, len(result["class_names"]))
                    figured[label] = result
            evaluated = table.loc[table["trial_id"].isin(trial_ids), "test_miou"].dropna().to_numpy()
            mean, low, high = mean_ci(evaluated)
            test_rows.append({"model": model, "strategy": strategy, "lr": runs.iloc[0]["lr"],
                              "gamma": runs.iloc[0]["gamma"], "seeds": len(evaluated), "test_miou_mean": mean,
                              "ci_low": low, "ci_high": high})
    test_summary = pd.DataFrame(test_rows, columns=TEST_SUMMARY_COLUMNS)
    test_summary.to_csv(out / "test_summary.csv", index=False)
    per_class = per_class_table(figured)
    per_class.to_csv(out / PER_CLASS_FILE, index=False)
    margin = margin if margin is not None else settings.get("equivalence_margin", DEFAULT_MARGIN)
    found = findings(df, margin, test_miou=table.set_index("trial_id")["test_miou"])  # chosen on val, tested on test
    found.to_csv(out / FINDINGS_FILE, index=False)

    figures.append((fig.hyperparameter_scatter(table, out / "hyperparameters"),
                    "Learning rate and gamma against best val mIoU, coloured by model and strategy."))
    if table["flops"].notna().any():
        figures.append((fig.cost_figure(table, out / "cost"),
                        "Best val mIoU of every trial against its model's forward GFLOPs per image at the trial's "
                        "image size (log scale), each model labelled with its parameter count (`summary.csv`'s "
                        "`params` and `flops`)."))
    confirmed = results_experiment(str(experiment)) != str(experiment)  # the trials are a confirm stage's
    if settings.get("scheduler") == "asha" and not confirmed:
        grace, factor, epochs = settings["grace_period"], settings["reduction_factor"], settings["epochs"]
        rungs = [grace * factor**k for k in range(10) if grace * factor**k < epochs]
        figures.append((fig.asha_stops(table, epochs, rungs, out / "asha_stops"),
                        "Epochs each trial reached before ASHA stopped it (or it completed)."))
    importances = hyperparameter_importance(table)
    if importances:
        figures.append((fig.importance_figure(importances, out / "importance"),
                        "Hyperparameter importance for best val mIoU (Optuna's fANOVA over the finished trials)."))
    else:
        notes.append("No hyperparameter importance: fewer than 3 trials with scores, or no varied hyperparameter.")

    if remote:  # name the checkpoints where they really are
        table["best_checkpoint"] = [storage.join(remote, Path(p).relative_to(experiment).as_posix()) if p else ""
                                    for p in table["best_checkpoint"]]
    table.to_csv(out / "trials.csv", index=False)
    markdown = render_markdown(storage.display(remote or experiment), settings, table, figures, notes, out,
                               found, test_summary, margin, confirmed, per_class)
    atomic_write_text(out / "report.md", markdown)
    log.info("report written to %s", out / "report.md")
    return out / "report.md"


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


def hyperparameter_importance(table: pd.DataFrame) -> dict[str, float]:
    """Optuna's importance evaluator on the trials' best val mIoU (varied hyperparameters only)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    scored = table.dropna(subset=["best_val_miou"])
    varied = [c for c in ("model", "init", "lr", "gamma") if scored[c].nunique() > 1]
    if len(scored) < 3 or not varied:
        return {}
    distributions = {
        "model": CategoricalDistribution(sorted(scored["model"].unique())),
        "init": CategoricalDistribution(sorted(scored["init"].unique())),
        "lr": FloatDistribution(scored["lr"].min(), scored["lr"].max(), log=True),
        "gamma": FloatDistribution(scored["gamma"].min(), scored["gamma"].max()),
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for row in scored.itertuples():
        params = {c: (float(getattr(row, c)) if c in ("lr", "gamma") else getattr(row, c)) for c in varied}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={c: distributions[c] for c in varied},
                                                  value=float(row.best_val_miou)))
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError) as exc:
        log.warning("hyperparameter importance failed: %s", exc)
        return {}


def _ended(row: object) -> str:
    """The table's "stopped early" cell: yes (ASHA), no (completed), or the recorded fate otherwise."""
    return {"stopped early (ASHA)": "yes", "completed": "no"}.get(row.stop_reason, row.stop_reason)


def _headline(table: pd.DataFrame) -> str:
    """The best configuration, chosen as every strategy's is (highest mean best val mIoU over its completed
    seeds), told by its mean over those seeds (with a 95 % CI when it has several), not by its luckiest seed."""
    done = completed(table).dropna(subset=["best_val_miou"])
    if not len(done):
        return "**Best configuration:** none: no trial completed its epochs."
    means = done.groupby(list(HYPERPARAMETERS))["best_val_miou"].mean()
    runs = done.set_index(list(HYPERPARAMETERS)).loc[[means.idxmax()]].reset_index()
    first = runs.iloc[0]
    told = []
    for column, name in (("best_val_miou", "best val mIoU"), ("test_miou", "test mIoU")):
        mean, low, high = mean_ci(runs[column].to_numpy())
        if not math.isnan(mean):
            told.append(f"{name} {mean:.4f}" + (f" [95 % CI {low:.4f}, {high:.4f}]" if not math.isnan(low) else ""))
    seeds = f"mean over {len(runs)} seeds" if len(runs) > 1 else f"one seed, trial `{first['trial_id']}`"
    return (f"**Best configuration:** {model_label(first['model'])}, {first['strategy']} "
            f"(init `{first['init']}`, lr {first['lr']:.3g}, gamma {first['gamma']:.4g}), {seeds}: "
            + ", ".join(told) + ".")


def _test_section(test_summary: pd.DataFrame, dataset: str) -> list[str]:
    """The "Test mIoU" section; it says so where the format's "test" is the val split that chose everything."""
    fmt = FORMATS.get(dataset)
    same_split = fmt is not None and fmt.test_is_val
    lines = ["## Test mIoU", "", "The best checkpoint of every seed of each strategy's best configuration, on the "
             "test split: mean and Student-t 95 % CI over seeds (`test_summary.csv`; `seeds` counts the seeds "
             "evaluated)." + (f" **`{dataset}` has no independent test split here: its \"test\" is the official val "
                              "split, the same images that chose the checkpoints and the configurations, so these "
                              "figures are optimistic.**" if same_split else ""), "",
             "| model | strategy | lr | seeds | test mIoU | 95 % CI |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for row in test_summary.itertuples():
        ci = "—" if math.isnan(row.ci_low) else f"[{row.ci_low:.4f}, {row.ci_high:.4f}]"
        lines.append(f"| {model_label(row.model)} | {row.strategy} | {row.lr:.3g} | {row.seeds} | "
                     f"{row.test_miou_mean:.4f} | {ci} |")
    return lines


def render_markdown(experiment: str, settings: dict, table: pd.DataFrame, figures: list[tuple[Path, str]],
                    notes: list[str], out: Path, found: pd.DataFrame | None = None,
                    test_summary: pd.DataFrame | None = None, margin: float = DEFAULT_MARGIN,
                    confirmed: bool = False, per_class: pd.DataFrame | None = None) -> str:
    """``confirmed``: the trials are a search's confirm stage (``study.summary.results_experiment``);
    ``per_class``: ``per_class_table``."""
    errored = table[table["status"] == "error"]
    scored = table.dropna(subset=["best_val_miou"])
    seeds = table["seed"].nunique()
    unfinished = table[table["status"].isin(["interrupted", "running"])]
    notes_on_count = [f"{len(errored)} errored, listed below"] if len(errored) else []
    notes_on_count += [f"{len(unfinished)} interrupted or still running"] if len(unfinished) else []
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
        lines += [_headline(table), ""]
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
    lines += ["## Configurations", "",
              "| trial | model | strategy | lr | gamma | seed | epochs | stopped early | best val mIoU | test mIoU |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for row in table[table["status"] != "error"].itertuples():
        best_val, test = (("—" if math.isnan(v) else f"{v:.4f}") for v in (row.best_val_miou, row.test_miou))
        lines.append(f"| {row.trial_id} | {model_label(row.model)} | {row.strategy} | {row.lr:.3g} | "
                     f"{row.gamma:.4g} | {row.seed} | {row.epochs} | "
                     f"{_ended(row)} | {best_val} | {test} |")
    lines += ["", "Test mIoU is given for every seed of each strategy's best configuration.", ""]
    if len(errored):
        lines += ["## Errored trials", "", f"{len(errored)} of {len(table)} trials ended with an error (details: "
                  "`errors/<trial>.txt`, or Tune's `trial_<id>/error.txt`):", ""]
        lines += [f"- `{row.trial_id}` {model_label(row.model)} {row.strategy} (seed {row.seed}): "
                  f"{row.error}" for row in errored.itertuples()]
        lines.append("")
    lines += ["## Figures", ""]
    for k, (path, caption) in enumerate(figures, start=1):
        rel = path.relative_to(out)
        data = rel.with_suffix(".csv").as_posix()
        lines += [f"![{caption}]({rel.as_posix()})", "", f"*Figure {k}: {caption}* (data: `{data}`)", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


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
    parser.add_argument("--experiment", required=True, help="STORAGE/NAME of a study (or a study.run_trial run folder)")
    parser.add_argument("--data-root", help="dataset root for the test evaluation (default: the study's)")
    parser.add_argument("--task", metavar="FILE.yaml",
                        help="a task file whose root is the data's new place (default: the task the study recorded)")
    parser.add_argument("--out", help="output folder (default: EXPERIMENT/report)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--cache-dir")
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
