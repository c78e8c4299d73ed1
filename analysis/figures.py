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
from analysis.load import STRATEGY_COLOURS, STRATEGY_ORDER, model_label  # noqa: E402
from study.summary import in_creation_order  # noqa: E402

PANELS = (("train_loss", "train/loss"), ("train_miou", "train/mIoU"), ("val_loss", "val/loss"),
          ("val_miou", "val/mIoU"))
PETS_COLOURS = {"pet": (230, 150, 40), "background": (40, 60, 120), "boundary": (250, 250, 250)}
IGNORE_COLOUR = (0, 0, 0)
VOID_COLOUR = (224, 224, 192)  # Pascal VOC's own for ignored pixels: the ignore colour when a class is black
CONFUSION_TOP = 20  # a larger confusion matrix shows its most frequent classes and sums the rest
FEW_CLASSES = 6  # up to this many classes, the ROC figure has every class and the confusion matrix its numbers
ROC_WORST = 5  # beyond FEW_CLASSES, the ROC figure has the averages and this many worst classes
LEGEND_ROWS = 28  # a longer legend gets more columns


def bit_shift_palette(n: int) -> np.ndarray:
    """Pascal VOC's colour map (MMSegmentation's and many ADE20K tools' default; ``study.data.sources.voc_palette``):
    fixed and distinct for up to 256 classes, so any task without colours of its own gets the same ones."""
    from study.data.sources import voc_palette

    return np.array(voc_palette(n), dtype=np.uint8).reshape(n, 3)


def class_palette(class_names: tuple[str, ...] | list[str], palette: np.ndarray | None = None) -> np.ndarray:
    """RGB per class: the task's own ``palette`` when it has one; fixed colours for Pets; Cityscapes' official
    colours for its classes; else the bit-shift map (Pascal VOC's official colours for its 21 classes)."""
    if palette is not None:
        return np.asarray(palette, dtype=np.uint8).reshape(len(class_names), 3)
    if set(class_names) == set(PETS_COLOURS):
        return np.array([PETS_COLOURS[c] for c in class_names], dtype=np.uint8)
    from torchvision.datasets import Cityscapes

    by_name = {c.name: c.color for c in Cityscapes.classes}
    if set(class_names) <= set(by_name):
        return np.array([by_name[c] for c in class_names], dtype=np.uint8)
    return bit_shift_palette(len(class_names))


def _ignore_colour(palette: np.ndarray) -> tuple[int, int, int]:
    return VOID_COLOUR if (palette == IGNORE_COLOUR).all(axis=1).any() else IGNORE_COLOUR


