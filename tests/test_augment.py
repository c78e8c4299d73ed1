"""Device-side augmentation (study.augment): known answers against F.interpolate and MMSegmentation's rules, each
mask kept aligned with its image, and the same draws for the same (seed, epoch, sample) in any batch."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from study.augment import (
    OFFSETS,
    PARAMS,
    PHOTO,
    RATIO,
    AugmentSpec,
    augment_batch,
    choose_crop,
    draw_params,
    photometric_distortion,
    scaled_sizes,
)
from study.data.transforms import IMAGENET_MEAN
from study.loop import train_one_epoch


def colour_coded(n: int = 4, height: int = 48, width: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blocks of 8x8 pixels of classes 0..2 and ignore, every pixel's colour encoding its label (class * 40 + 20,
    ignore 250); each image valid over a different extent, the rest filled with a colour (200) labelled 0 that no
    output may show."""
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 4, (n, height // 8, width // 8), generator=gen)
    labels = torch.where(blocks == 3, 255, blocks).repeat_interleave(8, 1).repeat_interleave(8, 2)
    colours = torch.where(labels == 255, 250, labels * 40 + 20)
    valid = torch.tensor([[48, 64], [40, 56], [48, 32], [24, 64]])[:n]
    for k, (h, w) in enumerate(valid.tolist()):
        labels[k, h:], labels[k, :, w:], colours[k, h:], colours[k, :, w:] = 0, 0, 200, 200
    images = colours[:, None].expand(n, 3, height, width).to(torch.uint8).contiguous()
    return images, labels.to(torch.uint8), valid


def test_masks_stay_aligned_with_their_images_through_rescale_crop_and_flip() -> None:
    images, masks, valid = colour_coded()
    spec = AugmentSpec(crop_size=(32, 32), base_size=(64, 48), cat_max_ratio=0.75, photometric=False)
    checked = total = 0
    flips = set()
    for epoch in range(6):
        params = draw_params(7, epoch, torch.arange(len(images)))
        flips |= set((params[:, 1] < 0.5).tolist())
        out, labels = augment_batch(images, masks, params, spec, valid)
        assert out.shape == (4, 3, 32, 32) and labels.shape == (4, 32, 32) and labels.dtype == torch.uint8
        # interior pixels (their 3x3 neighbourhood one class, inside the crop's 1-pixel frame, which may border
        # another class outside it): bilinear blending cannot mix two labels there
        neighbours = F.max_pool2d(labels[:, None].float(), 3, 1, 1) == -F.max_pool2d(-labels[:, None].float(), 3, 1, 1)
        interior = neighbours[:, 0] & (labels != 255)
        interior[:, [0, -1]], interior[:, :, [0, -1]] = False, False
        decoded = ((out - 20) / 40).round()
        assert torch.equal(decoded[:, 0][interior], labels[interior].float())
        assert torch.equal(out[:, 0][interior], out[:, 2][interior])  # grey stays grey: no channel mixed up
        checked, total = checked + int(interior.sum()), total + labels.numel()
        assert (out != 200).all()  # nothing of the batch's padding beyond each image's valid extent
    assert checked > 0.3 * total and flips == {True, False}


def test_rescale_and_crop_equal_f_interpolate_and_padding_is_ignored() -> None:
    images, masks, valid = colour_coded(n=2)
    images = torch.randint(0, 256, images.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    spec = AugmentSpec(crop_size=(72, 96), ratio_range=(1.5, 1.5), flip_prob=0.0, photometric=False)
    out, labels = augment_batch(images, masks, draw_params(0, 1, torch.arange(2)), spec, valid)
    for k, (h, w) in enumerate(valid.tolist()):
        sh, sw = int(h * 1.5 + 0.5), int(w * 1.5 + 0.5)  # the crop holds the whole rescaled image (offset 0)
        image = F.interpolate(images[k:k + 1, :, :h, :w].float(), size=(sh, sw), mode="bilinear", align_corners=False)
        mask = F.interpolate(masks[k:k + 1, None, :h, :w].float(), size=(sh, sw), mode="nearest-exact")[0, 0]
        assert torch.allclose(out[k, :, :sh, :sw], image[0], atol=1e-3)
        assert torch.equal(labels[k, :sh, :sw], mask.to(torch.uint8))
        assert (labels[k, sh:] == 255).all() and (labels[k, :, sw:] == 255).all()
        assert torch.allclose(out[k, :, sh:, :], torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255)


def test_rescale_follows_mmcv_keeping_the_aspect_ratio() -> None:
    spec = AugmentSpec(crop_size=(512, 512), base_size=(2048, 512))
    sizes = scaled_sizes(torch.tensor([[512, 683], [1024, 2048]]), torch.tensor([1.0, 0.5], dtype=torch.float64),
                         spec)
    assert sizes.tolist() == [[512, 683], [256, 512]]  # short side capped at 512 x ratio; 2048 x 0.5 caps the long
    with pytest.raises(ValueError, match="larger than the base size"):
        AugmentSpec(crop_size=(640, 640), base_size=(2048, 512))
    with pytest.raises(ValueError, match="ratio_range"):
        AugmentSpec(crop_size=(64, 64), ratio_range=(2.0, 0.5))


def test_cat_max_ratio_takes_the_first_balanced_crop_else_the_last_draw() -> None:
    masks = torch.zeros(2, 8, 16, dtype=torch.uint8)
    masks[:, :, 12:] = 1  # only crops reaching x >= 12 hold two classes
    masks[1] = 0  # one class everywhere: no crop passes
    spec = AugmentSpec(crop_size=(8, 8), ratio_range=(1.0, 1.0), cat_max_ratio=0.75)
    params = torch.zeros(2, PARAMS, dtype=torch.float64)
    params[:, OFFSETS + 1] = 0.0  # try 0: x = 0 (one class)
    params[:, OFFSETS + 3] = 0.99  # try 1: x = 8 (4 of 8 columns class 1: balanced)
    params[:, OFFSETS + 21] = 0.5  # try 10: x = 4
    valid = torch.tensor([[8, 16], [8, 16]])
    offsets = choose_crop(masks, valid, valid, torch.tensor([[8, 8], [8, 8]]), params, spec)
    assert offsets.tolist() == [[0, 8], [0, 4]]


def test_photometric_known_answers() -> None:
    images = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)) * 255
    draws = torch.ones(2, PARAMS - PHOTO, dtype=torch.float64)  # every step off
    assert torch.equal(photometric_distortion(images, draws), images)
    draws[0, [0, 1]] = torch.tensor([0.0, 0.75], dtype=torch.float64)  # brightness: + (0.75 * 2 - 1) * 32 = +16
    draws[1, [7, 8]] = torch.tensor([0.0, 27.5 / 37], dtype=torch.float64)  # hue: floor(27.5) - 18 = 9/180 turn
    out = photometric_distortion(images, draws)
    assert torch.allclose(out[0], (images[0] + 16).clamp(0, 255))
    assert torch.allclose(out[1], TF.adjust_hue(images[1] / 255, 0.05) * 255, atol=1e-3)


