"""The recipe options wired through the loop, the cache and the scoring: an augmented trial (base scale, crop,
photometric, poly with warmup, parameter groups) trains and resumes exactly; validation at the original resolution
has a known answer and equals a recomputation from the label files; the report recipe's cache stays as it was."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from study.config import TrainConfig
from study.data import Layout, build_dataset
from study.data.cache import cache_key
from study.data.formats import open_source
from study.data.transforms import normalize
from study.inference import rescale_size
from study.loop import evaluate
from study.run_trial import run_local
from study.trial import build_trial_model, load_splits

BASE = (64, 40)  # LONGxSHORT: the toy pets (72..128 px a side) stored at 40..64 px, padded per split


class Crash(Exception):
    """Stands for the process dying after a chosen validation."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    from segmodels.toy import write_tiny_model

    return f"hf:{write_tiny_model(tmp_path_factory.mktemp('tiny'), 'segformer', num_classes=3)}"


def augmented(root: Path, model: str, **changes) -> TrainConfig:
    base = dict(dataset="pets", data_root=str(root), model=model, epochs=4, batch_size=8, image_size=32, lr=2e-3,
                seed=3, device="cpu", precision="fp32", base_size=BASE, cat_max_ratio=0.75, photometric=True,
                schedule="poly", warmup=0.2, poly_power=0.9, head_lr_mult=10.0, norm_decay_mult=0.0,
                eval_at="original")
    return TrainConfig(**{**base, **changes})


def test_an_augmented_trial_trains_and_resumes_exactly(small_toy_root: Path, cache_dir: Path, tmp_path: Path,
                                                       tiny: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """study.run_trial trains the augmented recipe; one that dies after epoch 2's last.pt and resumes with
    ``--resume`` ends bit-identical to one never stopped."""
    from study import run_trial

    cfg = augmented(small_toy_root, tiny)
    full = run_local(cfg, tmp_path / "full")
    real_save = run_trial.atomic_torch_save

    def dying_save(data: dict, path: Path) -> Path:
        real_save(data, path)
        if Path(path).name == "last.pt" and data["epoch"] == 2:
            raise Crash

    monkeypatch.setattr(run_trial, "atomic_torch_save", dying_save)
    with pytest.raises(Crash):
        run_local(cfg, tmp_path / "split")
    monkeypatch.setattr(run_trial, "atomic_torch_save", real_save)
    resumed = run_local(cfg, tmp_path / "split", resume=True)
    assert [r["epoch"] for r in full.rows] == [2, 4] and [r["epoch"] for r in resumed.rows] == [4]
    assert resumed.rows[0] == {**full.rows[-1], "images_per_s": resumed.rows[0]["images_per_s"]}
    end, end_resumed = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("full", "split"))
    assert all(torch.equal(v, end_resumed["model_state"][k]) for k, v in end["model_state"].items())
    assert end["scheduler"] == end_resumed["scheduler"] and end["optimizer"]["param_groups"] == \
        end_resumed["optimizer"]["param_groups"]
    train_set, val_set = load_splits(cfg)
    assert full.rows[0]["lr"] != full.rows[1]["lr"]  # the schedule moved (per iteration, poly after warmup)
    assert 0 < full.rows[-1]["val_miou"] <= 1
    # stored as the recipe needs: train padded at the base scale with its extents, val labels as on disk
    assert train_set.valid is not None and len(set(map(tuple, train_set.valid.tolist()))) > 1
    assert tuple(train_set.images.shape[-2:]) == tuple(train_set.valid.max(0).values.tolist())
    source = open_source("pets", "val", small_toy_root)
    assert val_set.originals.shapes == [(im.height, im.width) for im, _ in map(source.dataset.__getitem__,
                                                                                 source.indices)]


class Constant(torch.nn.Module):
    """Logits that predict class ``k`` everywhere, at the input's size."""

    def __init__(self, k: int, classes: int = 3) -> None:
        super().__init__()
        self.k, self.classes, self.w = k, classes, torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(torch.full(x.shape[:1] + x.shape[2:], self.k), self.classes).permute(0, 3, 1, 2).float()


def disk_labels(root: Path, split: str) -> list[np.ndarray]:
    source = open_source("pets", split, root)
    return [source.label_to_class(np.asarray(source.dataset[i][1]), source.label_files[k])
            for k, i in enumerate(source.indices)]


@pytest.mark.parametrize("base_size", [None, BASE])
def test_validation_at_the_original_resolution_has_a_known_answer(small_toy_root: Path, cache_dir: Path,
                                                                  base_size) -> None:
    """A model that predicts class 1 everywhere: the confusion matrix's column 1 holds exactly the labelled
    pixels of each class in the label files on disk, padding and resizing counting for nothing."""
    val = build_dataset("pets", "val", small_toy_root, 32, cache_dir=cache_dir, layout=Layout(base_size, True))
    metric, _ = evaluate(Constant(1), val.images, val.masks, 3, 4, valid=val.valid, originals=val.originals)
    counts = np.bincount(np.concatenate([label.ravel() for label in disk_labels(small_toy_root, "val")]),
                         minlength=256)[:3]
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[:, 1] = counts
    assert metric.confusion_matrix().tolist() == expected.tolist()
    assert metric.miou() == pytest.approx(counts[1] / counts.sum() / 3)