def colorize(mask: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = palette
    lut[ignore_index] = _ignore_colour(palette)
    return lut[mask.astype(np.int64)]


def _legend(ax: plt.Axes | plt.Figure, class_names, palette: np.ndarray, present: set[int] | None = None,
            ignored: bool = False) -> None:
    """Class colours (only the ``present`` classes when given), and the ignore colour when ``ignored``."""
    handles = [Patch(facecolor=palette[i] / 255, edgecolor="black", linewidth=0.5, label=name)
               for i, name in enumerate(class_names) if present is None or i in present]
    if ignored:
        handles.append(Patch(facecolor=np.array(_ignore_colour(palette)) / 255, edgecolor="black", linewidth=0.5,
                             label="(ignored)"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False,
              ncol=-(-len(handles) // LEGEND_ROWS))


def _save(fig: plt.Figure, stem: Path, data: pd.DataFrame) -> Path:
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(stem.with_suffix(".png"), dpi=110, bbox_inches="tight")
    plt.close(fig)
    data.to_csv(stem.with_suffix(".csv"), index=False)
    return stem.with_suffix(".png")


def dataset_samples(images: np.ndarray, masks: np.ndarray, files: list[str], class_names, title: str,
                    stem: Path, palette: np.ndarray | None = None, ignore_index: int = 255) -> Path:
    """Images (N,H,W,3 uint8) beside their label masks (Figs 1-2); the legend names the classes shown."""
    palette = class_palette(class_names, palette)
    aspect = images.shape[1] / images.shape[2]
    fig, axes = plt.subplots(2, len(images), figsize=(2.6 * len(images), 2 * 2.6 * aspect + 0.9), squeeze=False)
    for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
        axes[0, k].imshow(image)
        axes[0, k].set_title(Path(files[k]).stem, fontsize=7)
        axes[1, k].imshow(colorize(mask, palette, ignore_index), interpolation="nearest")
    for ax in axes.flat:
        ax.axis("off")
    present = {int(v) for v in np.unique(masks) if v != ignore_index}
    _legend(axes[1, -1], class_names, palette, present, ignored=bool((masks == ignore_index).any()))
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


def top_classes(confusion: np.ndarray, top: int = CONFUSION_TOP) -> np.ndarray:
    """Indices of the (at most) ``top`` classes with the most ground-truth pixels (confusion rows), most frequent
    first; a class with none is never among them."""
    pixels = confusion.sum(axis=1)
    return np.argsort(-pixels, kind="stable")[: min(top, int((pixels > 0).sum()))]


def summarise_confusion(confusion: np.ndarray, class_names, top: int = CONFUSION_TOP) -> tuple[np.ndarray, list[str]]:
    """The confusion matrix of the ``top`` most frequent classes (``top_classes``) plus one "other" row and column
    that sums the rest, so each row still counts every pixel of its true class; unchanged (and in class order)
    up to ``top`` classes."""
    if len(class_names) <= top:
        return confusion, list(class_names)
    keep = top_classes(confusion, top)
    rest = np.setdiff1d(np.arange(len(class_names)), keep)
    rows = np.vstack([confusion[keep], confusion[rest].sum(axis=0, keepdims=True)])
    matrix = np.hstack([rows[:, keep], rows[:, rest].sum(axis=1, keepdims=True)])
    return matrix, [class_names[i] for i in keep] + [f"other ({len(rest)} classes)"]


def confusion_figure(confusion: np.ndarray, class_names, title: str, stem: Path, top: int = CONFUSION_TOP) -> Path:
    """Row-normalised confusion matrix (rows: true class) with class names (Figs 6, 8); beyond ``top`` classes,
    the ``top`` most frequent (by true pixels) and the rest summed as "other" (``summarise_confusion``)."""
    shown, names = summarise_confusion(confusion, list(class_names), top)
    rows = shown.sum(axis=1, keepdims=True)
    normalised = np.divide(shown, rows, out=np.zeros_like(shown, dtype=float), where=rows > 0)
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 3 else 0,
                  ha="right" if len(names) > 3 else "center")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if len(names) <= FEW_CLASSES:
        for (i, j), value in np.ndenumerate(normalised):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    if len(names) < len(class_names):
        shown_classes = len(names) - 1
        title += (f"\nthe {shown_classes} most frequent of {len(class_names)} classes (by true pixels), "
                  f"the other {len(class_names) - shown_classes} summed")
    ax.set_title(title)
    data = pd.DataFrame(normalised, index=names, columns=names).reset_index(names="true_class")
    return _save(fig, stem, data)


def per_class_iou_figure(per_class: pd.DataFrame, title: str, stem: Path) -> Path:
    """Per-class IoU as horizontal bars, best at the top (``analysis.score.per_class_frame``: columns class,
    pixels, frequency, iou, sorted); each label gives the class's share of labelled pixels. Classes without an
    IoU (neither in the targets nor predicted, common in a small split of a large label set) are counted in the
    title, not drawn; the CSV has every class."""
    shown = per_class[per_class["iou"].notna()]
    absent = len(per_class) - len(shown)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.17 * len(shown) + 1.3)))
    labels = [f"{row['class']} ({100 * row['frequency']:.2g} %)" for _, row in shown.iterrows()]
    positions = np.arange(len(shown))
    ax.barh(positions, shown["iou"], color="tab:blue", height=0.7)
    few = len(shown) <= 40
    if few:  # many values read from the grid (and report.md's table): fewer texts to draw
        for y, iou in zip(positions, shown["iou"], strict=True):
            ax.text(iou + 0.01, y, f"{iou:.2f}", va="center", fontsize=8)
    if len(shown):
        ax.axvline(shown["iou"].mean(), color="black", linestyle="--", linewidth=0.8,
                   label=f"mIoU {shown['iou'].mean():.3f}")
        ax.legend(fontsize=8, loc="lower right")  # where the sorted bars are shortest
    ax.set_yticks(positions, labels, fontsize=8 if few else 6)
    ax.set_ylim(len(shown) - 0.5, -0.5)
    ax.set_xlim(0, 1.1)
    ax.set_xticks(np.linspace(0, 1, 6 if few else 11))
    ax.set_xlabel("IoU (label: the class's share of labelled pixels)")
    ax.set_title(title + (f"\n{len(shown)} of {len(per_class)} classes; {absent} neither in the targets nor "
                          "predicted" if absent else ""))
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, stem, per_class)


