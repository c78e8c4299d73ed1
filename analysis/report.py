"""Every figure of the report, and ``report.md``, from a finished study:

    python -m analysis.report --experiment STORAGE/NAME --data-root R --out DIR

Evaluates the best checkpoint of each (model, init) on the test split, then writes
dataset samples (Figs 1-2), training curves per strategy (Figs 4-5), the best
fine-tuned FCN against the best fine-tuned SegFormer (Fig 10), confusion matrices,
ROC curves and predicted masks (Figs 6-9), and beyond the report: hyperparameter
importance, lr/gamma against best val mIoU, and where ASHA stopped each trial.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figures as fig
from analysis.load import (
    MODEL_LABEL,
    best_per_strategy,
    load_experiment,
    mirror_experiment,
    study_settings,
    trial_table,
)
from analysis.score import score_checkpoint
from study import storage
from study.cli import OneLineParser, main_guard
from study.config import DEVICES
from study.data import build_dataset
from study.data.transforms import denormalize, normalize
from study.errors import ConfigError, DataError
from study.io import atomic_write_text, write_json

log = logging.getLogger(__name__)

SAMPLE_SIZES = {"pets": "128", "cityscapes": "128x256"}


def write_report(experiment: str | Path, data_root: str | Path | None = None, out: str | Path | None = None,
                 cache_dir: str | None = None, device: str = "auto", overwrite: bool = True) -> Path:
    """Write every figure, its CSV and ``report.md`` into ``out`` (default ``experiment/report``).

    ``experiment`` may be on object storage (``s3://...``): it is then mirrored into a temporary
    folder first (``analysis.load.mirror_experiment``) and ``out`` must be a local folder.
    """
    if storage.is_remote(experiment):
        if out is None:
            raise ConfigError(f"--out: required when --experiment is a storage URI ({storage.display(experiment)})")
        with tempfile.TemporaryDirectory(prefix="segstudy-mirror-") as tmp:
            local = mirror_experiment(str(experiment), Path(tmp) / Path(storage.display(experiment)).name)
            return _write_report(local, data_root, Path(out), cache_dir, device, overwrite, remote=str(experiment))
    experiment = Path(experiment)
    return _write_report(experiment, data_root, Path(out) if out else experiment / "report", cache_dir, device,
                         overwrite)


def _write_report(experiment: Path, data_root: str | Path | None, out: Path, cache_dir: str | None, device: str,
                  overwrite: bool, remote: str | None = None) -> Path:
    """``remote``: the URI ``experiment`` is a mirror of (named in the report instead of the mirror)."""
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

    for name in ("pets", "cityscapes"):  # Figs 1-2
        try:
            data = build_dataset(name, "train", data_root, SAMPLE_SIZES[name], cache_dir=cache_dir)
        except DataError as exc:
            notes.append(f"No {name} samples: {exc}")
            continue
        pick = sorted(np.random.default_rng(0).choice(len(data), size=min(4, len(data)), replace=False).tolist())
        images = (denormalize(normalize(data.images[pick])).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
        figures.append((fig.dataset_samples(images, data.masks[pick].numpy(), [data.files[i] for i in pick],
                                            data.class_names, f"4 random {name} training images and labels",
                                            out / f"samples_{name}"),
                        f"Four random {name} training images beside their label masks."))

    for model in sorted(set(df["model"])):  # Figs 4-5: the best trial of each strategy
        chosen = best_per_strategy(df, model)
        part = df[df["trial_id"].isin(chosen.values())]
        figures.append((fig.training_curves(part, f"{MODEL_LABEL.get(model, model)}: training metrics per strategy",
                                            out / f"curves_{model}"),
                        f"{MODEL_LABEL.get(model, model)}: loss and mIoU per epoch for the best trial of each strategy "
                        f"({', '.join(chosen)})."))

    best_tuned = {m: best_per_strategy(df, m).get("fine-tune") for m in ("fcn_resnet50", "segformer")}
    if all(best_tuned.values()):  # Fig 10
        part = df[df["trial_id"].isin(best_tuned.values())].assign(model_label=lambda d: d["model"].map(MODEL_LABEL))
        figures.append((fig.training_curves(part, "Best fine-tuned FCN ResNet-50 against best fine-tuned SegFormer",
                                            out / "best_models_comparison", label_column="model_label",
                                            colours={"FCN ResNet-50": "tab:blue", "SegFormer": "tab:purple"}),
                        "The best fine-tuned FCN ResNet-50 and SegFormer trials on the same four panels."))
    else:
        notes.append("No comparison of fine-tuned models: the study has no fine-tuned trial for one of the models.")

    table["test_miou"] = math.nan  # Figs 6-9: the best checkpoint of each (model, init) on the test split
    for (model, init), group in table.groupby(["model", "init"]):
        best = group.iloc[0]
        if not best["best_checkpoint"]:
            notes.append(f"No checkpoint for {model}/{init} (trial {best['trial_id']}): not evaluated.")
            continue
        label = f"{MODEL_LABEL.get(model, model)} {best['strategy']}"
        stem = out / "test" / f"{model}_{init}"
        result = score_checkpoint(best["best_checkpoint"], dataset, data_root, "test", device, cache_dir=cache_dir,
                                     figures=stem, title=label)
        write_json(stem / "metrics.json", result)
        table.loc[table["trial_id"] == best["trial_id"], "test_miou"] = result["miou"]
        figures += [(stem / "confusion_matrix.png",
                     f"{label} (trial {best['trial_id']}): row-normalised test confusion matrix."),
                    (stem / "roc.png", f"{label}: one-vs-rest ROC curves on the test split, AUC per class."),
                    (stem / "predicted_masks.png", f"{label}: predicted masks beside image and ground truth.")]

    figures.append((fig.hyperparameter_scatter(table, out / "hyperparameters"),
                    "Learning rate and gamma against best val mIoU, coloured by model and strategy."))
    if settings.get("scheduler") == "asha":
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
    markdown = render_markdown(storage.display(remote or experiment), settings, table, figures, notes, out)
    atomic_write_text(out / "report.md", markdown)
    log.info("report written to %s", out / "report.md")
    return out / "report.md"


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


def render_markdown(experiment: str, settings: dict, table: pd.DataFrame, figures: list[tuple[Path, str]],
                    notes: list[str], out: Path) -> str:
    best = table.iloc[0]
    lines = [
        f"# segstudy report: {experiment.rstrip('/').rsplit('/', 1)[-1]}",
        "",
        f"Preset `{settings.get('preset', '?')}` on `{settings.get('dataset', 'pets')}` "
        f"({settings.get('epochs', '?')} epochs, batch {settings.get('batch_size', '?')}, image size "
        f"{settings.get('image_size', '?')}), {len(table)} trials. Study folder: `{experiment}`.",
        "",
        f"**Best configuration:** {MODEL_LABEL.get(best['model'], best['model'])}, {best['strategy']} "
        f"(init `{best['init']}`, lr {best['lr']:.3g}, gamma {best['gamma']:.4g}), trial `{best['trial_id']}`: "
        f"best val mIoU {best['best_val_miou']:.4f} at epoch {best['best_epoch']}"
        + (f", test mIoU {best['test_miou']:.4f}." if not math.isnan(best["test_miou"]) else "."),
        "",
        "## Configurations",
        "",
        "| trial | model | strategy | lr | gamma | epochs | stopped early | best val mIoU | test mIoU |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for row in table.itertuples():
        test = "—" if math.isnan(row.test_miou) else f"{row.test_miou:.4f}"
        lines.append(f"| {row.trial_id} | {MODEL_LABEL.get(row.model, row.model)} | {row.strategy} | {row.lr:.3g} | "
                     f"{row.gamma:.4g} | {row.epochs} | {'yes' if row.stop_reason.startswith('stopped') else 'no'} | "
                     f"{row.best_val_miou:.4f} | {test} |")
    lines += ["", "Test mIoU is given for the best trial of each (model, init), evaluated on the test split.", "",
              "## Figures", ""]
    for k, (path, caption) in enumerate(figures, start=1):
        rel = path.relative_to(out)
        data = rel.with_suffix(".csv").as_posix()
        lines += [f"![{caption}]({rel.as_posix()})", "", f"*Figure {k}: {caption}* (data: `{data}`)", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m analysis.report", description="Write the report's figures and report.md.")
    parser.add_argument("--experiment", required=True, help="STORAGE/NAME of a study (or a study.run_trial run folder)")
    parser.add_argument("--data-root", help="dataset root for the test evaluation (default: the study's)")
    parser.add_argument("--out", help="output folder (default: EXPERIMENT/report)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--cache-dir")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    args = parser.parse_args(argv)
    if storage.is_remote(args.experiment):
        if not storage.list_files(args.experiment):
            raise ConfigError(f"--experiment {storage.display(args.experiment)}: nothing stored there")
    elif not Path(args.experiment).is_dir():
        raise ConfigError(f"--experiment {args.experiment}: not a folder")
    write_report(args.experiment, args.data_root, args.out, args.cache_dir, args.device, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_guard("analysis.report", main))
