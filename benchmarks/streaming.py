"""Streamed splits against resident ones on the same data: what ``--data-placement host`` costs.

    python -m benchmarks.streaming [--device cpu|cuda] [--model segformer|fcn_resnet50] [--images 512]
        [--image-size 64] [--batch-size 64] [--epochs 3] [--warmup 1] [--repeats 2] [--out FILE]

Both sides read one split of synthetic uint8 images and masks written as the dataset cache writes
them (a ``torch.save``'d dict) and memory-mapped back as the cache loads them. ``resident``
(``--data-placement device``) moves the split to the device once; ``streamed`` (``host``) gathers
each batch on the host and, on CUDA, copies it through pinned staging buffers on a side stream one
batch ahead (``study.data.stream``). Two measurements, each side ``--repeats`` times, alternating:

- ``feed``: the batches alone (cut, flipped and normalised on the device), one pass over the split;
  the data path's own speed, with no model to hide behind.
- ``train``: the real ``study.loop.train`` (validation after every epoch, outside the timed window);
  images/s of the ``--epochs`` epochs after ``--warmup``, as the loop reports them.

Prints ONE JSON object (and writes it to ``--out``): the machine, the settings, every run, and
``ratios``: streamed / resident images/s (1.0 = streaming costs nothing; below 1 it costs). On CUDA
also the peak device memory of each side. Nothing here imports Ray.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.throughput import CpuWatch, library_versions, load_average, machine_info, now_utc, write_json
from foundation.files import atomic_torch_save
from study.config import TrainConfig
from study.data import SegDataset
from study.data.stream import place
from study.data.transforms import hflip_where, normalize

PLACEMENTS = {"resident": "device", "streamed": "host"}
CLASSES = ("pet", "background", "boundary")


def mapped_split(folder: Path, name: str, images: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic uint8 images/masks saved as a cache file and memory-mapped back (as ``study.data.cache``)."""
    g = torch.Generator().manual_seed(seed)
    data = {"images": torch.randint(0, 256, (images, 3, size, size), generator=g, dtype=torch.uint8),
            "masks": torch.randint(0, len(CLASSES), (images, size, size), generator=g, dtype=torch.uint8)}
    path = atomic_torch_save(data, folder / f"{name}.pt")
    loaded = torch.load(path, mmap=True, weights_only=True)
    return loaded["images"], loaded["masks"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_feed(images: torch.Tensor, masks: torch.Tensor, device: torch.device, placement: str,
                 batch_size: int, passes: int) -> dict[str, Any]:
    """Images/s of the batches alone (after one untimed pass), cut, flipped and normalised on the device."""
    split = place(images, masks, device, placement)
    g = torch.Generator().manual_seed(0)
    seconds = []
    for k in range(passes + 1):
        order = torch.randperm(len(split), generator=g)
        flips = (torch.rand(len(split), generator=g) < 0.5)[order].to(device)
        synchronize(device)
        started = time.perf_counter()
        for step, (_, x, y) in enumerate(split.batches(order, batch_size)):
            x, y = hflip_where(x, y, flips[step * batch_size : (step + 1) * batch_size])
            x, y = normalize(x), y.long()
        synchronize(device)
        if k:
            seconds.append(time.perf_counter() - started)
    return {"img_s": passes * len(split) / sum(seconds), "pass_s": [round(s, 4) for s in seconds]}


def measure_train(train_set: SegDataset, val_set: SegDataset, model_name: str, device: torch.device,
                  placement: str, args: argparse.Namespace) -> dict[str, Any]:
    """``study.loop.train`` with ``placement``; images/s of the epochs after the warm-up."""
    from segmodels import build_model
    from study.loop import seed_everything, train

    cfg = TrainConfig(model=model_name, epochs=args.warmup + args.epochs, batch_size=args.batch_size,
                      image_size=args.image_size, val_every=1, device=str(device), precision=args.precision,
                      data_placement=placement)
    seed_everything(0)
    model = build_model(model_name, len(CLASSES), "scratch")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = train(cfg, train_set, val_set, model)
    timed = result.rows[args.warmup:]
    seconds = [len(train_set) / row["images_per_s"] for row in timed]
    out: dict[str, Any] = {"img_s": len(timed) * len(train_set) / sum(seconds),
                           "epoch_img_s": [round(row["images_per_s"], 2) for row in result.rows],
                           "final_train_loss": round(result.rows[-1]["train_loss"], 6)}
    if device.type == "cuda":
        out["peak_device_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return out


def median(runs: list[dict[str, Any]], key: str = "img_s") -> float:
    return statistics.median(run[key] for run in runs)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {"feed": {}, "train": {}}
    with tempfile.TemporaryDirectory(prefix="segstudy-streaming-") as tmp:
        train_images, train_masks = mapped_split(Path(tmp), "train", args.images, args.image_size, seed=0)
        val_images, val_masks = mapped_split(Path(tmp), "val", max(args.batch_size, args.images // 8),
                                             args.image_size, seed=1)
        train_set = SegDataset("pets", "train", train_images, train_masks, [], CLASSES)
        val_set = SegDataset("pets", "val", val_images, val_masks, [], CLASSES)
        for repeat in range(args.repeats):
            sides = list(PLACEMENTS) if repeat % 2 == 0 else list(reversed(PLACEMENTS))  # alternate the order
            for side in sides:
                watch = CpuWatch()
                feed = measure_feed(train_images, train_masks, device, PLACEMENTS[side], args.batch_size,
                                    passes=args.epochs)
                results["feed"].setdefault(side, []).append({**feed, "repeat": repeat, "cpu": watch.stop()})
                if args.model != "none":
                    watch = CpuWatch()
                    trained = measure_train(train_set, val_set, args.model, device, PLACEMENTS[side], args)
                    results["train"].setdefault(side, []).append({**trained, "repeat": repeat, "cpu": watch.stop()})
    ratios = {kind: round(median(sides["streamed"]) / median(sides["resident"]), 3)
              for kind, sides in results.items() if sides}
    same_loss = None
    if results["train"]:
        losses = {run["final_train_loss"] for side in results["train"].values() for run in side}
        same_loss = len(losses) == 1  # same seed, same batches: the same training either way
    return {
        "benchmark": "streaming", "date": now_utc(), "machine": machine_info(device), "versions": library_versions(),
        "load_average": load_average(),
        "settings": {"device": str(device), "model": args.model, "images": args.images,
                     "image_size": args.image_size, "batch_size": args.batch_size, "epochs": args.epochs,
                     "warmup": args.warmup, "repeats": args.repeats, "precision": args.precision,
                     "torch_threads": torch.get_num_threads(),
                     "split_mib": round((train_images.numel() + train_masks.numel()) / 2**20, 1)},
        "img_s_median": {kind: {side: round(median(runs), 2) for side, runs in sides.items()}
                         for kind, sides in results.items() if sides},
        "ratios": ratios, "same_final_train_loss": same_loss, "runs": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.streaming", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=["segformer", "fcn_resnet50", "none"], default="segformer",
                        help="none: only the feed measurement")
    parser.add_argument("--images", type=int, default=512, help="train images (val: an eighth)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (and feed passes) per run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 on a shared, loaded machine, "
                             "where spinning OpenMP threads turn timings into noise")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.out:
        write_json(args.out, result)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
