"""Training throughput of segstudy's data path against the naive torchvision pipeline, side by side.

    python -m benchmarks.throughput --dataset pets --data-root R --model segformer --device cpu \
        [--batch-size 64] [--image-size 64] [--epochs 4] [--warmup 1] [--repeats 1] [--out FILE]

Prints ONE JSON object (and writes it to ``--out`` when given):

- ``naive_img_s``: torchvision ``OxfordIIITPet(target_types="segmentation")`` decoding and resizing
  every image every epoch (PIL, bilinear antialiased image / nearest mask, trimap - 1, ImageNet
  normalisation, joint random hflip) through ``DataLoader(num_workers=2, shuffle=True,
  persistent_workers=True)``; the same train step as the shared loop (AdamW amsgrad, cross-entropy
  ignoring 255, ExponentialLR per epoch, the running loss and train confusion matrix).
- ``segstudy_img_s``: the real ``study.loop.train`` on ``study.data.build_dataset``'s cached uint8
  tensors (built first in a fresh temporary cache; that one-off decode is reported as ``cache``).
- ``ratio`` = segstudy / naive, each side in its own precision (``segstudy_precision``: what
  ``--precision auto`` picks on this device, bf16 on CPUs with native bf16; ``naive_precision``: fp32,
  as the textbook pipeline trains; ``--precision fp32`` compares the data paths alone);
  ``eager_resident_img_s`` (and ``segstudy_vs_eager_resident``) on CUDA, or with ``--eager-resident on``:
  the same model's eager forward + backward + optimizer step on random tensors that already sit on the
  device. A reference for the data path, not a bound: the step itself can go much faster (compiled,
  CUDA-graphed), which the yardstick shows.
- ``yardstick``: FLOPs per image (forward + backward, ``segmodels.cost.count_flops``), achieved TFLOP/s
  and MFU against this device's bf16 matmul rate measured in the same run (``benchmarks.yardstick``),
  for the segstudy loop and the eager-resident step. ``speed`` (``--tf32 --fused-adamw --channels-last
  --compile``) sets the loop's speed options, as ``study.run_trial`` does.

Both sides train the same model from the same seed on the same images (the ``train`` split), with
the same batch size; the first ``--warmup`` epochs of each are not timed, and each side times
``--epochs`` epochs, i.e. the same number of images. Only training epochs are timed (the shared
loop times its epochs itself and reports ``images_per_s``; validation is outside that window).

Every side records ``cpu.foreign_cpu_share``: the share of the machine's CPU that other processes
used while it ran (from /proc/stat); ``--wait-quiet 0.1`` waits before each repeat until that share
is below 10 %. On a shared machine, timings with a larger share are disturbed.

Nothing here imports Ray (``benchmarks/gpu.py`` reuses it on machines without Ray).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from study.data.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger("benchmarks.throughput")

NAIVE_WORKERS = 2


# ---------------------------------------------------------------- machine, versions
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """What the numbers were measured on; deliberately no host name."""
    device = torch.device(device)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "device": str(device),
        "gpu_name": None,
    }
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(gpu_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count(),
                    cuda_runtime=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return info


def library_versions() -> dict[str, str]:
    import PIL
    import torchvision
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__, "pillow": PIL.__version__}


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all processes, all cores), from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and its reaped children (DataLoader workers once joined)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuWatch:
    """How much of the machine other processes used while a measurement ran (0: none, 1: every core).

    Call ``stop()`` after this process's child processes have been joined, so that their CPU time counts
    as ours. On a busy shared machine this says which timings were disturbed.
    """

    def __init__(self) -> None:
        self.wall, self.busy, self.own = time.perf_counter(), cpu_busy_s(), own_cpu_s()

    def stop(self) -> dict[str, float | None]:
        wall, busy, own = time.perf_counter() - self.wall, cpu_busy_s(), own_cpu_s() - self.own
        cores = os.cpu_count() or 1
        foreign = None if busy is None or self.busy is None else max(0.0, (busy - self.busy) - own) / (wall * cores)
        return {"wall_s": round(wall, 2), "own_cpu_s": round(own, 2),
                "foreign_cpu_share": None if foreign is None else round(foreign, 3)}


def wait_for_quiet(threshold: float, max_wait_s: float, sample_s: float = 5.0) -> dict[str, Any]:
    """Sleep until other processes use less than ``threshold`` of the machine over ``sample_s`` (or give up)."""
    started = time.perf_counter()
    while True:
        watch = CpuWatch()
        time.sleep(sample_s)
        share = watch.stop()["foreign_cpu_share"]
        waited = time.perf_counter() - started
        if share is None or share < threshold or waited >= max_wait_s:
            quiet = share is not None and share < threshold
            return {"foreign_cpu_share": share, "waited_s": round(waited, 1), "quiet": quiet}
        log.info("machine busy (%.0f%% of CPU used by other processes); waiting", 100 * share)


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- the naive pipeline
class NaivePetsTransform:
    """The textbook per-sample joint transform, run in DataLoader workers on PIL images every epoch.

    OxfordIIITPet already opens the image as RGB and the trimap as a mode-L PIL image.
    """

    def __init__(self, image_size: tuple[int, int], flip: bool = True) -> None:
        self.image_size = list(image_size)
        self.flip = flip

    def __call__(self, image: Any, trimap: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image = TF.resize(image, self.image_size, InterpolationMode.BILINEAR, antialias=True)
        trimap = TF.resize(trimap, self.image_size, InterpolationMode.NEAREST)
        x = TF.normalize(TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)
        y = torch.from_numpy(np.asarray(trimap, dtype=np.int64) - 1)  # trimap 1/2/3 -> pet/background/boundary
        if self.flip and torch.rand(()) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x, y


def naive_dataset(root: str | Path, split: str, image_size: tuple[int, int]) -> torch.utils.data.Dataset:
    """torchvision's OxfordIIITPet with the naive transform, restricted to segstudy's ``split`` images."""
    from torchvision.datasets import OxfordIIITPet

    from study.data.sources import pets_source

    source = pets_source(root, split)  # the same image list (and order) the cache is built from
    official = "test" if split == "test" else "trainval"
    dataset = OxfordIIITPet(root, split=official, target_types="segmentation",
                            transforms=NaivePetsTransform(image_size, flip=split == "train"))
    return torch.utils.data.Subset(dataset, source.indices)


def naive_loader(dataset: torch.utils.data.Dataset, batch_size: int, device: torch.device,
                 seed: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=NAIVE_WORKERS,
                                       persistent_workers=True, pin_memory=device.type == "cuda",
                                       generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- one optimizer step, as in study.loop.train
def make_optimizer(model: nn.Module, lr: float, gamma: float) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, amsgrad=True)
    return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               ignore_index: int = 255, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loop's step: autocast forward, summed CE / valid pixels, zero_grad, backward, step."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    valid = (y != ignore_index).sum()
    loss = F.cross_entropy(logits.float(), y, ignore_index=ignore_index, reduction="sum") / valid.clamp(min=1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits, loss, valid


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_naive(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device, num_classes: int,
              warmup: int, epochs: int, lr: float, gamma: float, bf16: bool = False) -> dict[str, Any]:
    """Train ``warmup + epochs`` epochs from ``loader``; time each epoch (data waits included)."""
    from study.metrics import SegMetric

    model.to(device).train()
    optimizer, scheduler = make_optimizer(model, lr, gamma)
    metric = SegMetric(num_classes, device=device)
    seconds, images = [], []
    for _ in range(warmup + epochs):
        metric.reset()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        pixels = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        started = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits, loss, valid = train_step(model, optimizer, x, y, bf16=bf16)
            loss_sum += loss.detach() * valid
            pixels += valid
            metric.update(logits.detach(), y)
            count += len(x)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
        images.append(count)
        scheduler.step()
    return summarise_epochs(seconds, images, warmup)


def summarise_epochs(seconds: list[float], images: list[int], warmup: int) -> dict[str, Any]:
    timed_s, timed_n = sum(seconds[warmup:]), sum(images[warmup:])
    return {"img_s": timed_n / timed_s if timed_s > 0 else math.nan, "timed_images": timed_n, "timed_s": timed_s,
            "epoch_s": [round(s, 4) for s in seconds], "epoch_images": images, "warmup_epochs": warmup}


# ---------------------------------------------------------------- segstudy: the real shared loop
def run_segstudy(cfg: Any, train_set: Any, val_set: Any, model: nn.Module, warmup: int) -> dict[str, Any]:
    """``study.loop.train`` with a validation after every epoch, so that every epoch reports images_per_s."""
    from study.loop import train

    cfg = cfg.replace(val_every=1)
    result = train(cfg, train_set, val_set, model)
    images = [len(train_set)] * len(result.rows)
    seconds = [n / row["images_per_s"] for n, row in zip(images, result.rows, strict=True)]
    out = summarise_epochs(seconds, images, warmup)
    out["val_miou_last"] = result.rows[-1]["val_miou"]
    return out


def run_eager_resident(model: nn.Module, device: torch.device, batch_size: int, image_size: tuple[int, int],
                       num_classes: int, images: int, warmup_steps: int = 3, lr: float = 1e-3,
                       bf16: bool = False, seed: int = 0) -> dict[str, Any]:
    """The eager step on random tensors already on the device: what the eager loop could reach with no data
    path at all (a reference for the data path, not for the step)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch_size, 3, *image_size, generator=generator).to(device)
    y = torch.randint(0, num_classes, (batch_size, *image_size), generator=generator).to(device)
    model.to(device).train()
    optimizer, _ = make_optimizer(model, lr, 1.0)
    for _ in range(warmup_steps):
        train_step(model, optimizer, x, y, bf16=bf16)
    synchronize(device)
    steps = max(1, math.ceil(images / batch_size))
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, x, y, bf16=bf16)
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"img_s": steps * batch_size / seconds, "timed_images": steps * batch_size, "timed_s": seconds,
            "warmup_steps": warmup_steps}


