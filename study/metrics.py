"""Confusion-matrix segmentation metrics (mIoU, per-class IoU, pixel accuracy).

The state is a single ``num_classes x num_classes`` count matrix (rows: target,
columns: prediction), so merging across processes is a sum: DDP workers
``all_reduce`` it and every rank then computes the same mIoU.

Mean IoU convention: a class that appears neither in the targets nor in the
predictions has no union; its IoU is undefined (NaN in ``per_class_iou``) and it
is left out of the mean. A class that is present in one but not the other gets
IoU 0 and counts.
"""

from __future__ import annotations

import torch


class SegMetric:
    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.confusion.zero_()

    @torch.no_grad()
    def update(self, logits_or_pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: logits (N, C, H, W) or class indices (N, H, W); target (N, H, W).

        No host-device synchronisation on a GPU (no boolean indexing, no ``.item()``): ignored pixels
        are counted into a spare bin that is dropped, so the train loop never waits on the metric.
        """
        pred = logits_or_pred.argmax(dim=1) if logits_or_pred.dim() == target.dim() + 1 else logits_or_pred
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target {tuple(target.shape)}")
        n = self.num_classes
        target = target.to(torch.int64)
        keep = target != self.ignore_index
        outside = keep & ((target < 0) | (target >= n))
        if target.device.type == "cpu":
            if bool(outside.any()):
                raise ValueError(f"target holds a class outside 0..{n - 1} (and is not {self.ignore_index})")
        else:
            torch._assert_async(~outside.any(), f"target holds a class outside 0..{n - 1}")
        bins = torch.where(keep, target * n + pred.to(torch.int64), n * n).flatten()
        counts = torch.zeros(n * n + 1, dtype=torch.int64, device=bins.device)
        counts.index_add_(0, bins, torch.ones_like(bins))
        self.confusion += counts[: n * n].view(n, n).to(self.confusion.device)

    def merge(self, other: SegMetric) -> SegMetric:
        """Add another metric's counts (e.g. gathered from another process)."""
        self.confusion += other.confusion.to(self.confusion.device)
        return self

    def all_reduce(self) -> None:
        """Sum the confusion matrix over all torch.distributed ranks (no-op when not distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.confusion)

    def per_class_iou(self) -> torch.Tensor:
        """IoU per class as float64; NaN where the class is absent from targets and predictions."""
        cm = self.confusion.double()
        intersection = cm.diag()
        union = cm.sum(0) + cm.sum(1) - intersection
        return torch.where(union > 0, intersection / union.clamp(min=1), torch.full_like(union, float("nan")))

    def miou(self) -> float:
        iou = self.per_class_iou()
        present = ~iou.isnan()
        return float(iou[present].mean()) if present.any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = int(self.confusion.sum())
        return float(self.confusion.diag().sum()) / total if total else float("nan")

    def confusion_matrix(self) -> torch.Tensor:
        return self.confusion.clone()
