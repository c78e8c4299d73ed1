"""A user's own task: the folder, VOC and ADE20K formats, the task file, its checks, class weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from study import run_trial
from study.cli import main_guard
from study.data import Labels, build_dataset
from study.data.formats import open_source
from study.data.frequencies import class_weights
from study.data.toy import FOLDER_CLASSES, write_toy
from study.loop import pixel_loss

TASK_FORMATS = ("folder", "voc", "ade20k")


@pytest.fixture(scope="session")
def task_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Toy data in the three own-task layouts: ROOT/folder, ROOT/VOCdevkit, ROOT/ADEChallengeData2016."""
    return write_toy(tmp_path_factory.mktemp("tasks"), seed=1, formats=TASK_FORMATS)


@pytest.fixture
def folder_copy(task_root: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "folder"
    shutil.copytree(task_root / "folder", dest)
    return dest


def write_task(path: Path, **keys) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(keys))
    return path


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for f in folders if f.exists()
            for p in sorted(f.rglob("*")) if p.is_file()}


def train_trial(args: list[str], capsys) -> tuple[int, str]:
    code = main_guard("study.run_trial", run_trial.main, ["--no-progress", "--epochs", "1", "--batch-size", "8",
                                                          "--model", "segformer", *args])
    return code, capsys.readouterr().err


def test_each_format_decodes_to_its_classes(task_root: Path, cache_dir: Path) -> None:
    folder = build_dataset("folder", "train", task_root / "folder", "32x48", labels=Labels(FOLDER_CLASSES))
    assert folder.num_classes == 4 and folder.images.shape[-2:] == (32, 48)
    assert set(folder.masks.unique().tolist()) <= {0, 1, 2, 3, 255}
    voc = build_dataset("voc", "train", task_root, 32)
    assert voc.num_classes == 21 and voc.class_names[8] == "cat"
    assert set(voc.masks.unique().tolist()) == {0, 8, 12, 255}  # palette indices; 255 on object borders
    ade = build_dataset("ade20k", "train", task_root, 32)
    source = open_source("ade20k", "train", task_root)
    raw = np.asarray(Image.open(source.label_files[0]))
    assert ade.num_classes == 150 and 0 in raw and 3 in raw  # "other" and sky on disk
    mapped = source.label_to_class(raw, source.label_files[0])  # reduce_zero_label: 0 -> ignored, k -> k - 1
    assert np.array_equal(mapped, np.where(raw == 0, 255, raw.astype(int) - 1))
    assert ade.class_names[2] == "sky" and ade.class_pixels[2] > 0


def test_official_splits_and_held_out_val(task_root: Path, cache_dir: Path) -> None:
    for name, root in (("voc", task_root), ("ade20k", task_root)):
        splits = {s: open_source(name, s, root).image_files for s in ("train", "val", "test")}
        assert not set(splits["val"]) & set(splits["train"])  # val is held out of the official train list
        assert not set(splits["test"]) & (set(splits["train"]) | set(splits["val"]))  # test: the official val
    labels = Labels(FOLDER_CLASSES)
    assert len(open_source("folder", "val", task_root / "folder", labels=labels).image_files) == 8


def test_folder_without_val_or_test(folder_copy: Path, cache_dir: Path) -> None:
    shutil.rmtree(folder_copy / "images" / "val")
    shutil.rmtree(folder_copy / "annotations" / "val")
    labels = Labels(FOLDER_CLASSES)
    train = open_source("folder", "train", folder_copy, labels=labels).image_files
    val = open_source("folder", "val", folder_copy, labels=labels).image_files
    assert len(val) == 3 and len(train) == 29 and not set(val) & set(train)  # a seeded 10 % of train
    shutil.rmtree(folder_copy / "images" / "test")
    with pytest.raises(Exception, match="no test split"):
        open_source("folder", "test", folder_copy, labels=labels)


def break_mask_values(root: Path) -> str:
    first = sorted((root / "annotations" / "train").iterdir())[0]
    mask = np.asarray(Image.open(first)).copy()
    mask[0, 0] = 7
    Image.fromarray(mask).save(first)
    return first.name


def break_missing_mask(root: Path) -> str:
    mask = sorted((root / "annotations" / "train").iterdir())[2]
    mask.unlink()
    return mask.stem


def break_missing_image(root: Path) -> str:
    image = sorted((root / "images" / "train").iterdir())[2]
    image.unlink()
    return image.stem + ".png"


def break_mask_size(root: Path) -> str:
    first = sorted((root / "annotations" / "train").iterdir())[1]
    Image.open(first).resize((10, 10)).save(first)
    return first.name


def break_rgb_mask(root: Path) -> str:
    first = sorted((root / "annotations" / "train").iterdir())[1]
    Image.open(first).convert("RGB").save(first)
    return first.name


def break_empty_split(root: Path) -> str:
    for path in (root / "images" / "train").iterdir():
        path.unlink()
    for path in (root / "annotations" / "train").iterdir():
        path.unlink()
    return "empty"


def break_missing_split(root: Path) -> str:
    shutil.rmtree(root / "annotations" / "train")
    return "split folder missing"


@pytest.mark.parametrize("breaker", [break_mask_values, break_missing_mask, break_missing_image, break_mask_size,
                                     break_rgb_mask, break_empty_split, break_missing_split])
