"""Decode and resize a dataset split once; keep the uint8 tensors on disk.

The cache lives outside the data root (which may be read-only): ``--cache-dir``,
else ``$SEGSTUDY_CACHE``, else ``$XDG_CACHE_HOME/segstudy`` (``~/.cache/segstudy``).
The file name carries a hash of the dataset name, split, image size, the label mapping (class list,
ignore value, reduce_zero_label), the layout (``Layout``: a base scale, original labels) and every source
file's path, size and mtime, so a changed file list, size, class mapping or layout builds anew. The default
layout adds nothing to the hash, so the report recipe's cache files keep their names.

Layouts (``Layout``):

- default: every image and mask resized to ``image_size`` (the report's recipe).
- ``base_size`` set: every image resized once to that scale keeping its aspect ratio (mmcv's ``rescale_size``,
  as MMSegmentation's ``RandomResize`` at ratio 1 and its test ``Resize``), padded at the bottom and right to
  the split's largest such size (image 0, mask ``IGNORE_INDEX``); ``valid`` (N, 2) records each image's
  (height, width) from the top-left corner, for ``study.augment`` and ``study.inference``.
- ``originals``: each label also kept at its original resolution, packed one after the other in ``labels``
  (uint8, flat) with ``label_sizes`` (N, 2) (``OriginalLabels``): no padding, so a split of many sizes costs
  its own pixels only, and memory-mapped like the rest.
Every file is validated while the cache is built, so broken data stops a run
before any training starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from foundation.errors import DataError
from foundation.files import atomic_torch_save
from foundation.storage import default_cache_dir
from study.data.sources import IGNORE_INDEX, Source
from study.recipe_checks import rescale_size

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class Layout:
    """How a split is stored (see the module): ``base_size`` (LONGxSHORT, keeping the aspect ratio; None: resized to
    ``image_size``) and whether the labels are also kept at their original resolution."""

    base_size: tuple[int, int] | None = None
    originals: bool = False

    def key(self) -> dict:
        """What the cache hash adds for this layout: nothing for the default one."""
        out = {}
        if self.base_size is not None:
            out["base_size"] = list(self.base_size)
        if self.originals:
            out["originals"] = True
        return out

    def size_of(self, height: int, width: int, image_size: tuple[int, int]) -> tuple[int, int]:
        """An image's stored (height, width)."""
        if self.base_size is None:
            return tuple(image_size)
        return rescale_size(height, width, self.base_size)


DEFAULT_LAYOUT = Layout()


class OriginalLabels:
    """A split's labels at their original sizes, packed flat (``labels``) with ``label_sizes`` (N, 2)."""

    def __init__(self, flat: torch.Tensor, sizes: torch.Tensor) -> None:
        self.flat, self.sizes = flat, sizes.long()
        lengths = self.sizes[:, 0] * self.sizes[:, 1]
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).tolist()
        self.shapes = [tuple(hw) for hw in self.sizes.tolist()]

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, k: int) -> torch.Tensor:
        """Label ``k`` (h, w) uint8, a view of the (memory-mapped) flat tensor."""
        return self.flat[self.offsets[k]:self.offsets[k + 1]].view(self.shapes[k])


def cache_key(source: Source, image_size: tuple[int, int], layout: Layout = DEFAULT_LAYOUT) -> str:
    files = []
    for path in [*source.image_files, *source.label_files]:
        try:
            stat = path.stat()
        except OSError:
            raise DataError(f"{path}: missing or unreadable") from None
        files.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    payload = {"format": CACHE_FORMAT, "name": source.name, "split": source.split, "size": list(image_size),
               "mapping": source.mapping, "files": files, **layout.key()}
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:20]