def roc_figure(roc: dict[str, dict], title: str, stem: Path, palette: np.ndarray,
               averages: dict[str, dict] | None = None, worst: int = ROC_WORST) -> Path:
    """One-vs-rest ROC curves with their AUC (Figs 6, 8): every class up to ``FEW_CLASSES``; beyond, the macro
    and micro averages (``analysis.score.average_roc``) and the ``worst`` classes by AUC."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    rows = []

    def draw(name: str, curve: dict, **style) -> None:
        ax.plot(curve["fpr"], curve["tpr"], label=f"{name} (AUC {curve['auc']:.3f})", **style)
        rows.extend({"class": name, "fpr": f, "tpr": t, "auc": curve["auc"]}
                    for f, t in zip(curve["fpr"], curve["tpr"], strict=True))

    if len(roc) <= FEW_CLASSES or not averages:
        for k, (name, curve) in enumerate(roc.items()):
            if curve["auc"] is not None:
                draw(name, curve, color=palette[k] / 255 if palette[k].sum() < 700 else "grey")
    else:
        for name, style in (("macro", {"color": "navy", "linewidth": 2}),
                            ("micro", {"color": "deeppink", "linewidth": 2, "linestyle": ":"})):
            if averages.get(name, {}).get("auc") is not None:
                draw(f"{name} average", averages[name], **style)
        scored = sorted((curve["auc"], name) for name, curve in roc.items() if curve["auc"] is not None)
        for k, (_, name) in enumerate(scored[:worst]):
            draw(f"worst {k + 1}: {name}", roc[name], color=plt.get_cmap("tab10")(k + 1), linewidth=1)
        unscored = len(roc) - len(scored)
        title += f"\naverages over {len(scored)} classes" + (f" ({unscored} without AUC)" if unscored else "") + \
            f" and the {min(worst, len(scored))} worst"
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, stem, pd.DataFrame(rows, columns=["class", "fpr", "tpr", "auc"]))


def masks_figure(images: np.ndarray, targets: np.ndarray, preds: np.ndarray, files: list[str], class_names,
                 title: str, stem: Path, palette: np.ndarray | None = None, ignore_index: int = 255) -> Path:
    """Image, ground truth and prediction for a few test images (Figs 7, 9); the legend names the classes
    in either mask."""
    palette = class_palette(class_names, palette)
    fig, axes = plt.subplots(len(images), 3, figsize=(7.5, 2.5 * len(images)), squeeze=False)
    rows = []
    for k in range(len(images)):
        axes[k, 0].imshow(images[k])
        axes[k, 1].imshow(colorize(targets[k], palette, ignore_index), interpolation="nearest")
        axes[k, 2].imshow(colorize(preds[k], palette, ignore_index), interpolation="nearest")
        valid = targets[k] != ignore_index
        rows.append({"file": files[k],
                     "pixel_accuracy": float((preds[k] == targets[k])[valid].mean()) if valid.any() else None})
    for ax, name in zip(axes[0], ("image", "ground truth", "prediction"), strict=True):
        ax.set_title(name)
    for ax in axes.flat:
        ax.axis("off")
    present = {int(v) for v in np.union1d(np.unique(targets), np.unique(preds)) if v != ignore_index}
    # A few classes beside the first prediction, as always; many beside the whole figure.
    _legend(axes[0, 2] if len(present) <= 12 else fig, class_names, palette, present,
            ignored=bool((targets == ignore_index).any()))
    fig.suptitle(title)
    return _save(fig, stem, pd.DataFrame(rows))


MODEL_MARKERS = {"fcn_resnet50": "o", "segformer": "^"}


def hyperparameter_scatter(table: pd.DataFrame, stem: Path, keys: list[str]) -> Path:
    """Each of ``keys`` (the searched keys other than model and init) against best val mIoU, one panel each:
    colour = strategy (as everywhere), marker = model; a numeric key spanning a factor of 10 or more on a log
    axis, a key of other values (an image size, class weights) as categories."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys) + 0.8, 4.2), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, key in zip(axes, keys, strict=True):
        numeric = pd.api.types.is_numeric_dtype(table[key])
        values = table[key] if numeric else table[key].map(lambda v: "—" if v is None or v != v else str(v))
        for (model, strategy), group in table.assign(_x=values).groupby(["model", "strategy"]):
            ax.scatter(group["_x"], group["best_val_miou"], color=STRATEGY_COLOURS.get(strategy, "grey"),
                       marker=MODEL_MARKERS.get(model, "s"), s=50, label=f"{model_label(model)} / {strategy}",
                       edgecolors=["black" if s.startswith("stopped") else "none" for s in group["stop_reason"]])
        spread = table[key].dropna()
        if numeric and len(spread) and spread.min() > 0 and spread.max() >= 10 * spread.min():
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(key + (" (log)" if ax.get_xscale() == "log" else ""))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("best val mIoU")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
                    title="model / strategy\n(black edge: stopped early)")
    fig.suptitle("Searched hyperparameters against best validation mIoU")
    fig.tight_layout()
    columns = ["trial_id", "model", "init", "strategy", *keys, "best_val_miou", "stop_reason"]
    return _save(fig, stem, table[list(dict.fromkeys(columns))])


