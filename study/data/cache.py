"""Decode and resize a dataset split once; keep the uint8 tensors on disk.

The cache lives outside the data root (which may be read-only): ``--cache-dir``,
else ``$SEGSTUDY_CACHE``, else ``$XDG_CACHE_HOME/segstudy`` (``~/.cache/segstudy``).
The file name carries a hash of the dataset name, split, image size, the label mapping (class list,
ignore value, reduce_zero_label) and every source file's path, size and mtime, so a changed file list,
size or class mapping builds anew.
Every file is validated while the cache is built, so broken data stops a run
before any training starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from segmodels.files import atomic_torch_save
from study.data.sources import Source
from study.errors import DataError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    if os.environ.get("SEGSTUDY_CACHE"):
        return Path(os.environ["SEGSTUDY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "segstudy"


def cache_key(source: Source, image_size: tuple[int, int]) -> str:
    files = []
    for path in [*source.image_files, *source.label_files]:
        try:
            stat = path.stat()
        except OSError:
            raise DataError(f"{path}: missing or unreadable") from None
        files.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    payload = {"format": CACHE_FORMAT, "name": source.name, "split": source.split, "size": list(image_size),
               "mapping": source.mapping, "files": files}
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:20]


def load_or_build(source: Source, image_size: tuple[int, int], cache_dir: str | Path | None = None) -> dict:
    """Return {"images": uint8 N,3,H,W, "masks": uint8 N,H,W, "files": [...]}, from cache when valid."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    height, width = image_size
    path = cache_dir / f"{source.name}-{source.split}-{height}x{width}-{cache_key(source, image_size)}.pt"
    if path.is_file():
        try:
            return torch.load(path, mmap=True, weights_only=True)  # paged in as read (study.data.stream)
        except Exception as exc:  # a truncated or foreign cache file is rebuilt, not trusted
            log.warning("rebuilding unreadable cache file %s (%s)", path, exc)
    log.info("decoding %d %s/%s images at %dx%d into %s", len(source.indices), source.name, source.split, height,
             width, path)
    data = build(source, image_size)
    try:
        atomic_torch_save(data, path)
    except OSError as exc:
        raise DataError(f"--cache-dir {cache_dir}: cannot write the dataset cache ({exc}); set --cache-dir or "
                        "SEGSTUDY_CACHE to a writable folder") from None
    return torch.load(path, mmap=True, weights_only=True)  # the file's pages, not a second copy in RAM


def build(source: Source, image_size: tuple[int, int]) -> dict:
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pairs = list(pool.map(lambda k: _decode(source, k, image_size), range(len(source.indices))))
    masks = torch.stack([mask for _, mask in pairs])
    return {
        "images": torch.stack([image for image, _ in pairs]),
        "masks": masks,
        "files": [str(p) for p in source.image_files],
        "class_pixels": torch.bincount(masks.flatten().long(), minlength=256),  # 255: ignored
    }


def _decode(source: Source, k: int, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read pair ``k`` through the torchvision dataset, validate it, map labels and resize."""
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
    image_t = TF.resize(TF.pil_to_tensor(image), list(image_size), InterpolationMode.BILINEAR, antialias=True)
    mask_t = TF.resize(classes[None], list(image_size), InterpolationMode.NEAREST_EXACT)[0]
    return image_t.contiguous(), mask_t.contiguous()
