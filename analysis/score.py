"""Score a checkpoint on a split.

    python -m analysis.score --checkpoint best.pt --dataset pets --data-root R --split test --out DIR

Writes ``DIR/metrics.json`` with ``miou``, ``per_class_iou``, ``pixel_accuracy``,
``confusion_matrix`` (rows: target class, columns: predicted class) and ``auc`` (one-vs-rest,
from softmax probabilities), and the test figures: row-normalised confusion matrix, ROC
curves, and predicted masks beside image and ground truth.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import auc as area_under
from sklearn.metrics import roc_curve

from segmodels import SegModel, build_model
from study.cli import OneLineParser, main_guard
from study.config import DATASETS, DEVICES, SPLITS, TrainConfig
from study.data import SegDataset, build_dataset
from study.data.transforms import denormalize, normalize
from study.errors import ConfigError
from study.io import load_checkpoint, write_json
from study.loop import evaluate, resolve_device
from study.metrics import SegMetric

log = logging.getLogger(__name__)

MAX_ROC_PIXELS = 300_000  # ROC curves use a seeded random subsample of labelled pixels beyond this
MASK_EXAMPLES = 4


def load_model(checkpoint: dict[str, Any]) -> tuple[SegModel, TrainConfig]:
    """Rebuild the model a segstudy checkpoint was trained as, with its weights."""
    cfg = TrainConfig.from_dict(checkpoint["config"])
    model = build_model(cfg.model, len(checkpoint["class_names"]), "scratch", variant=cfg.variant)
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


class _Collector:
    """Keeps softmax probabilities of a seeded pixel subsample and the predictions of a few images."""

    def __init__(self, keep_fraction: float, example_indices: set[int], seed: int = 0) -> None:
        self.keep_fraction = keep_fraction
        self.examples = example_indices
        self.rng = torch.Generator().manual_seed(seed)
        self.probabilities: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.predictions: dict[int, np.ndarray] = {}

    def __call__(self, indices: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        probabilities = logits.softmax(dim=1).permute(0, 2, 3, 1)
        labelled = targets != 255
        pixels, labels = probabilities[labelled].cpu(), targets[labelled].cpu()
        if self.keep_fraction < 1:
            keep = torch.rand(len(labels), generator=self.rng) < self.keep_fraction
            pixels, labels = pixels[keep], labels[keep]
        self.probabilities.append(pixels)
        self.targets.append(labels)
        for row, index in enumerate(indices.tolist()):
            if index in self.examples:
                self.predictions[index] = logits[row].argmax(0).cpu().numpy().astype(np.uint8)


def score_checkpoint(checkpoint_path: str | Path, dataset: str, data_root: str | Path, split: str = "test",
                        device: str = "auto", batch_size: int = 64, cache_dir: str | None = None,
                        figures: Path | None = None, title: str = "") -> dict[str, Any]:
    """Metrics (and, with ``figures``, the test figures) of a checkpoint on a split."""
    checkpoint = load_checkpoint(checkpoint_path)
    model, cfg = load_model(checkpoint)
    data = build_dataset(dataset, split, data_root, cfg.image_size, cache_dir=cache_dir)
    if data.num_classes != len(checkpoint["class_names"]):
        raise ConfigError(f"--dataset {dataset}: has {data.num_classes} classes but {checkpoint_path} was trained on "
                          f"{len(checkpoint['class_names'])} ({cfg.dataset})")
    dev = resolve_device(device)
    model.to(dev)
    labelled = int((data.masks != data.ignore_index).sum())
    examples = sorted(np.random.default_rng(0).choice(len(data), size=min(MASK_EXAMPLES, len(data)),
                                                      replace=False).tolist())
    collect = _Collector(min(1.0, MAX_ROC_PIXELS / max(labelled, 1)), set(examples))
    metric, loss = evaluate(model, data.images.to(dev), data.masks.to(dev), data.num_classes, batch_size,
                            data.ignore_index, on_batch=collect)
    probabilities = torch.cat(collect.probabilities).numpy()
    targets = torch.cat(collect.targets).numpy()
    roc = roc_curves(probabilities, targets, data.class_names)
    result = metrics_dict(metric, data.class_names, loss)
    result.update({"auc": {name: curve["auc"] for name, curve in roc.items()}, "roc_pixels": int(len(targets)),
                   "checkpoint": str(checkpoint_path), "dataset": dataset, "split": split, "images": len(data),
                   "model": cfg.model, "init": cfg.init, "lr": cfg.lr, "gamma": cfg.gamma})
    if figures is not None:
        write_test_figures(result, roc, data, examples, collect.predictions, figures,
                           title or f"{cfg.model} {cfg.init}")
    return result


def write_test_figures(result: dict, roc: dict, data: SegDataset, examples: list[int],
                       predictions: dict[int, np.ndarray], out: Path, title: str) -> list[Path]:
    from analysis import figures as fig

    confusion = np.array(result["confusion_matrix"])
    images = (denormalize(normalize(data.images[examples])).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    return [
        fig.confusion_figure(confusion, data.class_names, f"{title}: confusion matrix ({data.split})",
                             out / "confusion_matrix"),
        fig.roc_figure(roc, f"{title}: ROC one-vs-rest ({data.split})", out / "roc",
                       fig.class_palette(data.class_names)),
        fig.masks_figure(images, data.masks[examples].numpy(), np.stack([predictions[i] for i in examples]),
                         [data.files[i] for i in examples], data.class_names,
                         f"{title}: predicted masks ({data.split})", out / "predicted_masks"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m analysis.score", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a best.pt (study.run_trial) or checkpoint.pt (study.run)")
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--out", required=True, help="folder for metrics.json and the figures")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args(argv)
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
    raise SystemExit(main_guard("analysis.score", main))