def test_the_same_sample_draws_the_same_in_any_batch() -> None:
    images, masks, valid = colour_coded()
    spec = AugmentSpec(crop_size=(32, 32), base_size=(64, 48), cat_max_ratio=0.75)
    table = draw_params(3, 5, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(draw_params(3, 5, torch.tensor([2]))[0], table[2])
    assert not torch.equal(draw_params(3, 6, torch.tensor([2]))[0], table[2])  # another epoch, other draws
    batch = augment_batch(images, masks, table, spec, valid)
    alone = augment_batch(images[2:3], masks[2:3], table[2:3], spec, valid[2:3])
    assert torch.equal(batch[0][2], alone[0][0]) and torch.equal(batch[1][2], alone[1][0])
    again = augment_batch(images.float(), masks, table, spec, valid)  # float images as uint8 ones
    assert torch.equal(batch[0], again[0]) and torch.equal(batch[1], again[1])
    assert table[:, RATIO].unique().numel() == 4


def test_an_augmented_epoch_is_repeatable() -> None:
    images, masks, _ = colour_coded(n=4)
    masks = masks.masked_fill(masks == 255, 0)
    cfg = SimpleNamespace(seed=0, batch_size=2)
    spec = AugmentSpec(crop_size=(24, 24), base_size=(64, 48), cat_max_ratio=0.75)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        net = torch.nn.Conv2d(3, 3, 3, padding=1)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
        scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=2)
        stats = train_one_epoch(net, optimizer, images, masks, cfg, 3, num_classes=3, ignore_index=255, bf16=False,
                                track_metric=True, augment=spec, scheduler=scheduler)
        weights.append(net.weight.detach().clone())
        assert stats.images == 4 and scheduler.last_epoch == 2  # stepped after each of the 2 steps
    assert torch.equal(weights[0], weights[1])