def load_or_build(source: Source, image_size: tuple[int, int], cache_dir: str | Path | None = None,
                  layout: Layout = DEFAULT_LAYOUT) -> dict:
    """Return {"images": uint8 N,3,H,W, "masks": uint8 N,H,W, "files": [...]} (with ``layout``'s ``valid``,
    ``labels`` and ``label_sizes``), from cache when valid."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    height, width = image_size
    path = cache_dir / f"{source.name}-{source.split}-{height}x{width}-{cache_key(source, image_size, layout)}.pt"
    if path.is_file():
        try:
            return torch.load(path, mmap=True, weights_only=True)  # paged in as read (study.data.stream)
        except Exception as exc:  # a truncated or foreign cache file is rebuilt, not trusted
            log.warning("rebuilding unreadable cache file %s (%s)", path, exc)
    log.info("decoding %d %s/%s images at %dx%d into %s", len(source.indices), source.name, source.split, height,
             width, path)
    data = build(source, image_size, layout)
    try:
        atomic_torch_save(data, path)
    except OSError as exc:
        raise DataError(f"--cache-dir {cache_dir}: cannot write the dataset cache ({exc}); set --cache-dir or "
                        "SEGSTUDY_CACHE to a writable folder") from None
    return torch.load(path, mmap=True, weights_only=True)  # the file's pages, not a second copy in RAM


def build(source: Source, image_size: tuple[int, int], layout: Layout = DEFAULT_LAYOUT) -> dict:
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = list(pool.map(lambda k: _decode(source, k, image_size, layout), range(len(source.indices))))
    data = {"files": [str(p) for p in source.image_files]}
    if layout.base_size is None:
        data["images"] = torch.stack([image for image, _, _ in decoded])
        data["masks"] = torch.stack([mask for _, mask, _ in decoded])
    else:
        data.update(pad_split([image for image, _, _ in decoded], [mask for _, mask, _ in decoded]))
    if layout.originals:
        data["labels"] = torch.cat([label.reshape(-1) for _, _, label in decoded])
        data["label_sizes"] = torch.tensor([list(label.shape) for _, _, label in decoded], dtype=torch.long)
    data["class_pixels"] = torch.bincount(data["masks"].flatten().long(), minlength=256)[:256]  # 255: ignored
    return data


def pad_split(images: list[torch.Tensor], masks: list[torch.Tensor]) -> dict:
    """Images (3, h, w) and masks (h, w) of several sizes padded bottom-right to the largest (image 0, mask
    ``IGNORE_INDEX``), with each one's ``valid`` (h, w)."""
    height = max(m.shape[0] for m in masks)
    width = max(m.shape[1] for m in masks)
    pad = lambda t, value: torch.nn.functional.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]),  # noqa: E731
                                                  value=value)
    return {"images": torch.stack([pad(image, 0) for image in images]),
            "masks": torch.stack([pad(mask, IGNORE_INDEX) for mask in masks]),
            "valid": torch.tensor([list(m.shape) for m in masks], dtype=torch.long)}


def _decode(source: Source, k: int, image_size: tuple[int, int],
            layout: Layout = DEFAULT_LAYOUT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Read pair ``k`` through the torchvision dataset, validate it, map labels and resize to the layout's size:
    (image, mask, the label at its original size with ``layout.originals``, else None)."""
    image_file, label_file = source.image_files[k], source.label_files[k]
    try:
        image, label = source.dataset[source.indices[k]]
    except Exception as exc:
        failed = getattr(exc, "filename", None) or image_file
        raise DataError(f"{failed}: cannot read image ({exc})") from None
    try:
        label_array = np.asarray(label)
    except Exception as exc:
        raise DataError(f"{label_file}: cannot read label image ({exc})") from None
    if label_array.ndim != 2:
        kind = "an RGB(A) mask" if label_array.ndim == 3 else f"shape {label_array.shape}"
        raise DataError(f"{label_file}: {kind}, expected a single-channel PNG of class indices (a colour-coded "
                        "mask must be converted to indices first)")
    if label_array.shape != (image.height, image.width):
        raise DataError(
            f"{label_file}: label size {label_array.shape[1]}x{label_array.shape[0]} differs from its image "
            f"{image_file.name} ({image.width}x{image.height})"
        )
    classes = torch.from_numpy(source.label_to_class(label_array, label_file))
    size = list(layout.size_of(image.height, image.width, image_size))
    image_t = TF.resize(TF.pil_to_tensor(image), size, InterpolationMode.BILINEAR, antialias=True)
    mask_t = TF.resize(classes[None], size, InterpolationMode.NEAREST_EXACT)[0]
    original = classes.to(torch.uint8).contiguous() if layout.originals else None
    return image_t.contiguous(), mask_t.contiguous(), original
