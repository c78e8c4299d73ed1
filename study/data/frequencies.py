"""Class pixel frequencies of a split, and the class weights derived from the train split's.

The counts are taken once, when the decode cache is built (``study.data.cache``). The weights weight the
training loss only, never the metric: ``inverse_frequency`` is N / (K * n_c), scikit-learn's "balanced";
``median_frequency`` is median(f) / f_c over the classes that occur (Eigen & Fergus, 2015, with f over all
pixels of the split). A class with no pixel gets weight 0: it never occurs as a target, so it changes nothing.
"""

from __future__ import annotations

from typing import Any

import torch

from foundation.errors import ConfigError


def class_weights(spec: str | list[float], class_pixels: torch.Tensor) -> torch.Tensor | None:
    """The loss weights (float32, K) for ``spec`` given the train split's pixels per class; None for ``none``."""
    num_classes = len(class_pixels)
    if isinstance(spec, (list, tuple)):
        if len(spec) != num_classes:
            raise ConfigError(f"--class-weights: {len(spec)} weights given for {num_classes} classes")
        return torch.tensor([float(w) for w in spec], dtype=torch.float32)
    if spec == "none":
        return None
    counts = class_pixels.double()
    present = counts > 0
    frequency = counts / counts.sum().clamp(min=1)
    weights = torch.zeros(num_classes, dtype=torch.float64)
    if spec == "inverse_frequency":
        weights[present] = counts.sum() / (num_classes * counts[present])
    elif spec == "median_frequency":
        weights[present] = frequency[present].median() / frequency[present]
    else:
        raise ConfigError(f"--class-weights: expected none, inverse_frequency, median_frequency or a list, "
                          f"got {spec!r}")
    return weights.float()


def frequency_rows(class_names: tuple[str, ...], splits: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """One row per class: its pixels and share of the labelled pixels in each split (``splits``: name -> counts)."""
    rows = []
    totals = {name: max(int(counts.sum()), 1) for name, counts in splits.items()}
    for k, class_name in enumerate(class_names):
        row: dict[str, Any] = {"class": class_name}
        for split, counts in splits.items():
            row[f"{split}_pixels"] = int(counts[k])
            row[f"{split}_share"] = round(int(counts[k]) / totals[split], 6)
        rows.append(row)
    return rows
