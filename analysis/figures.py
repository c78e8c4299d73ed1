"""The report's figures, each saved as PNG with the CSV of the data behind it.

Every figure takes data (pandas frames, arrays) and a path stem, and writes
``stem.png`` and ``stem.csv``. A strategy has the same colour in every figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from analysis.findings import curve_bands  # noqa: E402
from analysis.load import MODEL_LABEL, STRATEGY_COLOURS, STRATEGY_ORDER  # noqa: E402

PANELS = (("train_loss", "train/loss"), ("train_miou", "train/mIoU"), ("val_loss", "val/loss"),
          ("val_miou", "val/mIoU"))
PETS_COLOURS = {"pet": (230, 150, 40), "background": (40, 60, 120), "boundary": (250, 250, 250)}
IGNORE_COLOUR = (0, 0, 0)


def class_palette(class_names: tuple[str, ...] | list[str]) -> np.ndarray:
    """RGB per class: fixed colours for Pets, Cityscapes' official colours for its 19 classes."""
    if set(class_names) == set(PETS_COLOURS):
        return np.array([PETS_COLOURS[c] for c in class_names], dtype=np.uint8)
    from torchvision.datasets import Cityscapes

    by_name = {c.name: c.color for c in Cityscapes.classes}
    fallback = plt.get_cmap("tab20")
    return np.array([by_name.get(c, tuple(int(255 * v) for v in fallback(i)[:3])) for i, c in enumerate(class_names)],
                    dtype=np.uint8)


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = palette
    lut[255] = IGNORE_COLOUR
    return lut[mask.astype(np.int64)]


def _legend(ax: plt.Axes, class_names, palette: np.ndarray, present: set[int] | None = None) -> None:
    handles = [Patch(facecolor=palette[i] / 255, edgecolor="black", linewidth=0.5, label=name)
               for i, name in enumerate(class_names) if present is None or i in present]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)


def _save(fig: plt.Figure, stem: Path, data: pd.DataFrame) -> Path:
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(stem.with_suffix(".png"), dpi=110, bbox_inches="tight")
    plt.close(fig)
    data.to_csv(stem.with_suffix(".csv"), index=False)
    return stem.with_suffix(".png")


def dataset_samples(images: np.ndarray, masks: np.ndarray, files: list[str], class_names, title: str,
                    stem: Path) -> Path:
    """Images (N,H,W,3 uint8) beside their label masks (Figs 1-2)."""
    palette = class_palette(class_names)
    aspect = images.shape[1] / images.shape[2]
    fig, axes = plt.subplots(2, len(images), figsize=(2.6 * len(images), 2 * 2.6 * aspect + 0.9), squeeze=False)
    for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
        axes[0, k].imshow(image)
        axes[0, k].set_title(Path(files[k]).stem, fontsize=7)
        axes[1, k].imshow(colorize(mask, palette), interpolation="nearest")
    for ax in axes.flat:
        ax.axis("off")
    present = {int(v) for v in np.unique(masks) if v != 255}
    _legend(axes[1, -1], class_names, palette, present)
    fig.suptitle(title)
    return _save(fig, stem, pd.DataFrame({"file": files}))


def training_curves(df: pd.DataFrame, title: str, stem: Path, label_column: str = "strategy",
                    colours: dict[str, str] | None = None) -> Path:
    """train/loss, train/mIoU, val/loss, val/mIoU against epoch, one line per label (Figs 4, 5, 10).

    With several seeds per label (``study.run --repeats``) a line is their mean, drawn with its bootstrap
    band (``analysis.findings.curve_bands``); with one seed it is that run. The CSV holds the means and bands.
    """
    colours = colours or STRATEGY_COLOURS
    bands = curve_bands(df, label_column, tuple(column for column, _ in PANELS))
    banded = bool(len(bands)) and bands["n"].max() > 1
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    order = ([s for s in STRATEGY_ORDER if s in set(bands[label_column])]
             + sorted(set(bands[label_column]) - set(STRATEGY_ORDER)))
    for ax, (column, name) in zip(axes.flat, PANELS, strict=True):
        for label in order:
            part = bands[bands[label_column] == label].dropna(subset=[f"{column}_mean"])
            seeds = f" (mean of {part['n'].max()} seeds)" if banded else ""
            ax.plot(part["epoch"], part[f"{column}_mean"], marker="o", markersize=3, label=label + seeds,
                    color=colours.get(label))
            if banded:
                ax.fill_between(part["epoch"], part[f"{column}_low"], part[f"{column}_high"], alpha=0.2,
                                color=colours.get(label), linewidth=0)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name.split("/")[1])
        ax.grid(alpha=0.3)
    axes[0, 0].legend(title=label_column.replace("_", " "), fontsize=8)
    fig.suptitle(title + (" (bands: bootstrap 95 % over seeds)" if banded else ""))
    fig.tight_layout()
    return _save(fig, stem, bands)


def confusion_figure(confusion: np.ndarray, class_names, title: str, stem: Path) -> Path:
    """Row-normalised confusion matrix (rows: true class) with class names (Figs 6, 8)."""
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion, dtype=float), where=rows > 0)
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45 if len(class_names) > 3 else 0,
                  ha="right" if len(class_names) > 3 else "center")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if len(class_names) <= 6:
        for (i, j), value in np.ndenumerate(normalised):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set_title(title)
    data = pd.DataFrame(normalised, index=class_names, columns=class_names).reset_index(names="true_class")
    return _save(fig, stem, data)


