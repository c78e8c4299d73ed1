"""Streamed splits (study.data.stream) feed exactly what resident ones do; what fits is decided as documented."""

from pathlib import Path

import pytest
import torch
from torch import nn

from foundation.errors import ConfigError
from foundation.files import atomic_torch_save
from study.config import TrainConfig
from study.data import SegDataset
from study.data.stream import DATA_FRACTION, ResidentSplit, StreamedSplit, choose_placement, fits_on_device
from study.loop import evaluate, train


def tiny_split(n: int, seed: int, size: int = 8, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, classes, (n, size, size), generator=g, dtype=torch.uint8)
    masks[:, 0, 0] = 255  # an ignored pixel in every mask
    return images, masks


def mapped(tmp_path: Path, name: str, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensors as the cache hands them out: saved, then memory-mapped back."""
    path = atomic_torch_save({"images": images, "masks": masks}, tmp_path / f"{name}.pt")
    data = torch.load(path, mmap=True, weights_only=True)
    return data["images"], data["masks"]


def test_streamed_batches_equal_resident_batches_from_a_mapped_file(tmp_path: Path) -> None:
    images, masks = tiny_split(23, seed=0)
    resident = ResidentSplit(images, masks, "cpu")
    streamed = StreamedSplit(*mapped(tmp_path, "train", images, masks), "cpu")
    order = torch.randperm(23, generator=torch.Generator().manual_seed(1))
    pairs = list(zip(resident.batches(order, 5), streamed.batches(order, 5), strict=True))
    assert [len(a[0]) for a, _ in pairs] == [5, 5, 5, 5, 3]  # the last batch is the remainder
    for (idx_a, x_a, y_a), (idx_b, x_b, y_b) in pairs:
        assert torch.equal(idx_a, idx_b) and torch.equal(x_a, x_b) and torch.equal(y_a, y_b)
        assert torch.equal(x_b, images[idx_b])
    x, y = streamed.batch(order[:4])
    assert torch.equal(x, images[order[:4]]) and torch.equal(y, masks[order[:4]])
    assert list(streamed.batches(order[:0], 5)) == []


class TinyNet(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("recipe", ["report", "standard"])
def test_streamed_training_equals_resident_training(recipe: str, tmp_path: Path) -> None:
    """Same seeded permutation, flips and augmentation either way: the same loss curves and the same weights, 2
    epochs. The standard recipe's path: padded images with their valid extents, rescaled, cropped, flipped and
    distorted on the device, a poly schedule with warmup, validated against original-size labels."""
    from study.data import OriginalLabels

    standard = recipe == "standard"
    train_images, train_masks = tiny_split(13, seed=4, size=12) if standard else tiny_split(21, seed=2)
    val_images, val_masks = tiny_split(5, seed=5) if standard else tiny_split(9, seed=3)
    extra: dict = {"train": {}, "val": {}, "cfg": {}}
    if standard:
        labels = [torch.randint(0, 3, (9 + k, 11 - k), generator=torch.Generator().manual_seed(k),
                                dtype=torch.uint8) for k in range(5)]
        extra = {"train": {"valid": torch.tensor([[12 - k % 5, 12 - k % 3] for k in range(13)])},
                 "val": {"originals": OriginalLabels(torch.cat([t.reshape(-1) for t in labels]),
                                                     torch.tensor([t.shape for t in labels]))},
                 "cfg": {"base_size": (12, 10), "photometric": True, "cat_max_ratio": 0.75, "schedule": "poly",
                         "warmup": 0.2, "eval_at": "original"}}

    def run(placement: str, images: torch.Tensor, masks: torch.Tensor) -> tuple[list[dict], dict]:
        cfg = TrainConfig(model="fcn_resnet50", epochs=2, batch_size=4, image_size=8, val_every=1, device="cpu",
                          precision="fp32", lr=1e-2, data_placement=placement, **extra["cfg"])
        torch.manual_seed(0)
        model = TinyNet()
        train_set = SegDataset("pets", "train", images, masks, [], ("a", "b", "c"), **extra["train"])
        val_set = SegDataset("pets", "val", val_images, val_masks, [], ("a", "b", "c"), **extra["val"])
        result = train(cfg, train_set, val_set, model)
        return result.rows, model.state_dict()

    resident_rows, resident_state = run("device", train_images, train_masks)
    streamed_rows, streamed_state = run("host", *mapped(tmp_path, "train", train_images, train_masks))
    keys = ("epoch", "train_loss", "train_miou", "val_loss", "val_miou", "lr")
    assert [[row[k] for k in keys] for row in streamed_rows] == [[row[k] for k in keys] for row in resident_rows]
    assert resident_rows[0]["train_loss"] != resident_rows[1]["train_loss"]  # it trained
    if standard:
        assert resident_rows[0]["lr"] != resident_rows[1]["lr"]  # stepped per iteration
    assert all(torch.equal(resident_state[k], streamed_state[k]) for k in resident_state)


def test_evaluate_takes_tensors_or_a_streamed_split() -> None:
    """``analysis.score`` passes plain tensors; the loop passes a placed split: the same scores."""
    images, masks = tiny_split(11, seed=4)
    torch.manual_seed(0)
    model = TinyNet()
    seen: list[list[int]] = []
    on_tensors, loss_a = evaluate(model, images, masks, 3, batch_size=4,
                                  on_batch=lambda idx, logits, y: seen.append(idx.tolist()))
    on_split, loss_b = evaluate(model, StreamedSplit(images, masks, "cpu"), None, 3, batch_size=4)
    assert torch.equal(on_tensors.confusion, on_split.confusion) and loss_a == loss_b
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


def test_auto_placement_keeps_small_splits_resident_and_streams_what_does_not_fit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert choose_placement("auto", 10**15, cpu) == "device"  # on a CPU, host and device are the same memory
    assert choose_placement("host", 1, cpu) == "host" and choose_placement("device", 10**15, gpu) == "device"
    free, total = 30 * 2**30, 80 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, total))
    room = min(free, total * 0.25)  # a quarter of the GPU, less than what is free
    assert fits_on_device(int(DATA_FRACTION * room), gpu, share=0.25)[0]
    assert not fits_on_device(int(DATA_FRACTION * room) + 1, gpu, share=0.25)[0]
    assert not fits_on_device(int(DATA_FRACTION * free) + 1, gpu, share=1.0)[0]  # free memory bounds a whole GPU
    assert choose_placement("auto", int(DATA_FRACTION * free) + 1, gpu) == "host"
    # with the training's estimated peak (study.gpu_memory), the data may use the rest of the room
    reserve = 25 * 2**30
    assert fits_on_device(free - reserve, gpu, reserve=reserve)[0]
    assert not fits_on_device(free - reserve + 1, gpu, reserve=reserve)[0]
    assert choose_placement("auto", free - reserve + 1, gpu, reserve=lambda: reserve) == "host"
    assert choose_placement("auto", 10**15, cpu, reserve=lambda: 1 / 0) == "device"  # a CPU asks for no estimate


def test_placement_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="--data-placement"):
        TrainConfig(data_placement="gpu")
    with pytest.raises(ConfigError, match="--device-memory-share"):
        TrainConfig(device_memory_share=0)
