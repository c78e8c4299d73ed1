"""Training augmentation on the device, for a whole batch at once: MMSegmentation's train pipeline
(``RandomResize`` keeping the aspect ratio, ``RandomCrop`` with ``cat_max_ratio``, ``RandomFlip``,
``PhotoMetricDistortion``) as batched torch ops on whatever device the batch lives on.

Each sample's parameters are drawn by ``draw_params`` from a CPU ``torch.Generator`` seeded by (seed, epoch,
sample index), so they depend neither on the batch a sample lands in nor on the device: a resumed run draws
what a run never stopped drew. The table is drawn once per epoch on the CPU and moved to the device once (as
the loop does with its flips); ``augment_batch`` then works from it without any host-device synchronisation.

Why batched index arithmetic rather than kornia or ``grid_sample``: rescale, crop, flip and padding together are
one axis-aligned map from each output pixel to a source row and column, per sample. The mask is gathered at
those rows and columns with ``F.interpolate``'s ``nearest-exact`` rule (pixel centres, as the cache resizes masks;
cv2's plain nearest, which MMSegmentation uses, is shifted by half a source pixel and so misaligns masks with
their bilinearly resized images); the image is
blended from the two neighbouring rows, then the two neighbouring columns, with ``F.interpolate``'s bilinear rule
(``align_corners=False``, edges clamped to each image's own valid extent, so a padded batch never blends in its
padding). Nothing is resampled twice, every sample keeps its own scale, and no extra dependency is needed; kornia
would draw from torch's global generator and knows neither valid extents nor ``cat_max_ratio``.

Images are (N, 3, H, W) uint8 or float with values in 0..255, masks (N, H, W) integer in 0..255 (the cache's
uint8); ``valid`` (N, 2) gives each image's valid (height, width) from its top-left corner (None: all of it).
The output image is float32 in 0..255 (for ``study.data.transforms.normalize``); padding is the ImageNet mean
colour (0 once normalised, as MMSegmentation pads after normalising) and labelled ``ignore_index``.
"""

from __future__ import annotations

import torch

from study.data.transforms import IMAGENET_MEAN
from study.recipe_checks import AugmentSpec

CROP_TRIES = 10  # MMSegmentation's RandomCrop: up to 10 crops checked against cat_max_ratio, then an 11th taken
BRIGHTNESS_DELTA = 32.0  # PhotoMetricDistortion's defaults
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18  # in OpenCV's hue units (180 per turn): +-0.1 turn
# The columns of a parameter table (``draw_params``): one uniform draw each, always all of them, so switching
# one step off never changes what another step draws.
RATIO, FLIP, OFFSETS = 0, 1, 2  # OFFSETS: (CROP_TRIES + 1) x (row, column)
PHOTO = OFFSETS + 2 * (CROP_TRIES + 1)  # brightness on, delta, contrast first, contrast on, alpha, saturation on,
PARAMS = PHOTO + 9  # alpha, hue on, delta


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """One generator seed per (seed, epoch, sample index), distinct for index < 1e9 and epoch < 100003."""
    return ((seed * 100_003 + epoch) * 1_000_000_007 + index) % (2**63)