def asha_stops(table: pd.DataFrame, max_epochs: int, rungs: list[int], stem: Path) -> Path:
    """Epochs each trial reached, in the order the trials were created, with the scheduler's rungs."""
    table = in_creation_order(table).reset_index(drop=True)
    colours = [STRATEGY_COLOURS.get(s, "grey") for s in table["strategy"]]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(table) + 1.5))
    # The recorded fate (study.fates): a trial that neither completed nor was stopped by ASHA says how it ended.
    other = ~table["stop_reason"].isin(["completed", "stopped early (ASHA)"])
    labels = [f"{t} {model_label(m)} {s}" + (f" ({r})" if o else "")
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


def cost_figure(table: pd.DataFrame, stem: Path, cost: str = "flops", xlabel: str | None = None) -> Path:
    """Best val mIoU of every trained trial against a cost column of ``summary.csv`` (log x): ``flops`` (forward
    GFLOPs per image, ``study.summary.add_cost``) or a measured one such as ``latency_ms``; colour = strategy (as
    everywhere), marker = model; each model is labelled with its parameter count where known."""
    from analysis.load import model_label

    costed = table.dropna(subset=[cost, "best_val_miou"])
    scale = 1e9 if cost == "flops" else 1.0
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for (model, strategy), group in costed.groupby(["model", "strategy"]):
        ax.scatter(group[cost] / scale, group["best_val_miou"], color=STRATEGY_COLOURS.get(strategy, "grey"),
                   marker=MODEL_MARKERS.get(model, "s"), s=50, label=f"{model_label(model)} / {strategy}",
                   edgecolors=["black" if s.startswith("stopped") else "none" for s in group["stop_reason"]])
    for model, group in costed.groupby("model"):
        params = group["params"].iloc[0] if "params" in group else float("nan")
        ax.annotate(model_label(model) + ("" if params != params else f"\n{params / 1e6:.3g} M params"),
                    (group[cost].iloc[0] / scale, group["best_val_miou"].max()), textcoords="offset points",
                    xytext=(6, 6), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel or ("forward GFLOPs per image at the trial's image size (log)" if cost == "flops"
                             else f"{cost} (log)"))
    ax.set_ylabel("best val mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
              title="model / strategy\n(black edge: stopped early)")
    ax.set_title("Quality against cost")
    columns = ["trial_id", "model", "strategy", "params", "flops", cost, "best_val_miou", "stop_reason"]
    return _save(fig, stem, costed[[c for c in dict.fromkeys(columns) if c in costed.columns]])
