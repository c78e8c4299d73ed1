"""The named recipes: each a set of option defaults, registered once here and overridable key by key (a task file's
``recipe:``, ``--recipe``). A recipe's values fill every recipe option that no layer gives (``apply_recipe``).

- ``report``: the report's course recipe: images resized to ``image_size``, a flip, AdamW with ExponentialLR per
  epoch, mIoU on labels resized to the input. Its values are the declared defaults.
- ``standard``: MMSegmentation's SegFormer recipe (``configs/_base_/datasets/ade20k.py`` with
  ``segformer_mit-b0_8xb2-160k_ade20k-512x512.py``) scaled to the task's crop (``image_size``): random rescale to
  a ``(4 x crop, crop)`` scale with ratios 0.5..2, a crop with ``cat_max_ratio`` 0.75, flip, photometric
  distortion; AdamW lr 6e-5, weight decay 0.01, head lr x10, no decay on norms; linear warmup (1,500 of 160k
  iterations, about 1 %) then poly with power 1; mIoU on the labels at their own size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _standard(image_size: tuple[int, int]) -> dict[str, Any]:
    return {"base_size": (4 * max(image_size), min(image_size)), "ratio_range": (0.5, 2.0), "cat_max_ratio": 0.75,
            "photometric": True, "lr": 6e-5, "weight_decay": 0.01, "head_lr_mult": 10.0, "norm_decay_mult": 0.0,
            "schedule": "poly", "warmup": 0.01, "poly_power": 1.0, "eval_at": "original"}


RECIPES: dict[str, Callable[[tuple[int, int]], dict[str, Any]]] = {"report": lambda image_size: {},
                                                                    "standard": _standard}


def apply_recipe(given: dict[str, Any], image_size: tuple[int, int]) -> dict[str, Any]:
    """``given`` (the options some layer gave, by field name) over its recipe's values at ``image_size``."""
    return {**RECIPES[given.get("recipe", "report")](image_size), **given}