def roc_figure(roc: dict[str, dict], title: str, stem: Path, palette: np.ndarray) -> Path:
    """One-vs-rest ROC curve per class with its AUC (Figs 6, 8)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    rows = []
    for k, (name, curve) in enumerate(roc.items()):
        if curve["auc"] is None:
            continue
        ax.plot(curve["fpr"], curve["tpr"], color=palette[k] / 255 if palette[k].sum() < 700 else "grey",
                label=f"{name} (AUC {curve['auc']:.3f})")
        rows += [{"class": name, "fpr": f, "tpr": t, "auc": curve["auc"]}
                 for f, t in zip(curve["fpr"], curve["tpr"], strict=True)]
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, stem, pd.DataFrame(rows, columns=["class", "fpr", "tpr", "auc"]))


def masks_figure(images: np.ndarray, targets: np.ndarray, preds: np.ndarray, files: list[str], class_names,
                 title: str, stem: Path) -> Path:
    """Image, ground truth and prediction for a few test images (Figs 7, 9)."""
    palette = class_palette(class_names)
    fig, axes = plt.subplots(len(images), 3, figsize=(7.5, 2.5 * len(images)), squeeze=False)
    rows = []
    for k in range(len(images)):
        axes[k, 0].imshow(images[k])
        axes[k, 1].imshow(colorize(targets[k], palette), interpolation="nearest")
        axes[k, 2].imshow(colorize(preds[k], palette), interpolation="nearest")
        valid = targets[k] != 255
        rows.append({"file": files[k],
                     "pixel_accuracy": float((preds[k] == targets[k])[valid].mean()) if valid.any() else None})
    for ax, name in zip(axes[0], ("image", "ground truth", "prediction"), strict=True):
        ax.set_title(name)
    for ax in axes.flat:
        ax.axis("off")
    _legend(axes[0, 2], class_names, palette)
    fig.suptitle(title)
    return _save(fig, stem, pd.DataFrame(rows))


MODEL_MARKERS = {"fcn_resnet50": "o", "segformer": "^"}


def hyperparameter_scatter(table: pd.DataFrame, stem: Path) -> Path:
    """lr and gamma against best val mIoU: colour = strategy (as everywhere), marker = model."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for (model, strategy), group in table.groupby(["model", "strategy"]):
        for ax, column in zip(axes, ("lr", "gamma"), strict=True):
            ax.scatter(group[column], group["best_val_miou"], color=STRATEGY_COLOURS.get(strategy, "grey"),
                       marker=MODEL_MARKERS.get(model, "s"), s=50,
                       label=f"{MODEL_LABEL.get(model, model)} / {strategy}",
                       edgecolors=["black" if s.startswith("stopped") else "none" for s in group["stop_reason"]])
    axes[0].set_xscale("log")
    axes[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].set_xlabel("learning rate (log)")
    axes[1].set_xlabel("gamma (ExponentialLR)")
    axes[0].set_ylabel("best val mIoU")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
                   title="model / strategy\n(black edge: stopped early)")
    fig.suptitle("Hyperparameters against best validation mIoU")
    fig.tight_layout()
    return _save(fig, stem,
                 table[["trial_id", "model", "init", "strategy", "lr", "gamma", "best_val_miou", "stop_reason"]])


def asha_stops(table: pd.DataFrame, max_epochs: int, rungs: list[int], stem: Path) -> Path:
    """Epochs each trial reached, in trial order, with the scheduler's rungs."""
    table = table.sort_values("trial_id").reset_index(drop=True)
    colours = [STRATEGY_COLOURS.get(s, "grey") for s in table["strategy"]]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(table) + 1.5))
    # The recorded fate (study.fates): a trial that neither completed nor was stopped by ASHA says how it ended.
    other = ~table["stop_reason"].isin(["completed", "stopped early (ASHA)"])
    labels = [f"{t} {MODEL_LABEL.get(m, m)} {s}" + (f" ({r})" if o else "")
              for t, m, s, r, o in zip(table["trial_id"], table["model"], table["strategy"], table["stop_reason"],
                                       other, strict=True)]
    bars = ax.barh(labels, table["epochs"], color=colours)
    for bar, hatched in zip(bars, other, strict=True):
        if hatched:
            bar.set_hatch("//")
    for rung in rungs:
        ax.axvline(rung, color="black", linestyle=":", linewidth=0.8)
    ax.set_xlim(0, max_epochs + 0.5)
    ax.set_xlabel("epochs reached (dotted: ASHA rungs; hatched: ended otherwise, as labelled)")
    ax.invert_yaxis()
    ax.legend(handles=[Patch(color=c, label=s) for s, c in STRATEGY_COLOURS.items() if s in set(table["strategy"])],
              fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="strategy")
    ax.set_title("Where the scheduler stopped each trial")
    return _save(fig, stem, table[["trial_id", "model", "strategy", "lr", "gamma", "epochs", "stop_reason"]])


def importance_figure(importances: dict[str, float], stem: Path) -> Path:
    """Optuna's hyperparameter importance on the finished trials' best val mIoU."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="tab:purple")
    ax.set_xlabel("importance for best val mIoU (Optuna fANOVA)")
    ax.set_title("Hyperparameter importance")
    return _save(fig, stem,
                 pd.DataFrame({"hyperparameter": list(importances), "importance": list(importances.values())}))
