from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import Cityscapes, OxfordIIITPet

from foundation import storage
from foundation.errors import DataError
from study.data import build_dataset, cache
from study.data.formats import open_source
from study.data.sources import CITYSCAPES_TRAIN_CLASSES, PETS_CLASSES
from study.data.toy import write_toy


def test_toy_data_is_read_by_torchvisions_own_loaders(toy_root: Path) -> None:
    pets = OxfordIIITPet(toy_root, split="trainval", target_types="segmentation")
    image, trimap = pets[0]
    assert image.mode == "RGB" and set(np.unique(np.asarray(trimap))) == {1, 2, 3}
    assert len(OxfordIIITPet(toy_root, split="test", target_types="segmentation")) > 0
    for split in ("train", "val"):
        city = Cityscapes(str(toy_root / "cityscapes"), split=split, mode="fine", target_type="semantic")
        image, label = city[0]
        assert image.size == label.size and len(city) > 0


def test_toy_data_is_deterministic(tmp_path: Path) -> None:
    a, b = write_toy(tmp_path / "a", seed=3), write_toy(tmp_path / "b", seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_pets_splits_and_class_mapping(toy_root: Path, cache_dir: Path) -> None:
    train, val, test = (build_dataset("pets", s, toy_root, 32, cache_dir=cache_dir) for s in ("train", "val", "test"))
    assert train.class_names == PETS_CLASSES and train.num_classes == 3 and train.ignore_index == 255
    assert set(train.files).isdisjoint(val.files) and len(train) + len(val) == 80 and len(val) == 8
    assert len(test) == 24 and set(test.files).isdisjoint(train.files)
    image, mask = train[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert mask.dtype == torch.int64 and mask.shape == (32, 32)
    # class = trimap - 1, checked at full resolution through the source's mapping
    source = open_source("pets", "test", toy_root)
    trimap = np.asarray(Image.open(source.label_files[0]))
    assert np.array_equal(source.label_to_class(trimap, source.label_files[0]), trimap - 1)


def test_val_split_is_seeded_not_random(toy_root: Path, cache_dir: Path) -> None:
    first = open_source("pets", "val", toy_root).image_files
    assert first == open_source("pets", "val", toy_root).image_files


def test_cityscapes_label_ids_map_to_train_ids(toy_root: Path, cache_dir: Path) -> None:
    source = open_source("cityscapes", "train", toy_root)
    ids = np.array([[0, 7, 8, 11], [21, 23, 26, 33]], dtype=np.uint8)
    assert source.label_to_class(ids, Path("x")).tolist() == [[255, 0, 1, 2], [8, 10, 13, 18]]
    assert len(CITYSCAPES_TRAIN_CLASSES) == 19 and CITYSCAPES_TRAIN_CLASSES[0] == "road"
    data = build_dataset("cityscapes", "val", toy_root, "32x64", cache_dir=cache_dir)
    assert data.images.shape[1:] == (3, 32, 64) and data.num_classes == 19
    assert 255 in data.masks.unique().tolist()  # the void strip is ignored, not a class
    test = build_dataset("cityscapes", "test", toy_root, "32x64", cache_dir=cache_dir)
    assert test.files == data.files  # test means val: official test labels are withheld


def test_genuine_pets_sample(shared_data: Path, cache_dir: Path) -> None:
    train, val, test = (build_dataset("pets", s, shared_data, 64, cache_dir=cache_dir)
                        for s in ("train", "val", "test"))
    assert len(train) + len(val) == 198 and len(val) == 20 and len(test) == 204
    assert set(train.masks.unique().tolist()) == {0, 1, 2}
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 64, 64)


def test_genuine_cityscapes_sample(shared_cityscapes_with_val: Path, cache_dir: Path) -> None:
    data = build_dataset("cityscapes", "val", shared_cityscapes_with_val, "64x128", cache_dir=cache_dir)
    assert len(data) == 6 and data.images.shape[1:] == (3, 64, 128)
    values = set(data.masks.unique().tolist())
    assert 255 in values and 0 in values and values <= set(range(19)) | {255}


def test_cache_is_reused_and_invalidated(toy_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache_dir = tmp_path / "cache"
    builds = []
    real_build = cache.build
    monkeypatch.setattr(cache, "build", lambda *a: builds.append(a) or real_build(*a))
    build_dataset("pets", "val", toy_copy, 32, cache_dir=cache_dir)
    build_dataset("pets", "val", toy_copy, 32, cache_dir=cache_dir)
    assert len(builds) == 1  # second call read the cache
    build_dataset("pets", "val", toy_copy, 40, cache_dir=cache_dir)
    assert len(builds) == 2  # another size
    first_val = Path(build_dataset("pets", "val", toy_copy, 32, cache_dir=cache_dir).files[0]).stem
    split_list = toy_copy / "oxford-iiit-pet/annotations/trainval.txt"
    lines = [line for line in split_list.read_text().splitlines() if not line.startswith(first_val + " ")]
    split_list.write_text("\n".join(lines) + "\n")
    build_dataset("pets", "val", toy_copy, 32, cache_dir=cache_dir)
    assert len(builds) == 3  # another file list
    val_file = Path(build_dataset("pets", "val", toy_copy, 32, cache_dir=cache_dir).files[0])
    Image.open(val_file).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(val_file, quality=80)
    build_dataset("pets", "val", toy_copy, 32, cache_dir=cache_dir)
    assert len(builds) == 4  # a changed file (the call above it read the cache: no build)
    assert len(list(cache_dir.glob("*.pt"))) == 4
    assert not list(toy_copy.rglob("*.pt"))  # nothing written into the data root


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEGSTUDY_CACHE", str(tmp_path / "env-cache"))
    assert storage.default_cache_dir() == tmp_path / "env-cache"


def _first_val_pair(root: Path) -> tuple[Path, Path]:
    source = open_source("pets", "val", root)
    return source.image_files[0], source.label_files[0]


@pytest.mark.parametrize("breakage", ["truncated_jpeg", "trimap_values", "size_mismatch", "missing_label"])
def test_broken_pets_files_are_named(toy_copy: Path, tmp_path: Path, breakage: str) -> None:
    image_file, label_file = _first_val_pair(toy_copy)
    if breakage == "truncated_jpeg":
        image_file.write_bytes(image_file.read_bytes()[:200])
        culprit, problem = image_file, "cannot read"
    elif breakage == "trimap_values":
        trimap = np.asarray(Image.open(label_file)).copy()
        trimap[0, 0] = 7
        Image.fromarray(trimap).save(label_file)
        culprit, problem = label_file, "1, 2 or 3"
    elif breakage == "size_mismatch":
        Image.open(label_file).resize((10, 10)).save(label_file)
        culprit, problem = label_file, "differs"
    else:
        label_file.unlink()
        culprit, problem = label_file, ""
    with pytest.raises(DataError) as info:
        build_dataset("pets", "val", toy_copy, 32, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(culprit) in message and problem in message and "\n" not in message


def test_cityscapes_ids_outside_the_table_are_named(toy_copy: Path, tmp_path: Path) -> None:
    label_file = sorted((toy_copy / "cityscapes/gtFine/val").rglob("*_labelIds.png"))[0]
    ids = np.asarray(Image.open(label_file)).copy()
    ids[5, 5] = 77
    Image.fromarray(ids).save(label_file)
    with pytest.raises(DataError, match="labelIds must lie in 0..33"):
        build_dataset("cityscapes", "val", toy_copy, 32, cache_dir=tmp_path / "cache")


def test_missing_data_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        build_dataset("pets", "train", tmp_path / "nowhere", 32)
    with pytest.raises(DataError, match="Oxford-IIIT Pet not found"):
        build_dataset("pets", "train", tmp_path, 32)
    with pytest.raises(DataError, match="cityscapes-dataset.com"):
        build_dataset("cityscapes", "train", tmp_path, 32)
