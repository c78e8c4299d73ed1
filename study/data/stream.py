"""Where a split's uint8 tensors live while a trial trains, and how its batches reach the device.

Two placements with one interface, ``batches(order, batch_size)`` (and ``batch(idx)``):

- ``ResidentSplit``: the whole split moved to the training device once; a batch is ``images[idx]`` there.
  The fast path, and the only one on a CPU, where "device" and "host" are the same memory.
- ``StreamedSplit``: the split stays in host memory, memory-mapped from the on-disk cache
  (``study.data.cache`` loads it with ``mmap=True``), so a split larger than RAM is paged in as read.
  Each batch is gathered into a reusable pinned staging buffer (pinning the mapped split itself would read
  it all into page-locked RAM) and copied to the device with ``non_blocking=True`` on a side CUDA stream,
  by one background thread that prepares batch k+1 while the training step of batch k runs.

Either may carry host-side extras (``attach``): each padded image's ``valid`` extent and the split's labels at
their original sizes (``originals``), which stay in host memory (memory-mapped) and are read image by image.

Both return exactly the uint8 values of the same indices, so the seeded permutation and flips (which stay
on the device, in ``study.loop``) give the same training either way.

What fits (``fits_on_device``): the trial's room on the GPU is ``min(free, total x device_memory_share)``
from ``torch.cuda.mem_get_info`` once the model is on the device. The train + val bytes must fit in that
room less the trial's estimated peak training memory (``study.gpu_memory``: weights, gradients, AdamW's
three amsgrad buffers, the batch's saved activations, a fixed overhead), an upper estimate measured on
the CPU for the model at its image and batch size. Where no estimate can be made, at most
``DATA_FRACTION`` (half) of the room holds data and the other half is the margin.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Union

import torch

if TYPE_CHECKING:
    from study.config import TrainConfig

log = logging.getLogger(__name__)

# Without an estimate of the training's own peak, at most this share of the trial's GPU memory holds data.
DATA_FRACTION = 0.5
STAGING_SLOTS = 2  # pinned buffers: one being copied to the device while the next is gathered

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (indices on the CPU or device, images, masks)


class ResidentSplit:
    """A split whose uint8 tensors sit on ``device`` (moved once); batches are cut there."""

    placement = "device"
    valid: torch.Tensor | None = None  # (N, 2) on the host: ``attach``
    originals: object | None = None

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, device: torch.device | str | None = None) -> None:
        device = torch.device(device) if device is not None else images.device
        self.images, self.masks = images.to(device), masks.to(device)
        self.device = device

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.device)
        return self.images.index_select(0, idx), self.masks.index_select(0, idx)

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        """``(idx, images, masks)`` for consecutive ``batch_size`` slices of ``order`` (moved to the device once)."""
        order = order.to(self.device)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield idx, self.images.index_select(0, idx), self.masks.index_select(0, idx)  # images[idx], faster


class StreamedSplit:
    """A split kept in host memory (e.g. memory-mapped); each batch is copied to ``device`` one step ahead."""

    placement = "host"
    valid: torch.Tensor | None = None  # (N, 2) on the host: ``attach``
    originals: object | None = None

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, device: torch.device | str) -> None:
        self.images, self.masks = images.cpu(), masks.cpu()
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())  # the worker thread must name it
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.slots: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.copied: list[torch.cuda.Event | None] = [None] * STAGING_SLOTS  # each slot's last copy

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch, without prefetching (``batches`` overlaps the copies with training)."""
        return self._arrive(*self._load(idx.cpu(), 0))

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        """As ``ResidentSplit.batches``; the next batch is gathered and copied while the caller trains on this one.

        ``idx`` stays on the CPU. The images/masks handed out are fresh device tensors (the staging buffers
        are never handed out), so a caller may keep them.
        """
        order = order.cpu()
        chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        if not chunks:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segstudy-stream") as pool:
            pending = pool.submit(self._load, chunks[0], 0)
            for k, idx in enumerate(chunks):
                loaded = pending.result()
                if k + 1 < len(chunks):
                    pending = pool.submit(self._load, chunks[k + 1], (k + 1) % STAGING_SLOTS)
                yield (idx, *self._arrive(*loaded))

    def _load(self, idx: torch.Tensor, slot: int) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]:
        """Gather ``idx`` on the host; on CUDA through pinned ``slot`` and an async copy on the side stream."""
        if not self.cuda:
            return self.images.index_select(0, idx), self.masks.index_select(0, idx), None
        with torch.cuda.device(self.device):
            staged_images, staged_masks = self._staging(slot, len(idx))
            if self.copied[slot] is not None:
                self.copied[slot].synchronize()  # the slot's previous copy must be done before it is overwritten
            torch.index_select(self.images, 0, idx, out=staged_images)
            torch.index_select(self.masks, 0, idx, out=staged_masks)
            with torch.cuda.stream(self.stream):
                images = staged_images.to(self.device, non_blocking=True)
                masks = staged_masks.to(self.device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.stream)
            self.copied[slot] = done
        return images, masks, done

    def _arrive(self, images: torch.Tensor, masks: torch.Tensor,
                done: torch.cuda.Event | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Make the training stream wait for the copy (on the GPU, not the host) and own the tensors."""
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            images.record_stream(current)  # their memory is not reused until the training stream is done
            masks.record_stream(current)
        return images, masks

    def _staging(self, slot: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of ``rows`` rows of pinned ``slot``, (re)allocated when a larger batch comes."""
        if not self.slots or self.slots[0][0].shape[0] < rows:
            for event in self.copied:  # no copy may still be reading the old buffers
                if event is not None:
                    event.synchronize()
            self.slots = [(torch.empty((rows, *self.images.shape[1:]), dtype=self.images.dtype, pin_memory=True),
                           torch.empty((rows, *self.masks.shape[1:]), dtype=self.masks.dtype, pin_memory=True))
                          for _ in range(STAGING_SLOTS)]
        images, masks = self.slots[slot]
        return images[:rows], masks[:rows]


Split = Union[ResidentSplit, StreamedSplit]


def as_split(images: torch.Tensor | Split, masks: torch.Tensor | None = None) -> Split:
    """A placed split as is; plain tensors (e.g. ``analysis.score``'s) as a ``ResidentSplit`` where they are."""
    if isinstance(images, (ResidentSplit, StreamedSplit)):
        return images
    if masks is None:
        raise TypeError("as_split: masks are required with an images tensor")
    return ResidentSplit(images, masks)


def attach(split: Split, valid: torch.Tensor | None = None, originals: object | None = None) -> Split:
    """``split`` carrying each padded image's ``valid`` (N, 2) extent and the labels at their original sizes
    (``study.data.cache.OriginalLabels``), both kept on the host: ``study.loop`` reads them (None: none)."""
    split.valid, split.originals = (valid.cpu() if valid is not None else None), originals
    return split


def split_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def fits_on_device(nbytes: int, device: torch.device, share: float = 1.0,
                   reserve: int | None = None) -> tuple[bool, str]:
    """Whether ``nbytes`` of data fit the trial's room on ``device`` less ``reserve`` (its training's estimated
    peak; None: keep ``1 - DATA_FRACTION`` of the room free), and why (for the log)."""
    if device.type != "cuda":
        return True, f"{device.type}: the host's memory is the device's"
    free, total = torch.cuda.mem_get_info(device)
    room = min(free, total * share)
    limit = room - reserve if reserve is not None else DATA_FRACTION * room
    margin = f"less {gib(reserve)} for training" if reserve is not None else f"x {DATA_FRACTION:g}"
    verdict = "fit" if nbytes <= limit else "do not fit"
    return nbytes <= limit, (f"{gib(nbytes)} of data {verdict} min(free {gib(free)}, {share:g} x {gib(total)}) "
                             f"{margin}")


def training_reserve(cfg: TrainConfig, num_classes: int) -> int | None:
    """The trial's estimated peak training memory (``study.gpu_memory``, with the augmentation's temporaries when
    the recipe has a base scale), or None where it cannot be estimated."""
    from study.gpu_memory import augment_bytes, estimate_peak_bytes, training_memory

    try:
        parameters, activations = training_memory(cfg.model, cfg.variant, num_classes, *cfg.image_size)
    except Exception as exc:  # an estimate must never stop a trial: DATA_FRACTION decides instead
        log.warning("no training memory estimate for %s (%s); data may use %.0f%% of the GPU's room",
                    cfg.model, exc, 100 * DATA_FRACTION)
        return None
    augmenting = augment_bytes(cfg.batch_size, tuple(cfg.image_size), max(cfg.base_size)) if cfg.base_size else 0
    return estimate_peak_bytes(parameters, activations, cfg.batch_size) + augmenting


def choose_placement(requested: str, nbytes: int, device: torch.device, share: float = 1.0,
                     reserve: Callable[[], int | None] | None = None) -> str:
    """``device`` or ``host`` for ``--data-placement`` ``requested`` (auto, device, host); ``reserve()`` (the
    training's own peak bytes, see ``fits_on_device``) is asked only where auto must decide on a GPU."""
    if requested != "auto":
        return requested
    needs = reserve() if reserve is not None and device.type == "cuda" else None
    fits, why = fits_on_device(nbytes, device, share, needs)
    placement = "device" if fits else "host"
    log.info("data placement %s: %s", placement, why)
    return placement


def place(images: torch.Tensor, masks: torch.Tensor, device: torch.device, placement: str) -> Split:
    """The split's tensors as a ``ResidentSplit`` (``device``) or a ``StreamedSplit`` (``host``)."""
    if placement == "device":
        return ResidentSplit(images, masks, device)
    return StreamedSplit(images, masks, device)


def place_splits(splits: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device, requested: str = "auto",
                 share: float = 1.0, reserve: Callable[[], int | None] | None = None) -> list[Split]:
    """Place every split the same way, judged on their bytes together (a trial holds train and val at once)."""
    nbytes = split_bytes(*(t for pair in splits for t in pair))
    placement = choose_placement(requested, nbytes, device, share, reserve)
    if placement == "host" and device.type == "cuda":
        log.info("streaming %s of data from host memory to %s batch by batch", gib(nbytes), device)
    return [place(images, masks, device, placement) for images, masks in splits]


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"
