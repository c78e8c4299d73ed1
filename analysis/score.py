"""Score a checkpoint on a split.

    python -m analysis.score --checkpoint best.pt --dataset pets --data-root R --split test --out DIR

Writes ``DIR/metrics.json`` with ``miou``, ``per_class_iou``, ``pixel_accuracy``,
``confusion_matrix`` (rows: target class, columns: predicted class), ``auc`` (one-vs-rest,
from softmax probabilities) and its macro and micro averages, and the test figures:
row-normalised confusion matrix, ROC curves, per-class IoU and predicted masks beside image
and ground truth, each readable at 150 classes (``analysis.figures``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import auc as area_under
from sklearn.metrics import roc_curve

from segmodels import SegModel, build_model
from study.cli import OneLineParser, exit_cli
from study.config import DATASETS, DEVICES, SPLITS, TrainConfig
from study.data import Labels, SegDataset, build_dataset
from study.data.transforms import denormalize, normalize
from study.errors import ConfigError
from study.io import load_checkpoint, write_json
from study.loop import evaluate, resolve_device
from study.metrics import SegMetric
from study.task import load_task

log = logging.getLogger(__name__)

MAX_ROC_PIXELS = 300_000  # ROC curves use a seeded random subsample of labelled pixels beyond this
MAX_ROC_VALUES = 24_000_000  # ... and of at most this many probabilities (96 MB of float32: 160k pixels at K=150)
MAX_MICRO_VALUES = 2_000_000  # the micro-average ROC pools (pixel, class) pairs of a subsample of that size
ROC_GRID = np.linspace(0, 1, 501)  # the false positive rates the macro-average curve is given at
MASK_EXAMPLES = 4


def load_model(checkpoint: dict[str, Any]) -> tuple[SegModel, TrainConfig]:
    """Rebuild the model a segstudy checkpoint was trained as, with its weights."""
    cfg = TrainConfig.from_dict(checkpoint["config"])
    model = build_model(cfg.model, len(checkpoint["class_names"]), "scratch", variant=cfg.variant,
                        class_names=checkpoint["class_names"])
    model.load_state_dict(checkpoint["model_state"])
    return model.eval(), cfg


def _clean(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def metrics_dict(metric: SegMetric, class_names: tuple[str, ...] | list[str],
                 loss: float | None = None) -> dict[str, Any]:
    iou = metric.per_class_iou().tolist()
    out = {
        "miou": _clean(metric.miou()),
        "per_class_iou": {name: _clean(v) for name, v in zip(class_names, iou, strict=True)},
        "pixel_accuracy": _clean(metric.pixel_accuracy()),
        "confusion_matrix": metric.confusion_matrix().tolist(),
        "class_names": list(class_names),
    }
    if loss is not None:
        out["loss"] = loss
    return out


def per_class_frame(result: dict[str, Any]) -> pd.DataFrame:
    """A metrics dict's classes with their ground-truth pixels, share of labelled pixels and IoU, best IoU
    first (classes without an IoU, absent from targets and predictions, last)."""
    names = result["class_names"]
    pixels = np.asarray(result["confusion_matrix"], dtype=np.int64).sum(axis=1)
    iou = np.array([np.nan if result["per_class_iou"][n] is None else result["per_class_iou"][n] for n in names],
                   dtype=float)
    frame = pd.DataFrame({"class": names, "pixels": pixels, "frequency": pixels / max(int(pixels.sum()), 1),
                          "iou": iou})
    return frame.sort_values("iou", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def roc_curves(probabilities: np.ndarray, targets: np.ndarray, class_names) -> dict[str, dict]:
    """One-vs-rest ROC per class; AUC is None for a class with no positive (or no negative) pixel."""
    curves = {}
    for k, name in enumerate(class_names):
        positive = targets == k
        if positive.all() or not positive.any():
            curves[name] = {"fpr": [], "tpr": [], "auc": None}
            continue
        fpr, tpr, _ = roc_curve(positive, probabilities[:, k])
        curves[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(area_under(fpr, tpr))}
    return curves


def average_roc(probabilities: np.ndarray, targets: np.ndarray, curves: dict[str, dict],
                max_values: int = MAX_MICRO_VALUES, seed: int = 0) -> dict[str, dict]:
    """Macro and micro averages of the one-vs-rest curves (as scikit-learn defines them).

    Both use only the classes with an AUC (present in the split): the many absent classes of a large
    label set would otherwise add easy negatives to the micro average. macro: those classes weigh the same;
    the curve is their mean TPR on ``ROC_GRID``, the AUC the mean of their AUCs. micro: every (pixel, class)
    pair pooled, so frequent classes weigh more; on a seeded subsample of at most ``max_values`` pairs, which
    bounds its memory at any number of classes.
    """
    columns = [k for k, c in enumerate(curves.values()) if c["auc"] is not None]
    scored = [c for c in curves.values() if c["auc"] is not None]
    macro = {"fpr": [], "tpr": [], "auc": None}
    micro = {"fpr": [], "tpr": [], "auc": None}
    if scored:
        tpr = np.mean([np.interp(ROC_GRID, c["fpr"], c["tpr"]) for c in scored], axis=0)
        macro = {"fpr": ROC_GRID.tolist(), "tpr": tpr.tolist(), "auc": float(np.mean([c["auc"] for c in scored]))}
        keep = min(len(targets), max(1, max_values // len(columns)))
        rows = np.sort(np.random.default_rng(seed).choice(len(targets), keep, replace=False))
        positive = targets[rows, None] == np.array(columns)
        fpr, tpr, _ = roc_curve(positive.ravel(), probabilities[np.ix_(rows, columns)].ravel())
        micro = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(area_under(fpr, tpr)), "pixels": int(keep)}
    return {"macro": macro, "micro": micro}


class _Collector:
    """Keeps softmax probabilities of a seeded pixel subsample and the predictions of a few images.

    The subsample is drawn before the softmax and before anything leaves the device, so a batch costs
    memory for its kept pixels only, at any number of classes.
    """

    def __init__(self, keep_fraction: float, example_indices: set[int], seed: int = 0,
                 ignore_index: int = 255) -> None:
        self.keep_fraction = keep_fraction
        self.ignore_index = ignore_index
        self.examples = example_indices
        self.rng = torch.Generator().manual_seed(seed)
        self.probabilities: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.predictions: dict[int, np.ndarray] = {}

    def __call__(self, indices: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        keep = targets != self.ignore_index
        if self.keep_fraction < 1:
            keep &= (torch.rand(targets.shape, generator=self.rng) < self.keep_fraction).to(targets.device)
        self.probabilities.append(logits.permute(0, 2, 3, 1)[keep].softmax(dim=1).cpu())
        self.targets.append(targets[keep].cpu())
        for row, index in enumerate(indices.tolist()):
            if index in self.examples:
                self.predictions[index] = logits[row].argmax(0).cpu().numpy().astype(np.uint8)


def score_checkpoint(checkpoint_path: str | Path, dataset: str, data_root: str | Path, split: str = "test",
                        device: str = "auto", batch_size: int = 64, cache_dir: str | None = None,
                        figures: Path | None = None, title: str = "") -> dict[str, Any]:
    """Metrics (and, with ``figures``, the test figures) of a checkpoint on a split."""
    checkpoint = load_checkpoint(checkpoint_path)
    model, cfg = load_model(checkpoint)
    data = build_dataset(dataset, split, data_root, cfg.image_size, cache_dir=cache_dir, labels=Labels.of(cfg))
    if data.num_classes != len(checkpoint["class_names"]):
        raise ConfigError(f"--dataset {dataset}: has {data.num_classes} classes but {checkpoint_path} was trained on "
                          f"{len(checkpoint['class_names'])} ({cfg.dataset})")
    dev = resolve_device(device)
    model.to(dev)
    labelled = int((data.masks != data.ignore_index).sum())
    examples = sorted(np.random.default_rng(0).choice(len(data), size=min(MASK_EXAMPLES, len(data)),
                                                      replace=False).tolist())
    budget = min(MAX_ROC_PIXELS, MAX_ROC_VALUES // data.num_classes)
    collect = _Collector(min(1.0, budget / max(labelled, 1)), set(examples), ignore_index=data.ignore_index)
    metric, loss = evaluate(model, data.images.to(dev), data.masks.to(dev), data.num_classes, batch_size,
                            data.ignore_index, on_batch=collect)
    probabilities = torch.cat(collect.probabilities).numpy()
    targets = torch.cat(collect.targets).numpy()
    roc = roc_curves(probabilities, targets, data.class_names)
    averages = average_roc(probabilities, targets, roc)
    result = metrics_dict(metric, data.class_names, loss)
    result.update({"auc": {name: curve["auc"] for name, curve in roc.items()}, "roc_pixels": int(len(targets)),
                   "auc_macro": averages["macro"]["auc"], "auc_micro": averages["micro"]["auc"],
                   "checkpoint": str(checkpoint_path), "dataset": dataset, "split": split, "images": len(data),
                   "model": cfg.model, "init": cfg.init, "lr": cfg.lr, "gamma": cfg.gamma})
    if figures is not None:
        write_test_figures(result, roc, data, examples, collect.predictions, figures,
                           title or f"{cfg.model} {cfg.init}", averages)
    return result


def write_test_figures(result: dict, roc: dict, data: SegDataset, examples: list[int],
                       predictions: dict[int, np.ndarray], out: Path, title: str,
                       averages: dict[str, dict] | None = None) -> list[Path]:
    """Confusion matrix, ROC, per-class IoU and predicted masks, in the task's class names and palette
    (a dataset may carry its task's ``palette``, K x 3; else ``analysis.figures.class_palette``'s)."""
    from analysis import figures as fig

    confusion = np.array(result["confusion_matrix"])
    images = (denormalize(normalize(data.images[examples])).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    palette = fig.class_palette(data.class_names, getattr(data, "palette", None))
    return [
        fig.confusion_figure(confusion, data.class_names, f"{title}: confusion matrix ({data.split})",
                             out / "confusion_matrix"),
        fig.roc_figure(roc, f"{title}: ROC one-vs-rest ({data.split})", out / "roc", palette, averages),
        fig.per_class_iou_figure(per_class_frame(result), f"{title}: IoU per class ({data.split})",
                                 out / "per_class_iou"),
        fig.masks_figure(images, data.masks[examples].numpy(), np.stack([predictions[i] for i in examples]),
                         [data.files[i] for i in examples], data.class_names,
                         f"{title}: predicted masks ({data.split})", out / "predicted_masks", palette,
                         data.ignore_index),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m analysis.score", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a best.pt (study.run_trial) or checkpoint.pt (study.run)")
    parser.add_argument("--task", metavar="FILE.yaml", help="the task file naming the dataset and its root")
    parser.add_argument("--dataset", choices=DATASETS, help="dataset format (or --task)")
    parser.add_argument("--data-root", help="the dataset's root (or --task)")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--out", required=True, help="folder for metrics.json and the figures")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args(argv)
    task = load_task(args.task) if args.task else {}
    args.dataset, args.data_root = args.dataset or task.get("dataset"), args.data_root or task.get("data_root")
    if not (args.dataset and args.data_root):
        parser.error("--dataset and --data-root (or a --task file naming them) are required")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: expected an integer >= 1, got {args.batch_size}")
    out = Path(args.out)
    if (out / "metrics.json").exists():
        raise ConfigError(f"--out {out}: already holds metrics.json; choose another --out")
    result = score_checkpoint(args.checkpoint, args.dataset, args.data_root, args.split, args.device,
                                 args.batch_size, args.cache_dir, figures=None if args.no_figures else out)
    write_json(out / "metrics.json", result)
    log.info("%s %s: mIoU %.4f, pixel accuracy %.4f -> %s", args.dataset, args.split, result["miou"] or float("nan"),
             result["pixel_accuracy"] or float("nan"), out / "metrics.json")
    return 0


if __name__ == "__main__":
    exit_cli("analysis.score", main)