def test_validation_at_the_original_resolution_equals_a_recomputation_from_the_files(
        small_toy_root: Path, cache_dir: Path, tiny: str) -> None:
    """A random SegFormer scored by the loop's evaluate (keep-ratio test scale, padded batches) against one image at
    a time from the files: resized keeping its ratio, inferred, logits resized to the label, argmax, bincount."""
    torch.manual_seed(0)
    model = build_trial_model(augmented(small_toy_root, tiny), 3).eval()
    val = build_dataset("pets", "val", small_toy_root, 32, cache_dir=cache_dir, layout=Layout(BASE, True))
    metric, _ = evaluate(model, val.images, val.masks, 3, 1, valid=val.valid, originals=val.originals)
    source = open_source("pets", "val", small_toy_root)
    confusion = np.zeros((3, 3), dtype=np.int64)
    with torch.no_grad():
        for k, index in enumerate(source.indices):
            image, _ = source.dataset[index]
            label = disk_labels(small_toy_root, "val")[k]
            size = list(rescale_size(image.height, image.width, BASE))
            x = TF.resize(TF.pil_to_tensor(image), size, InterpolationMode.BILINEAR, antialias=True)
            logits = F.interpolate(model(normalize(x[None])), size=label.shape, mode="bilinear", align_corners=False)
            predicted = logits.argmax(1)[0].numpy()
            keep = label != 255
            confusion += np.bincount(label[keep] * 3 + predicted[keep], minlength=9).reshape(3, 3)
    assert metric.confusion_matrix().tolist() == confusion.tolist()


def test_the_report_recipe_keeps_its_cache_files(small_toy_root: Path) -> None:
    """The default layout adds nothing to the cache key: the report recipe's files keep their names."""
    source = open_source("pets", "val", small_toy_root)
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in [*source.image_files,
                                                                                   *source.label_files]]
    payload = {"format": 1, "name": "pets", "split": "val", "size": [32, 32], "mapping": source.mapping,
               "files": files}
    before = hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:20]
    assert cache_key(source, (32, 32)) == cache_key(source, (32, 32), Layout()) == before
    assert len({cache_key(source, (32, 32), Layout(b, o)) for b in (None, BASE) for o in (False, True)}) == 4


def test_the_report_recipe_stores_and_validates_as_before(small_toy_root: Path, cache_dir: Path) -> None:
    from study.trial import split_layouts

    cfg = TrainConfig(dataset="pets", data_root=str(small_toy_root), image_size=32)
    assert split_layouts(cfg) == (Layout(), Layout())
    train_set, val_set = load_splits(cfg.replace(cache_dir=str(cache_dir)))
    assert train_set.valid is None and val_set.valid is None and val_set.originals is None
    assert tuple(val_set.images.shape[-2:]) == (32, 32)


def test_a_resumed_schedule_knows_its_planned_length() -> None:
    """What ``study.loop`` compares to warn when a poly or cosine schedule is resumed with another length."""
    from study.loop import schedule_lengths
    from study.schedules import build_optimizer, build_scheduler

    optimizer = build_optimizer(torch.nn.Conv2d(3, 3, 1), 1e-3, 0.01)
    lengths = {(name, warmup): schedule_lengths(build_scheduler(name, optimizer, 100, warmup)[0].state_dict())
               for name, warmup in [("exponential", 0), ("poly", 5), ("poly", 0), ("cosine", 3)]}
    assert lengths == {("exponential", 0): [None], ("poly", 5): [5, 95], ("poly", 0): [100], ("cosine", 3): [3, 97]}


def test_sliding_window_validation_equals_whole_image_where_one_window_holds_each_image(
        small_toy_root: Path, cache_dir: Path, tiny: str) -> None:
    """``--eval-mode slide`` through the loop's evaluate: a window larger than every stored image is one window per
    image, so the scores are whole-image inference's; a smaller one still scores every pixel of every label."""
    torch.manual_seed(0)
    model = build_trial_model(augmented(small_toy_root, tiny), 3).eval()
    val = build_dataset("pets", "val", small_toy_root, 32, cache_dir=cache_dir, layout=Layout(BASE, True))

    def confusion(**inference) -> torch.Tensor:
        metric, _ = evaluate(model, val.images, val.masks, 3, 4, valid=val.valid, originals=val.originals,
                             **inference)
        return metric.confusion_matrix()

    whole = confusion(mode="whole")
    assert torch.equal(confusion(mode="slide", window=(64, 64), stride=(64, 64)), whole)
    assert int(confusion(mode="slide", window=(32, 32), stride=(16, 16)).sum()) == int(whole.sum())