# ---------------------------------------------------------------- the measurement
def fresh_model(name: str, num_classes: int, seed: int) -> nn.Module:
    from segmodels import build_model
    from study.loop import seed_everything

    seed_everything(seed)
    return build_model(name, num_classes, "scratch")


def limit(dataset: Any, count: int | None) -> Any:
    """The first ``count`` items of a SegDataset (the same images for both pipelines), or all of it."""
    from study.data import SegDataset

    if not count or count >= len(dataset):
        return dataset
    return SegDataset(dataset.name, dataset.split, dataset.images[:count], dataset.masks[:count],
                      dataset.files[:count], dataset.class_names)


def measure(data_root: str | Path, model_name: str = "segformer", device: str = "cpu", batch_size: int = 64,
            image_size: int | str | tuple[int, int] = 64, epochs: int = 4, warmup: int = 1, repeats: int = 1,
            seed: int = 0, lr: float = 1e-3, gamma: float = 0.98, precision: str = "auto",
            naive_precision: str = "fp32", eager_resident: bool | None = None, max_images: int | None = None,
            cache_dir: str | Path | None = None, wait_quiet: float = 0.0, wait_max_s: float = 600.0,
            speed: dict[str, str] | None = None, peak: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run both pipelines (``repeats`` times, alternating) and return the JSON-ready result.

    ``wait_quiet`` > 0: before each repeat, wait (at most ``wait_max_s``) until other processes use less
    than that share of the machine's CPU; every side records the share they used while it ran.
    ``precision`` is the loop's ``--precision`` (auto: what a study would use on this device);
    ``naive_precision`` the textbook pipeline's (fp32 unless asked). ``speed``: the loop's speed options
    (TrainConfig fields: tf32, fused_adamw, channels_last, compile); ``peak``: ``yardstick.device_peak``'s,
    when already measured in this run.
    """
    from study.config import TrainConfig, parse_image_size
    from study.data import build_dataset
    from study.loop import resolve_precision

    size = parse_image_size(image_size)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks.throughput: --device cuda but torch sees no GPU")
    eager_resident = dev.type == "cuda" if eager_resident is None else eager_resident
    ours_bf16 = resolve_precision(precision, dev) == "bf16"
    naive_bf16 = resolve_precision(naive_precision, dev) == "bf16"
    load_before = load_average()
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="segstudy-bench-cache-") as tmp_cache:
        cache = Path(cache_dir) if cache_dir else Path(tmp_cache)
        t0 = time.perf_counter()
        train_set = build_dataset("pets", "train", data_root, size, cache_dir=cache)
        val_set = build_dataset("pets", "val", data_root, size, cache_dir=cache)
        cache_build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_dataset("pets", "train", data_root, size, cache_dir=cache)
        build_dataset("pets", "val", data_root, size, cache_dir=cache)
        cache_load_s = time.perf_counter() - t0
    train_set = limit(train_set, max_images)
    num_classes = train_set.num_classes

    naive_set = naive_dataset(data_root, "train", size)
    if max_images and max_images < len(naive_set):
        naive_set = torch.utils.data.Subset(naive_set, range(max_images))
    assert len(naive_set) == len(train_set), (len(naive_set), len(train_set))

    cfg = TrainConfig(dataset="pets", data_root=str(data_root), model=model_name, epochs=warmup + epochs,
                      batch_size=batch_size, lr=lr, gamma=gamma, image_size=size, seed=seed, device=str(dev),
                      precision=precision, **(speed or {}))
    runs: list[dict[str, Any]] = []
    for repeat in range(repeats):
        quiet = wait_for_quiet(wait_quiet, wait_max_s) if wait_quiet else None
        log.info("repeat %d/%d: naive pipeline (%s, %s)", repeat + 1, repeats, model_name, dev)
        watch = CpuWatch()
        loader = naive_loader(naive_set, batch_size, dev, seed)
        naive = run_naive(fresh_model(model_name, num_classes, seed), loader, dev, num_classes, warmup, epochs,
                          lr, gamma, bf16=naive_bf16)
        del loader  # joins the persistent workers (their CPU time becomes ours) before the other side runs
        gc.collect()
        naive["cpu"] = watch.stop()
        log.info("repeat %d/%d: segstudy loop", repeat + 1, repeats)
        watch = CpuWatch()
        ours = run_segstudy(cfg, train_set, val_set, fresh_model(model_name, num_classes, seed), warmup)
        ours["cpu"] = watch.stop()
        runs.append({"naive": naive, "segstudy": ours, "ratio": ours["img_s"] / naive["img_s"],
                     "wait_for_quiet": quiet, "load_average": load_average()})
        log.info("repeat %d/%d: naive %.1f img/s, segstudy %.1f img/s, ratio %.2f", repeat + 1, repeats,
                 naive["img_s"], ours["img_s"], runs[-1]["ratio"])

    naive_img_s = sum(r["naive"]["timed_images"] for r in runs) / sum(r["naive"]["timed_s"] for r in runs)
    segstudy_img_s = sum(r["segstudy"]["timed_images"] for r in runs) / sum(r["segstudy"]["timed_s"] for r in runs)
    result: dict[str, Any] = {
        "benchmark": "throughput",
        "dataset": "pets",
        "model": model_name,
        "device": str(dev),
        "naive_img_s": round(naive_img_s, 2),
        "segstudy_img_s": round(segstudy_img_s, 2),
        "ratio": round(segstudy_img_s / naive_img_s, 3),
        "ratio_per_repeat": [round(r["ratio"], 3) for r in runs],
        "ratio_median": round(statistics.median(r["ratio"] for r in runs), 3),
        "max_foreign_cpu_share": max_share(runs),
        "segstudy_precision": "bf16" if ours_bf16 else "fp32",
        "naive_precision": "bf16" if naive_bf16 else "fp32",
    }
    from benchmarks import yardstick as ys

    peak = peak or ys.device_peak(dev)
    flops = ys.train_flops_per_image(fresh_model(model_name, num_classes, seed), size)
    result["yardstick"] = {"segstudy": ys.yardstick(segstudy_img_s, flops, peak)}
    if eager_resident:
        timed_images = runs[0]["segstudy"]["timed_images"]
        ref = run_eager_resident(fresh_model(model_name, num_classes, seed), dev, batch_size, size, num_classes,
                                 timed_images, lr=lr, bf16=ours_bf16, seed=seed)
        result["eager_resident_img_s"] = round(ref["img_s"], 2)
        result["segstudy_vs_eager_resident"] = round(segstudy_img_s / ref["img_s"], 3)
        result["eager_resident"] = ref
        result["yardstick"]["eager_resident"] = ys.yardstick(ref["img_s"], flops, peak)
    result["peak"] = peak
    result.update({
        "cache": {"first_decode_s": None if cache_dir else round(cache_build_s, 3), "reload_s": round(cache_load_s, 3),
                  "note": "given, already built cache: no decode measured" if cache_dir else
                  "one-off: decoding + resizing train and val into a fresh cache; not in any timed epoch"},
        "settings": {"data_root": str(data_root), "split": "train", "train_images": len(train_set),
                     "timed_images_per_side": runs[0]["segstudy"]["timed_images"], "batch_size": batch_size,
                     "image_size": list(size), "epochs_timed": epochs, "warmup_epochs": warmup, "repeats": repeats,
                     "seed": seed, "lr": lr, "gamma": gamma, "precision": precision,
                     "segstudy_precision": "bf16" if ours_bf16 else "fp32",
                     "naive_precision": "bf16" if naive_bf16 else "fp32", "naive_num_workers": NAIVE_WORKERS,
                     "naive_pin_memory": dev.type == "cuda", "init": "scratch", "speed": speed or {}},
        "runs": runs,
        "machine": machine_info(dev),
        "versions": library_versions(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "wall_s": round(time.perf_counter() - started, 1),
        "measured_at": now_utc(),
    })
    return result


def max_share(runs: list[dict[str, Any]]) -> float | None:
    """The largest share of the machine other processes took during any timed side (None: unknown)."""
    shares = [r[side]["cpu"]["foreign_cpu_share"] for r in runs for side in ("naive", "segstudy")]
    return None if any(v is None for v in shares) else max(shares)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_quick_data(root: str | Path) -> Path:
    """Toy Pets data (36 train, 4 val images), for ``--quick`` without ``--data-root``."""
    from study.data.toy import write_toy

    return write_toy(root, pets=(40, 4), cityscapes=(0, 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["pets"], default="pets")
    parser.add_argument("--data-root", help="folder holding oxford-iiit-pet/ (required unless --quick)")
    parser.add_argument("--model", choices=["segformer", "fcn_resnet50"], default="segformer")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", default="64")
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs per side before timing")
    parser.add_argument("--repeats", type=int, default=1, help="naive/segstudy pairs to run, alternating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="the loop's --precision (auto: bf16 on CPUs with native bf16, else fp32)")
    parser.add_argument("--naive-precision", choices=["fp32", "bf16"], default="fp32",
                        help="the naive pipeline's autocast (the textbook pipeline trains in fp32)")
    parser.add_argument("--eager-resident", choices=["auto", "on", "off"], default="auto",
                        help="also time the eager step on random on-device tensors (auto: on CUDA only)")
    for option in ("tf32", "fused-adamw", "channels-last"):
        parser.add_argument(f"--{option}", choices=["auto", "on", "off"], default="auto", help="the loop's")
    parser.add_argument("--compile", choices=["auto", "off", "default", "max-autotune", "reduce-overhead"],
                        default="auto", help="the loop's")
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N train images")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SHARE",
                        help="before each repeat wait until other processes use < SHARE of the CPUs (e.g. 0.1)")
    parser.add_argument("--wait-max", type=float, default=600.0, help="seconds to wait for quiet at most")
    parser.add_argument("--quick", action="store_true",
                        help="seconds-long smoke run: toy data (unless --data-root), 32 px, batch 8, 1+1 epochs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    toy_dir = tempfile.TemporaryDirectory(prefix="segstudy-bench-toy-")
    if args.quick:
        args.data_root = args.data_root or str(write_quick_data(toy_dir.name))
        args.image_size, args.batch_size, args.epochs, args.warmup = "32", 8, 1, 1
        args.max_images = args.max_images or 16
    if not args.data_root:
        parser.error("--data-root is required (or pass --quick)")
    result = measure(args.data_root, args.model, args.device, args.batch_size, args.image_size, args.epochs,
                     args.warmup, args.repeats, args.seed, precision=args.precision,
                     naive_precision=args.naive_precision,
                     eager_resident={"auto": None, "on": True, "off": False}[args.eager_resident],
                     max_images=args.max_images, wait_quiet=args.wait_quiet, wait_max_s=args.wait_max,
                     speed={"tf32": args.tf32, "fused_adamw": args.fused_adamw, "channels_last": args.channels_last,
                            "compile": args.compile})
    result["command"] = "python -m benchmarks.throughput " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.quick:
        result["quick"] = True
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        write_json(args.out, result)
    toy_dir.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