def draw_params(seed: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
    """The (len(indices), PARAMS) float64 table of uniform draws in [0, 1), one row per sample index, on the CPU."""
    rows = [torch.rand(PARAMS, dtype=torch.float64, generator=torch.Generator().manual_seed(
        sample_seed(seed, epoch, int(i)))) for i in indices.tolist()]
    return torch.stack(rows) if rows else torch.empty(0, PARAMS, dtype=torch.float64)


def scaled_sizes(valid: torch.Tensor, ratio: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """(N, 2) int64 sizes after ``RandomResize``: mmcv's ``rescale_size`` of each valid extent to the base size
    x ratio, keeping the aspect ratio."""
    h, w = valid[:, 0].double(), valid[:, 1].double()
    if spec.base_size is None:
        factor = ratio
    else:
        long_t = (max(spec.base_size) * ratio).floor()  # mmseg: int(scale * ratio)
        short_t = (min(spec.base_size) * ratio).floor()
        factor = torch.minimum(long_t / torch.maximum(h, w), short_t / torch.minimum(h, w))
    return torch.stack([(h * factor + 0.5).floor(), (w * factor + 0.5).floor()], 1).long().clamp(min=1)


def augment_batch(images: torch.Tensor, masks: torch.Tensor, params: torch.Tensor, spec: AugmentSpec,
                  valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale, crop (padded to ``spec.crop_size``), flip and (with ``spec.photometric``) distort a batch with
    each sample's row of ``params`` (``draw_params``, on the batch's device): (float32 images, masks)."""
    device = images.device
    params = params.to(device)
    n, _, height, width = images.shape
    if valid is None:  # filled on the device: a tensor built from a list would wait for the GPU's queue
        valid = torch.stack([torch.full((n,), height, device=device), torch.full((n,), width, device=device)], 1)
    valid = valid.to(device).long()
    low, high = spec.ratio_range
    scaled = scaled_sizes(valid, low + params[:, RATIO] * (high - low), spec)
    crop = torch.stack([scaled[:, 0].clamp(max=spec.crop_size[0]), scaled[:, 1].clamp(max=spec.crop_size[1])], 1)
    offsets = choose_crop(masks, valid, scaled, crop, params, spec)
    flip = params[:, FLIP] < spec.flip_prob
    rows = _source_lines(valid[:, 0], scaled[:, 0], offsets[:, 0], crop[:, 0], spec.crop_size[0], flip=None)
    cols = _source_lines(valid[:, 1], scaled[:, 1], offsets[:, 1], crop[:, 1], spec.crop_size[1], flip=flip)
    out_masks = _gather_nearest(masks, rows, cols, spec.ignore_index)
    out_images = _gather_bilinear(images, rows, cols)
    if spec.photometric:
        out_images = photometric_distortion(out_images, params[:, PHOTO:])
    pad = (~rows["inside"])[:, :, None] | (~cols["inside"])[:, None, :]
    for channel, mean in enumerate(IMAGENET_MEAN):
        out_images[:, channel].masked_fill_(pad, mean * 255)
    return out_images, out_masks


def _source_lines(size: torch.Tensor, scaled: torch.Tensor, offset: torch.Tensor, crop: torch.Tensor, out: int,
                  flip: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """For each of ``out`` output lines (rows or columns) of every sample: the nearest source line, the two
    bilinear neighbours and their weight, and whether it lies inside the crop (else padding)."""
    j = torch.arange(out, device=size.device).expand(len(size), out)
    inside = j < crop[:, None]
    if flip is not None:
        j = torch.where(flip[:, None] & inside, crop[:, None] - 1 - j, j)
    u = (j + offset[:, None]).clamp(max=scaled[:, None] - 1)  # padding lines read a valid line, then are masked
    scale = size.float() / scaled.float()  # F.interpolate's float32 input/output ratio
    last = size[:, None] - 1
    nearest = torch.minimum(((u.float() + 0.5) * scale[:, None]).floor().long(), last)
    source = ((u.float() + 0.5) * scale[:, None] - 0.5).clamp(min=0)
    low = torch.minimum(source.floor().long(), last)
    high = torch.minimum(low + 1, last)
    return {"nearest": nearest, "low": low, "high": high, "weight": source - low.float(), "inside": inside}


def _gather_nearest(masks: torch.Tensor, rows: dict, cols: dict, ignore_index: int) -> torch.Tensor:
    """Masks at each output pixel's nearest source pixel; padding labelled ``ignore_index``."""
    n, height, width = masks.shape
    flat = (torch.arange(n, device=masks.device)[:, None, None] * height + rows["nearest"][:, :, None]) * width
    out = masks.reshape(-1)[flat + cols["nearest"][:, None, :]]
    pad = (~rows["inside"])[:, :, None] | (~cols["inside"])[:, None, :]
    return out.masked_fill(pad, ignore_index)


def _gather_bilinear(images: torch.Tensor, rows: dict, cols: dict) -> torch.Tensor:
    """Images resampled bilinearly: rows blended first (on the source width), then columns; float32."""
    n, channels, _, width = images.shape
    r_index = lambda key: rows[key][:, None, :, None].expand(n, channels, -1, width)  # noqa: E731
    top = images.gather(2, r_index("low")).float()
    bottom = images.gather(2, r_index("high")).float()
    blended = torch.lerp(top, bottom, rows["weight"][:, None, :, None])
    c_index = lambda key: cols[key][:, None, None, :].expand(n, channels, blended.shape[2], -1)  # noqa: E731
    left, right = blended.gather(3, c_index("low")), blended.gather(3, c_index("high"))
    return torch.lerp(left, right, cols["weight"][:, None, None, :])


def choose_crop(masks: torch.Tensor, valid: torch.Tensor, scaled: torch.Tensor, crop: torch.Tensor,
                params: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """(N, 2) crop offsets in the rescaled image: MMSegmentation's ``RandomCrop`` draws a crop, and with
    ``cat_max_ratio`` < 1 draws again (up to ``CROP_TRIES`` times) while one class covers ``cat_max_ratio`` or
    more of the crop's labelled pixels or only one class is present; the last draw is then taken unchecked."""
    margin = (scaled - crop + 1).double()
    offsets = [(params[:, OFFSETS + 2 * k: OFFSETS + 2 * k + 2] * margin).floor().long()
               for k in range(CROP_TRIES + 1)]
    if spec.cat_max_ratio >= 1:
        return offsets[0]
    passed = []
    for k in range(CROP_TRIES):
        rows = _source_lines(valid[:, 0], scaled[:, 0], offsets[k][:, 0], crop[:, 0], spec.crop_size[0], None)
        cols = _source_lines(valid[:, 1], scaled[:, 1], offsets[k][:, 1], crop[:, 1], spec.crop_size[1], None)
        passed.append(_balanced(_gather_nearest(masks, rows, cols, spec.ignore_index), spec))
        if masks.device.type == "cpu" and bool(torch.stack(passed).any(0).all()):
            break  # free on the CPU; on a GPU every try is computed so the host never waits
    passed_t = torch.stack(passed, 1)
    first = torch.where(passed_t.any(1), passed_t.int().argmax(1), CROP_TRIES)
    table = torch.stack(offsets, 1)
    return table[torch.arange(len(first), device=table.device), first]


def _balanced(crops: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """(N,) whether each crop holds more than one class and no class reaches ``cat_max_ratio`` of its labelled
    pixels (the ignore label and padding do not count)."""
    n = crops.shape[0]
    labels = crops.reshape(n, -1).long()
    labels = torch.where(labels == spec.ignore_index, 256, labels.clamp(0, 255))
    keys = (torch.arange(n, device=crops.device)[:, None] * 257 + labels).reshape(-1)
    counts = torch.bincount(keys, minlength=n * 257).view(n, 257)[:, :256]
    total = counts.sum(1)
    return ((counts > 0).sum(1) > 1) & (counts.max(1).values < spec.cat_max_ratio * total)


def photometric_distortion(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """MMSegmentation's ``PhotoMetricDistortion`` on float images in 0..255, per sample: each step with
    probability 0.5: brightness + U(-32, 32); contrast x U(0.5, 1.5), before or after the colour steps (equally
    likely); saturation x U(0.5, 1.5); hue + an integer in -18..18 of 180 per turn. Clipped to 0..255 after
    each step, as there. ``draws`` (N, 9): the sample's uniform draws. On the CPU only the samples with a colour
    step go through HSV (choosing them costs nothing there); on a GPU all do, so the host never waits."""
    on = draws[:, [0, 3, 5, 7]] < 0.5  # brightness, contrast, saturation, hue
    view = lambda t: t.float().view(-1, 1, 1, 1)  # noqa: E731
    delta = torch.where(on[:, 0], (draws[:, 1] * 2 - 1) * BRIGHTNESS_DELTA, 0.0)
    contrast_first = draws[:, 2] < 0.5
    alpha = torch.where(on[:, 1], CONTRAST_RANGE[0] + draws[:, 4] * (CONTRAST_RANGE[1] - CONTRAST_RANGE[0]), 1.0)
    saturation = torch.where(on[:, 2], SATURATION_RANGE[0] + draws[:, 6] * (SATURATION_RANGE[1] -
                                                                            SATURATION_RANGE[0]), 1.0)
    hue = torch.where(on[:, 3], (draws[:, 8] * (2 * HUE_DELTA + 1)).floor() - HUE_DELTA, 0.0) / 180
    images = (images + view(delta)).clamp_(0, 255)
    images.mul_(view(torch.where(contrast_first, alpha, 1.0))).clamp_(0, 255)
    colour = on[:, 2] | on[:, 3]
    if images.device.type == "cpu":
        rows = colour.nonzero()[:, 0]
        images[rows] = _shift_colour(images[rows], saturation[rows], hue[rows])
    else:
        images = torch.where(view(colour) > 0, _shift_colour(images, saturation, hue), images)
    return images.mul_(view(torch.where(contrast_first, 1.0, alpha))).clamp_(0, 255)


def _shift_colour(images: torch.Tensor, saturation: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """Saturation x ``saturation`` (clipped to 1) and hue + ``hue`` turns, in HSV; images in 0..255."""
    hsv = rgb_to_hsv(images / 255)
    hsv[:, 0].add_(hue.float().view(-1, 1, 1)).remainder_(1.0)
    hsv[:, 1].mul_(saturation.float().view(-1, 1, 1)).clamp_(0, 1)
    return hsv_to_rgb(hsv).mul_(255)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in 0..1 -> HSV in 0..1 (hue in turns)."""
    r, g, b = rgb.unbind(1)
    maxc, minc = rgb.amax(1), rgb.amin(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), 0.0)
    d = delta.clamp(min=1e-12)
    h = torch.where(maxc == r, (g - b) / d, torch.where(maxc == g, 2 + (b - r) / d, 4 + (r - g) / d))
    h = torch.where(delta > 0, (h / 6).remainder_(1.0), 0.0)
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_hsv``: channel n is V - V S clamp(min(k, 4 - k), 0, 1) with k = (n + 6 H) mod 6 for
    n = 5 (red), 3 (green), 1 (blue), the closed form that needs no case per hue sector."""
    h, s, v = hsv.unbind(1)
    chroma = v * s
    channels = []
    for n in (5, 3, 1):
        k = (h * 6 + n).remainder_(6)
        channels.append(v - chroma * torch.minimum(k, 4 - k).clamp_(0, 1))
    return torch.stack(channels, 1)
