"""What a model costs: parameters, and FLOPs per image counted by torch's own ``FlopCounterMode``; and what it
costs measured on a device (``measure_cost``: latency, throughput, training step, peak memory), cached per key
(``cached_cost``: repeated, its spread kept, checked against a quick reading each time it is used).

Counted, not estimated: the counter sees every matmul and convolution that one forward (and, when asked,
backward) pass of the real model at the given size dispatches. The report's cost figure, ``summary.csv``'s
cost columns, the registry table (docs/models.md) and the benchmarks' MFU all read these two functions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from foundation.files import atomic_write

log = logging.getLogger(__name__)

def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape, **kwargs) -> int:
    """A convolution's backward: one forward's FLOPs per gradient computed (input, weight). torch's own formula
    counts the weight gradient of a grouped convolution as if it were dense (a depthwise 3x3 over 64 channels
    came out at 65x its forward), which made SegFormer's Mix-FFN look twice as costly as it is."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


CUSTOM_FLOPS = {torch.ops.aten.convolution_backward: _conv_backward_flop}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, image_size: tuple[int, int], batch_size: int = 2, backward: bool = False,
                device: torch.device | str = "cpu") -> float:
    """FLOPs per image of one forward (plus backward when ``backward``) pass at ``image_size`` (H, W).

    Runs the model once on zeros in fp32 (a batch of 2: BatchNorm in train mode needs more than one value
    per channel, e.g. after ASPP's global pooling); the model's mode and gradients are left as they were.
    """
    height, width = image_size
    images = torch.zeros(batch_size, 3, height, width, device=device)
    was_training = model.training
    model.train(backward)
    try:
        with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
            if backward:
                out = model(images)
                out.float().sum().backward()
            else:
                with torch.no_grad():
                    model(images)
    finally:
        if backward:
            model.zero_grad(set_to_none=True)
        model.train(was_training)
    return counter.get_total_flops() / batch_size


# ------------------------------------------------------------------ measured on a device, not counted
MEASURED = ("latency_ms", "throughput_ips", "train_step_ms", "peak_mem_mb")
DEVICE_KEY = "cost_device"  # the device kind the measurement ran on (``device_kind``)
MEMORY_MEASURE_KEY = "peak_mem_measure"  # what ``peak_mem_mb`` is, on that device
COST_FORMAT = 2  # bumped when what is measured changes: older cached measurements are not reused
# 2: a cached measurement is REPEATS readings (median, and their spread), no longer one reading


