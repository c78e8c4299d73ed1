"""Inference for evaluation, MMSegmentation's way: the image resized to a test scale (keeping its aspect ratio),
whole or in overlapping sliding windows, and the logits resized (bilinear) to each label's own size before the
confusion matrix is updated, so a score is computed on the labels as they are.

- ``infer(model, images, out_size, test_scale, mode, window, stride)``: logits at ``out_size``. With
  ``test_scale`` None, mode ``whole`` and ``out_size`` the input's size it is exactly ``model(images)``.
- ``slide_logits``: MMSegmentation's ``slide_inference``: windows of ``window`` every ``stride`` (the last one
  moved back inside the image), each window's logits added into place, divided by how many windows saw a pixel.
- ``padded_logits``: for a batch of images padded to one size (``study.data.cache``'s layouts), each image's
  logits from its own valid region at its own label's size; the loop's validation and ``analysis.score`` use it.
- ``evaluate_images``: the metric (``study.metrics.SegMetric``) and mean loss over (image, label) pairs of any
  sizes, e.g. a split read at its original resolution.

``model`` is any callable from a normalised (N, 3, H, W) batch to logits (N, K, H, W) at that size, as a
``segmodels.SegModel`` is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from study.data.transforms import normalize
from study.metrics import SegMetric
from study.recipe_checks import check_inference, rescale_size

Model = Callable[[torch.Tensor], torch.Tensor]


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (``align_corners=False``, as MMSegmentation's ``resize``) to ``size``; unchanged when it fits."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Where each window begins along one side (MMSegmentation's grid: the last window ends at the border)."""
    grids = max(length - window + stride - 1, 0) // stride + 1
    return [max(min(k * stride + window, length) - window, 0) for k in range(grids)]


def slide_logits(model: Model, images: torch.Tensor, window: tuple[int, int], stride: tuple[int, int],
                 batch_size: int = 16) -> torch.Tensor:
    """Logits at the images' size from overlapping windows, averaged where they overlap. The windows (all the
    same size, the image's where it is smaller than ``window``) go through the model ``batch_size`` at a time."""
    check_inference("slide", window, stride)
    n, _, height, width = images.shape
    wh, ww = min(window[0], height), min(window[1], width)
    boxes = [(y, x) for y in window_starts(height, wh, stride[0]) for x in window_starts(width, ww, stride[1])]
    crops = torch.cat([images[:, :, y:y + wh, x:x + ww] for y, x in boxes])  # box-major: box k is rows k*n..
    logits = torch.cat([model(crops[s:s + batch_size]) for s in range(0, len(crops), batch_size)])
    total = logits.new_zeros(n, logits.shape[1], height, width)
    count = logits.new_zeros(1, 1, height, width)
    for k, (y, x) in enumerate(boxes):
        total[:, :, y:y + wh, x:x + ww] += logits[k * n:(k + 1) * n]
        count[:, :, y:y + wh, x:x + ww] += 1
    return total / count


def infer(model: Model, images: torch.Tensor, out_size: tuple[int, int] | None = None,
          test_scale: tuple[int, int] | None = None, mode: str = "whole", window: tuple[int, int] | None = None,
          stride: tuple[int, int] | None = None, antialias: bool = False) -> torch.Tensor:
    """Logits (N, K, *out_size) for a batch of same-size normalised images: resized to ``test_scale`` (keeping
    the aspect ratio; bilinear without antialiasing, as cv2's resize in MMSegmentation's test pipeline), run whole
    or in sliding windows, and the logits resized to ``out_size`` (None: the input's size)."""
    check_inference(mode, window, stride)
    height, width = images.shape[-2:]
    size = rescale_size(height, width, test_scale)
    x = images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear",
                                                             align_corners=False, antialias=antialias)
    logits = model(x) if mode == "whole" else slide_logits(model, x, window, stride)
    return resize_logits(logits, out_size or (height, width))


def padded_logits(model: Model, images: torch.Tensor, valid: list[tuple[int, int]],
                  out_sizes: list[tuple[int, int]], **inference: object) -> list[torch.Tensor]:
    """Logits (1, K, *out_sizes[k]) of each image of a normalised batch padded at the bottom and right: image k's
    top-left ``valid[k]`` (height, width) is inferred (``infer``'s keywords), the padding never seen; images of
    the same valid size go through the model together."""
    out: list[torch.Tensor | None] = [None] * len(valid)
    for size in dict.fromkeys(valid):
        rows = [k for k, hw in enumerate(valid) if hw == size]
        logits = infer(model, images[rows, :, : size[0], : size[1]], None, **inference)
        for j, k in enumerate(rows):  # each label has its own size
            out[k] = resize_logits(logits[j:j + 1], tuple(out_sizes[k]))
    return out


@torch.no_grad()
def evaluate_images(model: Model, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                    ignore_index: int = 255, device: torch.device | str = "cpu",
                    on_image: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                    **inference: object) -> tuple[SegMetric, float]:
    """(confusion-matrix metric, mean per-pixel loss) over ``(uint8 image 3xHxW, label hxw)`` pairs of any sizes,
    one image at a time, each scored at its label's size (``infer``'s keywords in ``inference``).

    ``on_image(k, logits 1xKxhxw, label 1xhxw)`` sees each image's logits (e.g. to save its predicted mask).
    """
    metric = SegMetric(num_classes, ignore_index, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    pixels = torch.zeros((), dtype=torch.float64, device=device)
    for k, (image, label) in enumerate(pairs):
        x = normalize(image[None].to(device))
        y = label[None].to(device).long()
        logits = infer(model, x, tuple(y.shape[-2:]), **inference).float()
        loss_sum += F.cross_entropy(logits, y, ignore_index=ignore_index, reduction="sum")
        pixels += (y != ignore_index).sum()
        metric.update(logits, y)
        if on_image is not None:
            on_image(k, logits, y)
    return metric, float(loss_sum / pixels.clamp(min=1))
