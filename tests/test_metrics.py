import math

import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

from study.metrics import SegMetric


def random_batch(num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, num_classes, 16, 16, generator=g)
    target = torch.randint(0, num_classes, (4, 16, 16), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    return logits, target


@pytest.mark.parametrize("num_classes", [3, 19])
def test_matches_torchmetrics_with_ignored_pixels(num_classes: int) -> None:
    ours = SegMetric(num_classes)
    jaccard = MulticlassJaccardIndex(num_classes, average=None, ignore_index=255)
    confusion = MulticlassConfusionMatrix(num_classes, ignore_index=255)
    for seed in range(3):
        logits, target = random_batch(num_classes, seed)
        ours.update(logits, target)
        jaccard.update(logits.argmax(1), target)
        confusion.update(logits.argmax(1), target)
    assert torch.equal(ours.confusion_matrix(), confusion.compute())
    torch.testing.assert_close(ours.per_class_iou().float(), jaccard.compute().float())
    assert ours.miou() == pytest.approx(float(jaccard.compute().mean()), abs=1e-6)
    valid = torch.cat([random_batch(num_classes, s)[1].flatten() for s in range(3)]) != 255
    correct = sum(int((scores.argmax(1) == t)[t != 255].sum())
                  for scores, t in (random_batch(num_classes, s) for s in range(3)))
    assert ours.pixel_accuracy() == pytest.approx(correct / int(valid.sum()))


def test_absent_classes_are_left_out_of_the_mean() -> None:
    metric = SegMetric(4)
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 0, 1, 2]])  # class 3 absent from both; class 2 predicted only
    metric.update(pred, target)
    iou = metric.per_class_iou()
    assert math.isnan(iou[3]) and iou[2] == 0
    assert metric.miou() == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def test_perfect_prediction_and_reset_and_merge() -> None:
    logits, target = random_batch(3, 7)
    perfect = torch.where(target == 255, torch.zeros_like(target), target)
    a, b = SegMetric(3), SegMetric(3)
    a.update(perfect[:2], target[:2])
    b.update(perfect[2:], target[2:])
    assert a.merge(b).miou() == 1.0 and a.pixel_accuracy() == 1.0
    whole = SegMetric(3)
    whole.update(perfect, target)
    assert torch.equal(whole.confusion_matrix(), a.confusion_matrix())
    a.reset()
    assert int(a.confusion.sum()) == 0 and math.isnan(a.miou())


def test_rejects_labels_outside_the_classes() -> None:
    with pytest.raises(ValueError, match="outside"):
        SegMetric(3).update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 5))