def device_kind(device: torch.device | str) -> str:
    """The kind of device, as the cost is keyed and reported: ``cuda NVIDIA H100 80GB HBM3`` or ``cpu AMD EPYC``
    (two devices of one kind measure alike; the summary keeps each trial's measurement with its kind)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    import platform

    return f"cpu {name or platform.processor() or platform.machine()}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(step: Callable[[], object], device: torch.device, runs: int, warmup: int) -> float:
    """The median wall time of ``step`` over ``runs`` calls after ``warmup`` untimed ones, synchronised on CUDA."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        step()
        _sync(device)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), None)
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident set (Linux: ``VmHWM``) to its current size; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _PeakMemory:
    """Peak memory while the block runs: CUDA's ``max_memory_allocated`` on a GPU; on the CPU the growth of the
    process's peak resident set (``VmHWM`` reset, then compared with the resident size before), which counts
    every allocation of the process, torch's and others', in whole pages."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mib, self.measure = device, math.nan, "unavailable"
        self.before: int | None = None  # the resident size before, where the peak can be reset (Linux)

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif _reset_peak_rss():
            self.before = _rss_kib("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.measure = "cuda max_memory_allocated"
        elif self.before is not None and (peak := _rss_kib("VmHWM")) is not None:
            self.mib = max(peak - self.before, 0) / 1024
            self.measure = "cpu peak RSS growth (VmHWM)"


def measure_cost(model: nn.Module, image_size: tuple[int, int], batch_size: int, device: torch.device | str = "cpu",
                 precision: str = "fp32", runs: int = 20, warmup: int = 3, train_runs: int = 3) -> dict[str, Any]:
    """What ``model`` costs on ``device``, measured as MMSeg's ``tools/benchmark.py`` does: inference latency at
    batch 1 (median of ``runs`` after ``warmup``), throughput at ``batch_size`` (img/s), the median time of a
    training step (forward, cross-entropy, backward, AdamW) at ``batch_size``, and the peak memory of those steps
    (``_PeakMemory`` says what it is on that device). ``precision`` ``bf16`` runs under bf16 autocast as the loop
    does. The model's weights change (it trains): pass a throwaway one."""
    device = torch.device(device)
    height, width = image_size
    net = model.to(device)
    one = torch.randn(1, 3, height, width, device=device)
    batch = torch.randn(batch_size, 3, height, width, device=device)
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def forward(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast():
            return net(images)

    net.eval()
    latency = _median_ms(lambda: forward(one), device, runs, warmup)
    batch_ms = _median_ms(lambda: forward(batch), device, max(3, runs // 5), 1)
    classes = forward(one).shape[1]  # in eval mode: one image through a train-mode pooling BatchNorm would fail
    net.train()
    target = torch.randint(0, classes, (batch_size, height, width), device=device)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-6)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = nn.functional.cross_entropy(net(batch).float(), target)
        loss.backward()
        optimizer.step()

    train_step()  # AdamW's state exists from here on, as in a trial's every step but its first
    with _PeakMemory(device) as memory:
        step_ms = _median_ms(train_step, device, train_runs, 1)
    return {"latency_ms": latency, "throughput_ips": batch_size / (batch_ms / 1e3), "train_step_ms": step_ms,
            "peak_mem_mb": memory.mib,
            MEMORY_MEASURE_KEY: f"{memory.measure}, training step at batch {batch_size} in {precision}",
            DEVICE_KEY: device_kind(device)}


# ------------------------------------------------------------------ cached, robust to load
# Load only ever adds time: another process on the CPU or GPU slows a reading, never speeds it up. So a measurement
# is REPEATS readings (their median kept, with their min and max); readings that spread wider than SPREAD_LIMIT
# (relative to the median) were disturbed, and are taken again, up to ROUNDS times, keeping the fastest round. A
# cached measurement is checked against one quick reading whenever it is used: a check faster than the cached
# readings by more than CHECK_TOLERANCE means the cache holds a loaded measurement, which is measured again (the
# faster one is kept); a slower check means load now, and keeps the cache (a measurement now would be loaded too).
TIMED = {"latency_ms": -1, "train_step_ms": -1, "throughput_ips": 1}  # what load disturbs; 1: higher is faster
REPEATS = 3
ROUNDS = 2  # one retake: under sustained load every round spreads alike, and each costs REPEATS readings
SPREAD_LIMIT = 0.2  # (max - min) / median of one metric's readings
CHECK_TOLERANCE = 0.25  # how far outside the cached readings' [min, max] a quick check may fall and still agree
CHECK_RUNS = {"runs": 5, "warmup": 2, "train_runs": 2}  # measure_cost's arguments for a quick check reading
CONTENT_BYTES = 1 << 20  # an hf: folder's file is hashed whole up to this size, else its size and its first MiB


def summarise(readings: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated readings as one record: ``cost`` (each timed metric's median; every other value as the first
    reading has it, e.g. the peak memory of a fresh model), ``spread`` (each timed metric's [min, max]) and the
    ``readings`` themselves."""
    cost = dict(readings[0])
    spread, kept = {}, {}
    for name in TIMED:
        values = [float(r[name]) for r in readings if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]
        if values:
            cost[name], spread[name], kept[name] = statistics.median(values), [min(values), max(values)], values
    return {"cost": cost, "spread": spread, "readings": kept}


def relative_spread(record: dict[str, Any]) -> float:
    """The widest (max - min) / median over the record's timed metrics (0 with one reading)."""
    return max((abs(high - low) / abs(record["cost"][name]) for name, (low, high) in record["spread"].items()
                if record["cost"][name]), default=0.0)


def _faster(record: dict[str, Any], than: dict[str, Any]) -> bool:
    """Whether ``record``'s latency (else its training step) is below ``than``'s."""
    for name in ("latency_ms", "train_step_ms"):
        mine, theirs = record["cost"].get(name), than["cost"].get(name)
        if isinstance(mine, (int, float)) and isinstance(theirs, (int, float)) and mine != theirs:
            return mine < theirs
    return False


def check_disagrees(reading: dict[str, Any], record: dict[str, Any]) -> int:
    """-1 when the quick ``reading`` is slower than the cached ``record``'s readings (beyond CHECK_TOLERANCE),
    1 when it is faster (the cache holds a loaded measurement), 0 when they agree."""
    verdict = 0
    for name, sign in TIMED.items():
        value = reading.get(name)
        if name not in record["spread"] or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        low, high = record["spread"][name]
        if value < low * (1 - CHECK_TOLERANCE):
            side = -sign  # below a time: faster; below a throughput: slower
        elif value > high * (1 + CHECK_TOLERANCE):
            side = sign
        else:
            continue
        if side > 0:
            return 1
        verdict = -1
    return verdict


def measure_steady(measure: Callable[[], dict[str, Any]], repeats: int = REPEATS, rounds: int = ROUNDS
                   ) -> dict[str, Any]:
    """``repeats`` readings of ``measure()`` summarised; taken again while they spread wider than SPREAD_LIMIT, at
    most ``rounds`` times: the first steady round, else the fastest round (its spread says how noisy it was)."""
    best = None
    for attempt in range(1, rounds + 1):
        record = summarise([measure() for _ in range(repeats)])
        record["rounds"] = attempt
        if best is None or _faster(record, best):
            best = record
        if relative_spread(record) <= SPREAD_LIMIT:
            return record
    best["rounds"] = rounds
    log.warning("measured cost still spreads %.0f%% after %d rounds of %d readings (a loaded machine?): keeping "
                "the fastest round", 100 * relative_spread(best), rounds, repeats)
    return best


def _stored_key(key: dict[str, Any]) -> dict[str, Any]:
    """``key`` as its file holds it (JSON's types, the format added)."""
    return json.loads(json.dumps({**key, "format": COST_FORMAT}, sort_keys=True))


def cost_record_path(folder: str | Path, key: dict[str, Any]) -> Path:
    text = json.dumps(_stored_key(key), sort_keys=True)
    return Path(folder) / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.json"


def read_cost_record(folder: str | Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached record of ``key``, or None (none, another format, or a file that cannot be read)."""
    try:
        found = json.loads(cost_record_path(folder, key).read_text())
        if found.get("key") == _stored_key(key) and isinstance(found["cost"], dict) and \
                isinstance(found["spread"], dict):
            return found
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        pass
    return None


def cached_cost(folder: str | Path, key: dict[str, Any], measure: Callable[[], dict[str, Any]],
                check: Callable[[], dict[str, Any]] | None = None, force: bool = False) -> dict[str, Any]:
    """The measurement of ``key`` (model, variant, classes, size, device kind, precision, batch, torch version; an
    hf: folder's content) from a small JSON file in ``folder`` (one file per key, written atomically: concurrent
    trials never see half a file), else measured (``measure_steady`` over ``measure()``) and written there first.

    A cached measurement is checked against one ``check()`` reading when ``check`` is given: faster than the cached
    readings (``check_disagrees``), it is measured again and the faster measurement kept. ``force`` measures again
    whatever the cache holds, and keeps the new measurement. A file that cannot be read is measured again."""
    found = None if force else read_cost_record(folder, key)
    if found is not None:
        verdict = 0 if check is None else check_disagrees(check(), found)
        if verdict <= 0:
            if verdict < 0:
                log.info("cost of %s: a check reading is slower than the cached one (load now?): keeping the cache "
                         "(--remeasure-cost measures again)", key.get("model"))
            return found["cost"]
        log.warning("cost of %s: a check reading is faster than the cached one (measured under load?): measuring "
                    "again", key.get("model"))
    record = measure_steady(measure)
    if found is not None and not _faster(record, found):
        return found["cost"]  # the check was the outlier: the cache stays
    record = {"key": _stored_key(key), **record, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    atomic_write(cost_record_path(folder, key), lambda f: f.write(text.encode()))
    return record["cost"]


def folder_content(folder: str | Path) -> str:
    """A hash of what a model folder holds: each top-level, non-hidden file's name, size and bytes (a file over
    CONTENT_BYTES, i.e. a weight file, by its size and its first CONTENT_BYTES: a safetensors file's header, the
    name, dtype and shape of every tensor, lies there). Another model saved to the same folder hashes apart."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).expanduser().iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        with open(path, "rb") as f:
            head = f.read(CONTENT_BYTES)
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        digest.update(head)
    return digest.hexdigest()[:20]


def model_content(name: str, variant: str = "b0") -> str | None:
    """``folder_content`` of an ``hf:`` model named by a local folder, None for every other model (a registry
    name or Hub id builds the same network wherever it is read)."""
    from segmodels.registry import model_spec

    folder = getattr(model_spec(name, variant), "folder", None)
    return folder_content(folder) if folder is not None else None
