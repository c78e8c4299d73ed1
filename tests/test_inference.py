"""Evaluation at the label's own resolution (study.inference): known confusion matrices, sliding windows against
whole-image inference, MMSegmentation's window grid and test scale."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from study.inference import evaluate_images, infer, rescale_size, slide_logits, window_starts


class FixedLogits(torch.nn.Module):
    """Returns the same (1, K, 2, 2) logits whatever it is given: a model whose output is known."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[-2:] == (2, 2)
        return self.logits.expand(len(images), -1, -1, -1)


def test_miou_at_the_original_resolution_has_a_known_confusion_matrix() -> None:
    # predicted classes per quadrant: [[0, 1], [1, 2]]; resized bilinearly 2x2 -> 4x4, each quadrant keeps its class
    pred = torch.tensor([[0, 1], [1, 2]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(2, 0, 1)[None].float() * 5
    label = torch.tensor([[0, 0, 1, 1],
                          [0, 2, 1, 255],
                          [1, 1, 2, 2],
                          [0, 1, 2, 2]], dtype=torch.uint8)
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)  # the input size; the label is twice as large
    seen = []
    metric, loss = evaluate_images(FixedLogits(logits), [(image, label)], 3,
                                   on_image=lambda k, lg, y: seen.append((k, tuple(lg.shape), tuple(y.shape))))
    # rows: target, columns: prediction. Target 0: 3 predicted 0 (top-left), 1 predicted 1 (bottom-left);
    # target 1: 3 in the top-right quadrant, 3 in the bottom-left; target 2: 1 in the top-left, 4 bottom-right.
    assert metric.confusion_matrix().tolist() == [[3, 1, 0], [0, 6, 0], [1, 0, 4]]
    assert metric.miou() == pytest.approx((3 / 5 + 6 / 7 + 4 / 5) / 3)
    assert seen == [(0, (1, 3, 4, 4), (1, 4, 4))] and loss > 0


def test_sliding_windows_equal_whole_image_inference() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    images = torch.randn(2, 3, 20, 28)
    with torch.no_grad():
        whole = infer(conv, images)
        assert torch.equal(slide_logits(conv, images, (32, 32), (16, 16)), whole)  # one window holds the image
        pointwise = torch.nn.Conv2d(3, 4, 1)  # no context: every window agrees where they overlap
        slid = infer(pointwise, images, mode="slide", window=(8, 12), stride=(5, 7))
        assert torch.allclose(slid, pointwise(images), atol=1e-6)


def test_mmseg_grid_test_scale_and_bad_windows() -> None:
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # the last window moved back to end at the border
    assert window_starts(3, 4, 3) == [0]
    assert rescale_size(512, 683, (2048, 512)) == (512, 683)
    assert rescale_size(1024, 2048, (2048, 512)) == (512, 1024)
    with pytest.raises(ValueError, match="smaller than its stride"):
        infer(torch.nn.Identity(), torch.zeros(1, 3, 8, 8), mode="slide", window=(4, 4), stride=(5, 4))
    logits = infer(lambda x: x[:, :2], torch.zeros(1, 3, 100, 50), out_size=(40, 30), test_scale=(64, 32))
    assert logits.shape == (1, 2, 40, 30)


def test_score_at_the_original_resolution_saves_indexed_masks_that_recompute_its_miou(
        toy_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    from analysis.score import original_pairs, score_checkpoint
    from segmodels import build_model
    from segmodels.toy import write_tiny_model
    from study.config import TrainConfig
    from study.data import Labels
    from study.data.formats import open_source
    from study.metrics import SegMetric

    tiny = f"hf:{write_tiny_model(tmp_path / 'tiny', 'segformer', num_classes=3)}"
    cfg = TrainConfig(dataset="pets", data_root=str(toy_root), model=tiny, image_size=32, device="cpu")
    torch.manual_seed(0)
    model = build_model(tiny, 3)
    torch.save({"config": cfg.to_dict(), "class_names": ["pet", "background", "boundary"],
                "model_state": model.state_dict()}, tmp_path / "best.pt")
    result = score_checkpoint(tmp_path / "best.pt", "pets", toy_root, "val", "cpu", eval_at="original",
                              save_predictions=tmp_path / "masks")
    pairs = list(original_pairs("pets", "val", toy_root, Labels.of(cfg)))
    files = sorted((tmp_path / "masks").iterdir())
    assert len(files) == len(pairs) == result["images"] and result["eval_at"] == "original"
    stems = [f.stem for f in open_source("pets", "val", toy_root).image_files]
    recomputed = SegMetric(3)
    for stem, (_, label) in zip(stems, pairs, strict=True):
        mask = Image.open(tmp_path / "masks" / f"{stem}.png")
        assert mask.mode == "P" and mask.size == (label.shape[1], label.shape[0])
        recomputed.update(torch.from_numpy(np.array(mask)).long()[None], label.long()[None])
    assert recomputed.confusion_matrix().tolist() == result["confusion_matrix"]
    assert sum(map(sum, result["confusion_matrix"])) > result["images"] * 32 * 32  # labels larger than the input