def test_broken_data_is_one_line_naming_the_file(breaker, folder_copy: Path, tmp_path: Path, cache_dir: Path,
                                                 capsys) -> None:
    expected = breaker(folder_copy)
    task = write_task(tmp_path / "task.yaml", dataset="folder", root=str(folder_copy), classes=list(FOLDER_CLASSES))
    before = snapshot(folder_copy, cache_dir)
    code, err = train_trial(["--task", str(task), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert expected in err
    assert snapshot(folder_copy, cache_dir) == before and not (tmp_path / "out").exists()


def test_mask_values_error_names_first_file_and_values(folder_copy: Path, tmp_path: Path, cache_dir: Path,
                                                       capsys) -> None:
    """Three classes named for four in the masks: the wrong-num_classes mistake, caught before training."""
    task = write_task(tmp_path / "task.yaml", dataset="folder", root=str(folder_copy), classes=["a", "b", "c"])
    code, err = train_trial(["--task", str(task), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "mask values [3]" in err and "train_0000.png" in err and "0..2" in err


@pytest.mark.parametrize(("keys", "expected"), [
    ({"dataset": "folder", "colour": 1}, "unknown key(s) colour"),
    ({"dataset": "kitti"}, "dataset: expected one of"),
    ({"classes": ["a"]}, "missing key dataset"),
    ({"dataset": "folder", "classes": []}, "classes: expected a list of class names, got []"),
    ({"dataset": "folder", "classes": ["a", "a", "b"]}, "duplicate class names ['a']"),
    ({"dataset": "folder", "classes": "nowhere.json"}, "nowhere.json: no such file"),
    ({"dataset": "folder", "ignore_index": 300}, "ignore_index: expected an integer in [0, 255]"),
    ({"dataset": "folder", "image_size": "big"}, "image_size: expected N or HxW"),
    ({"dataset": "folder", "class_weights": "balanced"}, "class_weights: expected one of"),
    ({"dataset": "folder", "root": "no/such/folder"}, "not a folder"),
])
def test_bad_task_file(keys: dict, expected: str, tmp_path: Path, capsys) -> None:
    task = write_task(tmp_path / "task.yaml", **keys)
    code, err = train_trial(["--task", str(task), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(task) in err and expected in err, err
    assert not (tmp_path / "out").exists()


def test_classes_must_agree_with_id2label(folder_copy: Path, tmp_path: Path, capsys) -> None:
    (folder_copy / "id2label.json").write_text(json.dumps({"0": "background", "1": "road", "2": "kerb", "3": "car"}))
    task = write_task(tmp_path / "task.yaml", dataset="folder", root=str(folder_copy), classes=list(FOLDER_CLASSES))
    code, err = train_trial(["--task", str(task), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "disagree with" in err and "id2label.json" in err
    assert open_source("folder", "train", folder_copy).class_names[2] == "kerb"  # no list: the file names them


def test_task_file_then_options(folder_copy: Path, tmp_path: Path, cache_dir: Path, capsys) -> None:
    """A one-epoch trial from a task file; an option beats the file, and the task is recorded in the run."""
    task = write_task(tmp_path / "task.yaml", dataset="folder", root=".", classes=list(FOLDER_CLASSES),
                      image_size="32x48", class_weights="median_frequency")
    shutil.move(task, folder_copy / "task.yaml")  # root "." is the task file's own folder
    code, err = train_trial(["--task", str(folder_copy / "task.yaml"), "--image-size", "32x64",
                             "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["image_size"] == [32, 64] and config["data_root"] == str(folder_copy.resolve())
    assert config["classes"] == list(FOLDER_CLASSES) and config["class_weights"] == "median_frequency"


def test_class_weights_from_pixel_counts() -> None:
    counts = torch.tensor([600, 300, 100, 0])
    inverse = class_weights("inverse_frequency", counts)
    assert torch.allclose(inverse, torch.tensor([1000 / (4 * 600), 1000 / (4 * 300), 1000 / (4 * 100), 0.0]))
    median = class_weights("median_frequency", counts)  # median share 0.3 over the classes that occur
    assert torch.allclose(median, torch.tensor([0.5, 1.0, 3.0, 0.0]))
    assert class_weights("none", counts) is None
    with pytest.raises(Exception, match="3 weights given for 4 classes"):
        class_weights([1.0, 2.0, 3.0], counts)


def test_weighted_loss_is_the_weighted_mean() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, generator=generator)
    targets = torch.randint(0, 3, (2, 5, 5), generator=generator)
    targets[0, 0] = 255
    weight = torch.tensor([0.5, 2.0, 1.0])
    loss, denominator = pixel_loss(logits, targets, 255, weight)
    assert torch.allclose(loss, F.cross_entropy(logits, targets, weight=weight, ignore_index=255))
    assert torch.isclose(denominator, weight[targets[targets != 255]].sum())
    plain, pixels = pixel_loss(logits, targets, 255)
    assert torch.allclose(plain, F.cross_entropy(logits, targets, ignore_index=255)) and pixels == 45


def test_genuine_pets_as_folder_data_match(shared_data: Path, tmp_path: Path, cache_dir: Path) -> None:
    """The genuine Pets samples converted to the folder layout decode to the same tensors, and a model scores
    the same mIoU on either."""
    from study.data.convert import main as convert
    from study.loop import evaluate

    assert main_guard("study.data.convert", convert, ["--from", "pets", "--root", str(shared_data),
                                                      "--out", str(tmp_path / "pets")]) == 0
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 3, padding=1)
    for split in ("train", "val", "test"):
        pets = build_dataset("pets", split, shared_data, 32)
        folder = build_dataset("folder", split, tmp_path / "pets", 32)
        order = [sorted(range(len(d)), key=lambda i: Path(d.files[i]).stem) for d in (pets, folder)]
        assert folder.class_names == pets.class_names
        assert torch.equal(pets.images[order[0]], folder.images[order[1]])
        assert torch.equal(pets.masks[order[0]], folder.masks[order[1]])
    scores = [evaluate(model, d.images, d.masks, 3, 64)[0].miou() for d in (pets, folder)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)
