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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import auc as area_under
from sklearn.metrics import roc_curve
from torchvision.transforms.v2 import functional as TF

from foundation.errors import ConfigError
from foundation.files import check_new_folder
from foundation.io import load_checkpoint, write_json
from segmodels import SegModel, build_model
from study.cli import OneLineParser, add_option, exit_cli, path_type
from study.config import DATASETS, DEVICES, SPLITS, TrainConfig
from study.data import Labels, SegDataset, build_dataset
from study.data.formats import open_source
from study.data.transforms import denormalize, normalize
from study.inference import resize_logits
from study.loop import evaluate, inference_options, resolve_device
from study.metrics import SegMetric
from study.options import declaration
from study.task import load_task
from study.trial import split_layouts

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
    """Keeps softmax probabilities of a seeded pixel subsample (``keep_fraction`` of the labelled pixels, or about
    ``per_image`` of each image's when given) and the predictions of a few images.

    The subsample is drawn before the softmax and before anything leaves the device, so a batch costs
    memory for its kept pixels only, at any number of classes.
    """

    def __init__(self, keep_fraction: float, example_indices: set[int], seed: int = 0,
                 ignore_index: int = 255, per_image: float | None = None) -> None:
        self.keep_fraction = keep_fraction
        self.per_image = per_image
        self.ignore_index = ignore_index
        self.examples = example_indices
        self.rng = torch.Generator().manual_seed(seed)
        self.probabilities: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.predictions: dict[int, np.ndarray] = {}

    def __call__(self, indices: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        keep = targets != self.ignore_index
        fraction = self.keep_fraction
        if self.per_image is not None:  # labels of sizes not known beforehand: a bounded sample of each batch
            fraction = self.per_image * len(indices) / max(int(keep.sum()), 1)
        if fraction < 1:
            keep &= (torch.rand(targets.shape, generator=self.rng) < fraction).to(targets.device)
        self.probabilities.append(logits.permute(0, 2, 3, 1)[keep].softmax(dim=1).cpu())
        self.targets.append(targets[keep].cpu())
        for row, index in enumerate(indices.tolist()):
            if index in self.examples:
                self.predictions[index] = logits[row].argmax(0).cpu().numpy().astype(np.uint8)


def score_checkpoint(checkpoint_path: str | Path, dataset: str, data_root: str | Path, split: str = "test",
                     device: str = "auto", batch_size: int = 64, cache_dir: str | None = None,
                     figures: Path | None = None, title: str = "", eval_at: str | None = None,
                     inference: dict[str, Any] | None = None,
                     save_predictions: str | Path | None = None) -> dict[str, Any]:
    """Metrics (and, with ``figures``, the test figures) of a checkpoint on a split.

    Scored as the loop validates (``study.loop.evaluate``), on the split cached as the checkpoint's recipe stores
    its val split (``study.trial.split_layouts``: at its test scale). ``eval_at``: ``input`` scores against the
    cached labels at that scale; ``original`` against each label at its original resolution, the logits resized
    to its size (``study.inference``); None: the checkpoint's own ``eval_at``. ``inference``:
    ``study.inference.infer``'s keywords (``mode``, ``window``, ``stride``; None: the checkpoint's own).
    ``save_predictions``: a folder for each image's predicted mask, an indexed PNG at its label's size named by
    the image's stem.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    model, cfg = load_model(checkpoint)
    eval_at = cfg.eval_at if eval_at is None else eval_at
    inference = inference_options(cfg) if inference is None else inference
    layout = split_layouts(cfg.replace(eval_at=eval_at))[1]
    data = build_dataset(dataset, split, data_root, cfg.image_size, cache_dir=cache_dir, labels=Labels.of(cfg),
                         layout=layout)
    if data.num_classes != len(checkpoint["class_names"]):
        raise ConfigError(f"--dataset {dataset}: has {data.num_classes} classes but {checkpoint_path} was trained on "
                          f"{len(checkpoint['class_names'])} ({cfg.dataset})")
    dev = resolve_device(device)
    model.to(dev)
    examples = sorted(np.random.default_rng(0).choice(len(data), size=min(MASK_EXAMPLES, len(data)),
                                                      replace=False).tolist())
    budget = min(MAX_ROC_PIXELS, MAX_ROC_VALUES // data.num_classes)
    labelled = int((data.masks != data.ignore_index).sum())
    collect = _Collector(min(1.0, budget / max(labelled, 1)), set(examples), ignore_index=data.ignore_index,
                         per_image=budget / len(data) if eval_at == "original" else None)
    hooks = [collect] if save_predictions is None else [collect, PredictionWriter(save_predictions, data)]
    on_batch = lambda idx, logits, y: [hook(idx, logits, y) for hook in hooks]  # noqa: E731
    metric, loss = evaluate(model, data.images.to(dev), data.masks.to(dev), data.num_classes, batch_size,
                            data.ignore_index, on_batch=on_batch, valid=data.valid, originals=data.originals,
                            **inference)
    probabilities = torch.cat(collect.probabilities).numpy()
    targets = torch.cat(collect.targets).numpy()
    roc = roc_curves(probabilities, targets, data.class_names)
    averages = average_roc(probabilities, targets, roc)
    result = metrics_dict(metric, data.class_names, loss)
    result.update({"auc": {name: curve["auc"] for name, curve in roc.items()}, "roc_pixels": int(len(targets)),
                   "auc_macro": averages["macro"]["auc"], "auc_micro": averages["micro"]["auc"],
                   "checkpoint": str(checkpoint_path), "dataset": dataset, "split": split, "images": len(data),
                   "model": cfg.model, "init": cfg.init, "lr": cfg.lr, "gamma": cfg.gamma, "eval_at": eval_at})
    if figures is not None:  # the figure shows each example at the cached size beside its cached label
        shown = {i: fit_mask(collect.predictions[i], tuple(data.masks.shape[-2:])) for i in examples}
        write_test_figures(result, roc, data, examples, shown, figures, title or f"{cfg.model} {cfg.init}", averages)
    return result


def original_pairs(dataset: str, split: str, data_root: str | Path,
                   labels: Labels) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each (uint8 image 3xHxW, class-index label HxW) of a split as it is on disk, in the cache's order."""
    source = open_source(dataset, split, data_root, labels=labels)
    for k, index in enumerate(source.indices):
        image, label = source.dataset[index]
        classes = source.label_to_class(np.asarray(label), source.label_files[k])
        yield TF.pil_to_tensor(image.convert("RGB")), torch.from_numpy(np.ascontiguousarray(classes))


def fit_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A class-index mask resized (nearest, pixel centres) to ``size``; as it is when it fits."""
    if mask.shape == size:
        return mask
    resized = TF.resize(torch.from_numpy(mask)[None], list(size), TF.InterpolationMode.NEAREST_EXACT)
    return resized[0].numpy()


class PredictionWriter:
    """Writes each image's predicted mask as an indexed (mode P) PNG named by the image's stem, at its label's size
    (the label as it is on disk, the same size as its image: the logits it is given, at whatever scale the recipe
    scored, are first resized to it, bilinear as ``study.inference`` resizes them for scoring), in the task's
    palette: class k is pixel value k, as in a label file."""

    def __init__(self, folder: str | Path, data: SegDataset) -> None:
        from analysis.figures import class_palette

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stems = [Path(f).stem for f in data.files]
        # the labels' sizes: kept with them at eval_at original, else their images' (read from the file headers)
        self.sizes = data.originals.shapes if data.originals is not None else [label_size(f) for f in data.files]
        palette = class_palette(data.class_names).reshape(-1)
        self.palette = [*palette.tolist(), *[0] * (768 - len(palette))]

    def __call__(self, indices: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        for row, index in enumerate(indices.tolist()):
            mask = resize_logits(logits[row:row + 1].float(), self.sizes[index]).argmax(1)[0]
            image = Image.fromarray(mask.to(torch.uint8).cpu().numpy(), mode="P")
            image.putpalette(self.palette)
            image.save(self.folder / f"{self.stems[index]}.png")


def label_size(image_file: str | Path) -> tuple[int, int]:
    """(height, width) of an image file as it is on disk, from its header (its label's: the cache checks the two
    are the same size)."""
    with Image.open(image_file) as image:
        return image.height, image.width


def write_test_figures(result: dict, roc: dict, data: SegDataset, examples: list[int],
                       predictions: dict[int, np.ndarray], out: Path, title: str,
                       averages: dict[str, dict] | None = None) -> list[Path]:
    """Confusion matrix, ROC, per-class IoU and predicted masks, in the task's class names and palette
    (a dataset may carry its task's ``palette``, K x 3; else ``analysis.figures.class_palette``'s)."""
    from analysis import figures as fig

    confusion = np.array(result["confusion_matrix"])
    images = (denormalize(normalize(data.images[examples])).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    palette = fig.class_palette(data.class_names)
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


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m analysis.score", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=path_type,
                        help="a best.pt (study.run_trial) or checkpoint.pt (study.run)")
    parser.add_argument("--task", metavar="FILE.yaml", type=path_type,
                        help="the task file naming the dataset and its root")
    parser.add_argument("--dataset", choices=DATASETS, help="dataset format (or --task)")
    parser.add_argument("--data-root", type=path_type, help="the dataset's root (or --task)")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--out", required=True, type=path_type, help="folder for metrics.json and the figures")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    add_option(parser, declaration(TrainConfig, "cache_dir"))
    parser.add_argument("--no-figures", action="store_true")
    add_option(parser, declaration(TrainConfig, "eval_at"), shown="the checkpoint's")
    parser.add_argument("--save-predictions", metavar="DIR", type=path_type,
                        help="write each image's predicted mask into this new (or empty) folder (indexed PNG, the "
                             "image's stem, its label's size)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    task = load_task(args.task) if args.task else {}
    args.dataset, args.data_root = args.dataset or task.get("dataset"), args.data_root or task.get("data_root")
    if not (args.dataset and args.data_root):
        parser.error("--dataset and --data-root (or a --task file naming them) are required")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: expected an integer >= 1, got {args.batch_size}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; expected a folder")
    if (out / "metrics.json").exists():
        raise ConfigError(f"--out {out}: already holds metrics.json; choose another --out")
    if args.save_predictions:
        check_new_folder(args.save_predictions, "--save-predictions")
    result = score_checkpoint(args.checkpoint, args.dataset, args.data_root, args.split, args.device,
                              args.batch_size, args.cache_dir, figures=None if args.no_figures else out,
                              eval_at=args.eval_at, save_predictions=args.save_predictions)
    write_json(out / "metrics.json", result)
    log.info("%s %s: mIoU %.4f, pixel accuracy %.4f -> %s", args.dataset, args.split, result["miou"] or float("nan"),
             result["pixel_accuracy"] or float("nan"), out / "metrics.json")
    return 0


if __name__ == "__main__":
    exit_cli("analysis.score", main)
