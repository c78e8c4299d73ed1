"""Score a checkpoint on a split: ``python -m analysis.evaluate --checkpoint best.pt --dataset pets --data-root R --split test --out DIR``.

Writes ``DIR/metrics.json`` with ``miou``, ``per_class_iou``, ``pixel_accuracy`` and
``confusion_matrix`` (rows: target class, columns: predicted class).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from segmodels import SegModel, build_model
from study.cli import OneLineParser, main_guard
from study.config import DATASETS, DEVICES, TrainConfig
from study.data import SegDataset, build_dataset
from study.errors import ConfigError
from study.io import load_checkpoint, write_json
from study.loop import evaluate, resolve_device
from study.metrics import SegMetric

log = logging.getLogger(__name__)


def load_model(checkpoint: dict[str, Any]) -> tuple[SegModel, TrainConfig]:
    """Rebuild the model a segstudy checkpoint was trained as, with its weights."""
    cfg = TrainConfig.from_dict(checkpoint["config"])
    model = build_model(cfg.model, len(checkpoint["class_names"]), "scratch", variant=cfg.variant)
    model.load_state_dict(checkpoint["model_state"])
    return model.eval(), cfg


def metrics_dict(metric: SegMetric, class_names: tuple[str, ...] | list[str], loss: float | None = None) -> dict[str, Any]:
    def clean(x: float) -> float | None:
        return None if math.isnan(x) else x

    iou = metric.per_class_iou().tolist()
    out = {
        "miou": clean(metric.miou()),
        "per_class_iou": {name: clean(v) for name, v in zip(class_names, iou)},
        "pixel_accuracy": clean(metric.pixel_accuracy()),
        "confusion_matrix": metric.confusion_matrix().tolist(),
        "class_names": list(class_names),
    }
    if loss is not None:
        out["loss"] = loss
    return out


def evaluate_checkpoint(checkpoint_path: str | Path, dataset: str, data_root: str | Path, split: str = "test",
                        device: str = "auto", batch_size: int = 64, cache_dir: str | None = None) -> tuple[dict[str, Any], SegModel, SegDataset]:
    checkpoint = load_checkpoint(checkpoint_path)
    model, cfg = load_model(checkpoint)
    data = build_dataset(dataset, split, data_root, cfg.image_size, cache_dir=cache_dir, augment=False)
    if data.num_classes != len(checkpoint["class_names"]):
        raise ConfigError(f"--dataset {dataset}: has {data.num_classes} classes but {checkpoint_path} was trained on "
                          f"{len(checkpoint['class_names'])} ({cfg.dataset})")
    dev = resolve_device(device)
    model.to(dev)
    metric, loss = evaluate(model, data.images.to(dev), data.masks.to(dev), data.num_classes, batch_size, data.ignore_index)
    result = metrics_dict(metric, data.class_names, loss)
    result.update({"checkpoint": str(checkpoint_path), "dataset": dataset, "split": split, "images": len(data),
                   "model": cfg.model, "init": cfg.init})
    return result, model, data


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m analysis.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a best.pt written by study.train or study.run")
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--out", required=True, help="folder for metrics.json")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: expected an integer >= 1, got {args.batch_size}")
    out = Path(args.out)
    if (out / "metrics.json").exists():
        raise ConfigError(f"--out {out}: already holds metrics.json; choose another --out")
    result, _, _ = evaluate_checkpoint(args.checkpoint, args.dataset, args.data_root, args.split, args.device,
                                       args.batch_size, args.cache_dir)
    write_json(out / "metrics.json", result)
    log.info("%s %s: mIoU %.4f, pixel accuracy %.4f -> %s", args.dataset, args.split, result["miou"] or float("nan"),
             result["pixel_accuracy"] or float("nan"), out / "metrics.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_guard("analysis.evaluate", main))
