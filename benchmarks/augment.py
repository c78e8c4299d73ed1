"""Device-side augmentation (``study.augment``) against torchvision ``transforms.v2`` in DataLoader workers.

    python -m benchmarks.augment [--device cpu|cuda] [--images 64] [--height 512] [--width 1024] [--crop 512]
        [--batch-size 8] [--workers 2] [--repeats 2] [--out FILE]

Both sides augment the same synthetic uint8 split (blocks of 19 classes) with MMSegmentation's train pipeline
at its ADE20K settings scaled to the images: rescale to ratio 0.5..2 of the base size (the images' own size),
crop ``--crop`` squared, flip, photometric distortion, normalise; one pass over the split, batches of
``--batch-size``, images/s.

- ``device``: ``draw_params`` + ``augment_batch`` on the whole batch where it lives (``--device``), with
  ``cat_max_ratio`` 0.75 (``device``) and without it (``device_no_cat``, what the torchvision side can do).
- ``torchvision``: the MMSeg/Hugging Face way: a ``Dataset`` whose ``__getitem__`` runs
  ``v2.RandomResize`` (shorter side), ``v2.RandomCrop`` (padded, mask filled with 255),
  ``v2.RandomHorizontalFlip``, ``v2.ColorJitter`` and ``v2.Normalize`` per sample, in ``--workers`` DataLoader
  worker processes, the batch then moved to ``--device``.

Prints ONE JSON object (and writes it to ``--out``): the machine, the settings, every run, and ``ratios``:
images/s of each device variant / torchvision (above 1: the device side is faster). Nothing here imports Ray.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from benchmarks.throughput import CpuWatch, library_versions, load_average, machine_info, now_utc, write_json
from study.augment import AugmentSpec, augment_batch, draw_params
from study.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

CLASSES = 19


def synthetic_split(images: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and masks of 32x32 blocks of ``CLASSES`` classes, the images' colours following the masks."""
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, CLASSES, (images, height // 32, width // 32), generator=gen, dtype=torch.uint8)
    masks = blocks.repeat_interleave(32, 1).repeat_interleave(32, 2)
    noise = torch.randint(0, 40, (images, 3, height, width), generator=gen, dtype=torch.uint8)
    return (masks[:, None] * 11 + noise).contiguous(), masks.contiguous()


class TorchvisionSplit(torch.utils.data.Dataset):
    """Per-sample ``transforms.v2`` augmentation, as a DataLoader worker runs it."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, crop: int) -> None:
        self.images, self.masks = images, masks
        short = min(images.shape[-2:])
        self.transform = v2.Compose([
            v2.RandomResize(short // 2, short * 2),
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.1),
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.transform(tv_tensors.Image(self.images[k]), tv_tensors.Mask(self.masks[k]))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_device(images: torch.Tensor, masks: torch.Tensor, spec: AugmentSpec, batch_size: int,
                   device: torch.device, epoch: int) -> dict[str, Any]:
    """One pass of ``augment_batch`` over the split already on ``device``."""
    order = torch.arange(len(images))
    params = draw_params(0, epoch, order).to(device)
    synchronize(device)
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size].to(device)
        x, y = augment_batch(images[idx], masks[idx], params[start:start + batch_size], spec)
        x, y = normalize(x), y.long()
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"img_s": len(order) / seconds, "seconds": seconds, "shape": list(x.shape)}


def measure_torchvision(images: torch.Tensor, masks: torch.Tensor, crop: int, batch_size: int, workers: int,
                        device: torch.device) -> dict[str, Any]:
    """One pass of a DataLoader with ``workers`` processes (their start-up included, as each epoch pays it
    without ``persistent_workers``)."""
    loader = torch.utils.data.DataLoader(TorchvisionSplit(images, masks, crop), batch_size=batch_size,
                                         shuffle=True, num_workers=workers, pin_memory=device.type == "cuda")
    started = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"img_s": len(images) / seconds, "seconds": seconds, "shape": list(x.shape)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    images, masks = synthetic_split(args.images, args.height, args.width)
    on_device = images.to(device), masks.to(device)
    base = (max(args.height, args.width), min(args.height, args.width))
    specs = {"device": AugmentSpec((args.crop, args.crop), base, cat_max_ratio=0.75),
             "device_no_cat": AugmentSpec((args.crop, args.crop), base)}
    measure_device(*on_device, specs["device"], args.batch_size, device, epoch=0)  # warm-up
    runs: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(args.repeats):
        for side in (["torchvision", *specs] if repeat % 2 == 0 else [*reversed(specs), "torchvision"]):
            watch = CpuWatch()
            if side == "torchvision":
                result = measure_torchvision(images, masks, args.crop, args.batch_size, args.workers, device)
            else:
                result = measure_device(*on_device, specs[side], args.batch_size, device, epoch=repeat + 1)
            runs.setdefault(side, []).append({**result, "repeat": repeat, "cpu": watch.stop()})
    medians = {side: statistics.median(r["img_s"] for r in sides) for side, sides in runs.items()}
    return {
        "benchmark": "augment", "date": now_utc(), "machine": machine_info(device), "versions": library_versions(),
        "load_average": load_average(),
        "settings": {"device": str(device), "images": args.images, "image": [args.height, args.width],
                     "crop": args.crop, "batch_size": args.batch_size, "workers": args.workers,
                     "repeats": args.repeats, "torch_threads": torch.get_num_threads()},
        "img_s_median": {side: round(v, 2) for side, v in medians.items()},
        "ratios": {side: round(medians[side] / medians["torchvision"], 3) for side in specs},
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.augment", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    result = run(args)
    if args.out:
        write_json(args.out, result)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
