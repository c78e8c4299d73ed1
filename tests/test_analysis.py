"""The analysis on a finished toy study: figures, CSVs, metrics against independent computations, report.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchmetrics.classification import MulticlassJaccardIndex

from analysis import report
from analysis import score as analysis_score
from analysis.load import load_experiment, trial_table
from analysis.score import load_model, roc_curves
from study.metrics import SegMetric


def test_loading_gives_a_row_per_trial_per_validation(demo_study: Path) -> None:
    df = load_experiment(demo_study)
    summary = pd.read_csv(demo_study / "summary.csv")
    assert set(df["trial_id"]) == set(summary["trial_id"].astype(str))
    assert {"model", "init", "lr", "gamma", "seed", "stop_reason", "epoch", "val_miou", "train_loss"} <= set(df.columns)
    assert not df.duplicated(["trial_id", "epoch"]).any()
    stopped = set(df.loc[df["stop_reason"] == "stopped early (ASHA)", "trial_id"])
    assert stopped == set(summary.loc[summary["stopped_early"], "trial_id"].astype(str))


def test_every_figure_and_csv_exists(demo_report: Path, demo_study: Path) -> None:
    text = (demo_report / "report.md").read_text()
    images = [line[line.index("](") + 2 : -1] for line in text.splitlines() if line.startswith("![")]
    expected = {"samples_pets.png", "samples_cityscapes.png", "hyperparameters.png", "asha_stops.png", "importance.png"}
    df = load_experiment(demo_study)
    models = set(df["model"])
    done = set(df.loc[df["stop_reason"] == "completed", "model"])  # only a completed trial is a strategy's run
    expected |= {f"curves_{m}.png" for m in done}
    assert expected <= set(images)
    for model in models - done:  # ASHA stopped every trial of this model: said in one line, no empty figure
        assert f"curves_{model}.png" not in images and "no trial completed its epochs" in text
    assert any(i.startswith("test/") and i.endswith("roc.png") for i in images)
    for image in images:
        png, csv = demo_report / image, (demo_report / image).with_suffix(".csv")
        assert png.stat().st_size > 1000, png
        assert csv.stat().st_size > 0 and len(pd.read_csv(csv)) > 0, csv


def test_report_names_the_best_configuration(demo_report: Path, demo_study: Path) -> None:
    """The best configuration among the trials that completed their epochs (one seed each in the demo)."""
    table = trial_table(load_experiment(demo_study))
    summary = pd.read_csv(demo_study / "summary.csv")
    assert str(summary.iloc[0]["trial_id"]) == table.iloc[0]["trial_id"]
    best = table[table["stop_reason"] == "completed"].iloc[0]
    line = next(row for row in (demo_report / "report.md").read_text().splitlines()
                if row.startswith("**Best configuration:**"))
    assert f"one seed, trial `{best['trial_id']}`" in line and f"best val mIoU {best['best_val_miou']:.4f}" in line


def test_test_metrics_agree_with_independent_computations(demo_report: Path, demo_study: Path, small_toy_root: Path,
                                                          cache_dir: Path) -> None:
    from study.data import build_dataset
    from study.data.transforms import normalize

    metrics_file = next((demo_report / "test").glob("*/metrics.json"))
    metrics = json.loads(metrics_file.read_text())
    model, cfg = load_model(torch.load(metrics["checkpoint"], weights_only=True))
    data = build_dataset("pets", "test", small_toy_root, cfg.image_size, cache_dir=cache_dir)
    with torch.no_grad():
        probabilities = model(normalize(data.images)).softmax(1)
    targets = data.masks.long()
    jaccard = MulticlassJaccardIndex(3, average="macro", ignore_index=255)
    assert metrics["miou"] == pytest.approx(float(jaccard(probabilities.argmax(1), targets)), abs=1e-6)
    assert metrics["roc_pixels"] == int((targets != 255).sum())  # every labelled pixel (no subsampling here)
    flat_p = probabilities.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    flat_t = targets.flatten().numpy()
    for k, name in enumerate(data.class_names):
        assert metrics["auc"][name] == pytest.approx(roc_auc_score(flat_t == k, flat_p[:, k]), abs=1e-6)


def test_a_perfect_predictor_scores_one() -> None:
    targets = torch.randint(0, 3, (2, 16, 16))
    logits = torch.nn.functional.one_hot(targets, 3).permute(0, 3, 1, 2).float() * 10
    metric = SegMetric(3)
    metric.update(logits, targets)
    assert metric.miou() == 1.0
    probabilities = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    curves = roc_curves(probabilities, targets.flatten().numpy(), ("pet", "background", "boundary"))
    assert all(curve["auc"] == 1.0 for curve in curves.values())
    assert roc_curves(np.full((4, 3), 1 / 3), np.zeros(4, dtype=int), ("a", "b", "c"))["a"]["auc"] is None


def test_the_report_refuses_to_overwrite(demo_report: Path, demo_study: Path, capsys) -> None:
    from study.cli import main_guard

    before = (demo_report / "report.md").read_bytes()
    code = main_guard("analysis.report", report.main, ["--experiment", str(demo_study), "--out", str(demo_report)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (demo_report / "report.md").read_bytes() == before


def test_no_planted_secret_in_any_file_the_study_wrote(demo_study: Path) -> None:
    from conftest import FAKE_WANDB_KEY

    leaks = [p for p in demo_study.rglob("*") if p.is_file() and FAKE_WANDB_KEY.encode() in p.read_bytes()]
    assert not leaks


def test_errored_trials_are_counted_and_listed(demo_study: Path, small_toy_root: Path, cache_dir: Path,
                                               tmp_path: Path) -> None:
    """Two of the demo's trials made to fail, one each way a trial records a failure: both are in the header's
    count and listed with their one-line error, and neither is a seed of any curve or finding."""
    import os
    import shutil

    from study.fates import ERROR, record_fate

    study = tmp_path / "demo"  # files linked, not copied: FCN checkpoints are hundreds of MB
    shutil.copytree(demo_study, study, ignore=shutil.ignore_patterns("report", "logs", "wandb"),
                    copy_function=os.symlink)
    summary = pd.read_csv(study / "summary.csv", dtype={"trial_id": str})
    ours, tunes = summary["trial_id"].iloc[-2:]
    (study / "errors").mkdir(exist_ok=True)
    (study / "errors" / f"{ours}.txt").write_text("--pretrained /gone.pt: no such file\n\nTraceback ...\n")
    (study / f"trial_{tunes}" / "error.txt").unlink(missing_ok=True)
    (study / f"trial_{tunes}" / "error.txt").write_text("Traceback (most recent call last):\n  ...\n"
                                                         "RuntimeError: the worker died\n")
    for trial_id in (ours, tunes):  # what the driver records as each ends (study.fates); a copy, not the link
        (study / "fates" / f"{trial_id}.json").unlink()
        record_fate(str(study), trial_id, ERROR, epoch=2)
    from analysis.load import best_configuration_trials

    chosen = best_configuration_trials(load_experiment(study), "segformer")  # a seed that cannot be evaluated
    strategy, (unevaluated,) = next((s, ids) for s, ids in chosen.items() if {ours, tunes}.isdisjoint(ids))
    for weights in (study / f"trial_{unevaluated}").glob("checkpoint_*/checkpoint.pt"):
        weights.unlink()
    text = report.write_report(study, small_toy_root, tmp_path / "out", cache_dir=str(cache_dir)).read_text()
    assert f"{len(summary)} trials (2 errored, listed below)" in text
    errored = text[text.index("## Errored trials"):].split("\n## ")[0]
    assert f"`{ours}`" in errored and "--pretrained /gone.pt: no such file" in errored
    assert f"`{tunes}`" in errored and "RuntimeError: the worker died" in errored
    curves = pd.concat(pd.read_csv(p) for p in (tmp_path / "out").glob("curves_*.csv"))
    assert not {ours, tunes} & set(" ".join(curves["trials"]).split())
    assert tuple(pd.read_csv(tmp_path / "out" / "findings.csv").columns)[-1] == "verdict"
    tests = pd.read_csv(tmp_path / "out" / "test_summary.csv")  # seeds counts the seeds evaluated, not chosen
    assert tests.loc[(tests["model"] == "segformer") & (tests["strategy"] == strategy), "seeds"].item() == 0
    assert f"(trial {unevaluated}): not evaluated" in text


# The report at K classes (issue 19, part 6): the figure functions on made-up arrays, no training.

def _synthetic(classes: int, pixels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets of skewed class frequencies, softmax probabilities that favour them, and the confusion matrix."""
    rng = np.random.default_rng(seed)
    targets = rng.choice(classes, pixels, p=rng.dirichlet(np.full(classes, 0.5)))
    logits = rng.normal(size=(pixels, classes))
    logits[np.arange(pixels), targets] += rng.uniform(0, 3, classes)[targets]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (targets, probabilities.argmax(1)), 1)
    return targets, probabilities, confusion


def _result(confusion: np.ndarray, names: list[str]) -> dict:
    """A metrics.json's per-class part (analysis.score.metrics_dict) from a confusion matrix."""
    metric = SegMetric(len(names))
    metric.confusion = torch.as_tensor(confusion)
    return analysis_score.metrics_dict(metric, names)


def test_the_confusion_matrix_at_150_classes_shows_the_20_most_frequent(tmp_path: Path) -> None:
    from analysis import figures

    names = [f"class {k}" for k in range(150)]
    _, _, confusion = _synthetic(150, 20_000)
    shown, labels = figures.summarise_confusion(confusion, names)
    frequent = np.argsort(-confusion.sum(axis=1), kind="stable")[:20]
    assert labels[:20] == [names[k] for k in frequent] and labels[20] == "other (130 classes)"
    assert confusion[frequent].sum(axis=1).min() >= np.delete(confusion, frequent, axis=0).sum(axis=1).max()
    assert shown.shape == (21, 21) and shown.sum() == confusion.sum()
    np.testing.assert_array_equal(shown[:20].sum(axis=1), confusion[frequent].sum(axis=1))  # rows keep every pixel
    np.testing.assert_array_equal(shown[:20, :20], confusion[np.ix_(frequent, frequent)])
    png = figures.confusion_figure(confusion, names, "K=150", tmp_path / "confusion")
    assert png.stat().st_size > 1000 and list(pd.read_csv(tmp_path / "confusion.csv")["true_class"]) == labels
    sparse = np.zeros_like(confusion)  # a class without true pixels is never among the most frequent
    sparse[[4, 9, 2], [4, 9, 7]] = [5, 9, 1]
    assert figures.summarise_confusion(sparse, names)[1] == ["class 9", "class 4", "class 2", "other (147 classes)"]
    small = confusion[:3, :3]  # up to 20 classes: every class, in class order, as before
    assert figures.summarise_confusion(small, names[:3])[1] == names[:3]
    figures.confusion_figure(small, names[:3], "K=3", tmp_path / "confusion3")
    assert list(pd.read_csv(tmp_path / "confusion3.csv")["true_class"]) == names[:3]


@pytest.mark.parametrize("classes", [3, 150])
def test_the_per_class_iou_table_has_every_class_sorted_with_its_frequency(classes: int, tmp_path: Path) -> None:
    from analysis import figures

    names = [f"class {k}" for k in range(classes)]
    _, _, confusion = _synthetic(classes, 5_000)
    confusion[-1] = 0  # one class absent from targets and predictions: no IoU, listed last
    confusion[:, -1] = 0
    result = _result(confusion, names)
    frame = analysis_score.per_class_frame(result)
    assert sorted(frame["class"]) == sorted(names) and frame["class"].iloc[-1] == names[-1]
    scored = frame["iou"].notna()
    assert frame["iou"][scored].is_monotonic_decreasing and not scored[scored.idxmin():].any()  # absent ones last
    assert frame.set_index("class")["pixels"].to_dict() == dict(zip(names, confusion.sum(axis=1).tolist(),
                                                                      strict=True))
    assert frame["frequency"].sum() == pytest.approx(1.0)
    assert figures.per_class_iou_figure(frame, f"K={classes}", tmp_path / "iou").stat().st_size > 1000
    worse = _result(np.diag(np.diag(confusion)) // 2 + confusion // 2, names)  # a second configuration
    table = report.per_class_table({"B": worse, "A": result})
    best = "A" if result["miou"] >= worse["miou"] else "B"
    assert list(table.columns[:4]) == ["class", "pixels", "frequency", best] and len(table) == classes
    section = report._per_class_section(table)
    body = [line for line in section if line.startswith("| ") and not line.startswith(("| class |", "| --- |"))]
    assert len(body) == classes and body[0].startswith(f"| {table['class'].iloc[0]} |")


def test_roc_beyond_six_classes_gives_the_averages_and_the_five_worst(tmp_path: Path) -> None:
    from sklearn.preprocessing import label_binarize

    from analysis import figures

    names = [f"class {k}" for k in range(150)]
    targets, probabilities, _ = _synthetic(150, 3_000)
    curves = roc_curves(probabilities, targets, names)
    averages = analysis_score.average_roc(probabilities, targets, curves)
    scored = {n: c["auc"] for n, c in curves.items() if c["auc"] is not None}
    assert averages["macro"]["auc"] == pytest.approx(np.mean(list(scored.values())))
    present = np.unique(targets)  # every pixel pooled (3,000 x 150 pairs is under the cap): sklearn's micro AUC
    assert 1 < len(present) < 150 and len(scored) == len(present)  # over the classes present, as the macro
    micro = roc_auc_score(label_binarize(targets, classes=present), probabilities[:, present], average="micro")
    assert averages["micro"]["auc"] == pytest.approx(micro, abs=1e-9)
    capped = analysis_score.average_roc(probabilities, targets, curves, max_values=len(present) * 500)
    assert capped["micro"]["pixels"] == 500
    figures.roc_figure(curves, "K=150", tmp_path / "roc", figures.class_palette(names), averages)
    plotted = list(dict.fromkeys(pd.read_csv(tmp_path / "roc.csv")["class"]))
    worst = sorted(scored, key=scored.get)[:5]
    assert plotted == ["macro average", "micro average"] + [f"worst {k + 1}: {n}" for k, n in enumerate(worst)]
    few = roc_curves(probabilities[:, :3] / probabilities[:, :3].sum(1, keepdims=True), targets % 3, names[:3])
    figures.roc_figure(few, "K=3", tmp_path / "roc3", figures.class_palette(names[:3]),
                       analysis_score.average_roc(probabilities[:, :3], targets % 3, few))
    assert list(dict.fromkeys(pd.read_csv(tmp_path / "roc3.csv")["class"])) == names[:3]  # every class, as before


def test_the_roc_subsample_is_drawn_on_the_device_before_the_softmax() -> None:
    logits = torch.randn(2, 150, 16, 16)
    targets = torch.randint(0, 150, (2, 16, 16))
    targets[:, :4] = 255
    every = analysis_score._Collector(1.0, set())
    every(torch.arange(2), logits, targets)
    labelled = targets != 255
    torch.testing.assert_close(every.probabilities[0], logits.softmax(1).permute(0, 2, 3, 1)[labelled])
    assert torch.equal(every.targets[0], targets[labelled])
    part = analysis_score._Collector(0.25, {1})
    part(torch.arange(2), logits, targets)
    kept = len(part.targets[0])
    assert 0 < kept < labelled.sum() / 2 and part.probabilities[0].shape == (kept, 150)
    assert (part.targets[0] != 255).all() and set(part.predictions) == {1}


def test_masks_use_the_task_palette_and_name_only_the_classes_shown(tmp_path: Path, monkeypatch) -> None:
    from analysis import figures
    from study.data.sources import CITYSCAPES_TRAIN_CLASSES, PETS_CLASSES

    names = [f"class {k}" for k in range(150)]
    palette = figures.class_palette(names)
    assert len(np.unique(palette, axis=0)) == 150  # a fixed map, a distinct colour per class
    np.testing.assert_array_equal(palette, figures.class_palette(names))
    assert palette[15].tolist() == [192, 128, 128]  # Pascal VOC's "person"
    assert figures.class_palette(PETS_CLASSES)[0].tolist() == list(figures.PETS_COLOURS["pet"])
    assert figures.class_palette(CITYSCAPES_TRAIN_CLASSES)[0].tolist() == [128, 64, 128]  # Cityscapes' road
    own = np.arange(9, dtype=np.uint8).reshape(3, 3)
    np.testing.assert_array_equal(figures.class_palette(["a", "b", "c"], own), own)
    ignored = figures.colorize(np.array([[255]]), palette)[0, 0]
    assert not (palette == ignored).all(axis=1).any()  # class 0 is black here: ignored pixels are not
    legends = []
    save = figures._save

    def keep_legend(fig, stem, data):
        boxes = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        legends.append([text.get_text() for box in boxes for text in box.get_texts()])
        return save(fig, stem, data)

    monkeypatch.setattr(figures, "_save", keep_legend)
    rng = np.random.default_rng(0)
    targets = rng.choice([3, 40, 149], (2, 8, 8)).astype(np.uint8)
    targets[:, 0] = 255
    preds = np.where(targets == 255, 7, targets).astype(np.uint8)
    images = rng.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    png = figures.masks_figure(images, targets, preds, ["a.png", "b.png"], names, "K=150", tmp_path / "masks")
    assert png.stat().st_size > 1000
    assert legends[-1] == ["class 3", "class 7", "class 40", "class 149", "(ignored)"]
    figures.dataset_samples(images, targets, ["a.png", "b.png"], names, "samples", tmp_path / "samples")
    assert legends[-1] == ["class 3", "class 40", "class 149", "(ignored)"]


def _trials(rows: list[tuple]) -> pd.DataFrame:
    """A constructed trial table: (trial_id, init, lr, best val mIoU, test mIoU, stop_reason) per trial."""
    return pd.DataFrame([{"trial_id": t, "model": "segformer", "init": init, "strategy": init, "lr": lr, "gamma": 0.98,
                          "best_val_miou": val, "test_miou": test, "status": "done", "stop_reason": stop}
                         for t, init, lr, val, test, stop in rows])


def test_the_headline_is_the_best_configurations_mean_not_its_luckiest_seed() -> None:
    table = _trials([("a1", "finetune", 1e-3, 0.70, 0.60, "completed"), ("a2", "finetune", 1e-3, 0.60, 0.50,
                     "completed"), ("a3", "finetune", 1e-3, 0.62, 0.52, "completed"),
                     ("b1", "scratch", 1e-3, 0.64, 0.55, "completed"), ("b2", "scratch", 1e-3, 0.65, 0.56,
                     "completed"), ("b3", "scratch", 1e-3, 0.66, 0.57, "completed"),
                     ("c1", "freeze", 1e-3, 0.90, 0.80, "stopped early (ASHA)")])  # no candidate: not completed
    line = report._headline(table)
    # scratch has the higher mean (0.65 against 0.64), although finetune has the luckiest completed seed (0.70)
    assert "scratch" in line and "mean over 3 seeds" in line
    assert "best val mIoU 0.6500 [95 % CI" in line and "test mIoU 0.5600 [95 % CI" in line


def test_the_test_section_says_when_test_is_the_val_split() -> None:
    summary = pd.DataFrame([{"model": "segformer", "strategy": "fine-tune", "lr": 1e-3, "seeds": 3,
                             "test_miou_mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}])
    city = "\n".join(report._test_section(summary, "cityscapes"))
    pets = "\n".join(report._test_section(summary, "pets"))
    assert "official val split" in city and "optimistic" in city
    assert "optimistic" not in pets and "| 0.5000 | [0.4000, 0.6000] |" in pets


def _searched(rows: int, gamma: bool) -> pd.DataFrame:
    """A search over model, init, lr and batch_size (and gamma only when ``gamma``): best val mIoU set by the
    batch size alone, so it is the important key."""
    rng = np.random.default_rng(0)
    table = pd.DataFrame([{"trial_id": f"t{k:02d}", "model": ("segformer", "fcn_resnet50")[k % 2],
                           "init": ("scratch", "finetune")[k // 2 % 2],
                           "strategy": ("scratch", "fine-tune")[k // 2 % 2],
                           "lr": float(rng.uniform(1e-4, 3e-3)), "batch_size": (8, 32)[k // 4 % 2], "seed": 0,
                           "epochs": 6, "best_val_miou": 0.3 + 0.3 * ((k // 4) % 2) + 0.001 * k, "test_miou": np.nan,
                           "status": "done", "stop_reason": "completed", "error": ""} for k in range(rows)])
    return table.assign(gamma=0.98 - 0.01 * (table.index % 3)) if gamma else table


@pytest.mark.parametrize("gamma", [False, True])
def test_every_searched_key_is_shown_and_analysed_and_an_unsearched_gamma_is_no_error(gamma: bool) -> None:
    from analysis.importance import hyperparameter_importance
    from analysis.load import searched_keys

    table = _searched(12, gamma)
    space = {"model": ["choice", ["segformer", "fcn_resnet50"]], "init": ["choice", ["scratch", "finetune"]],
             "lr": ["loguniform", 1e-4, 3e-3], "batch_size": ["choice", [8, 32]], "epochs": ["choice", [6]]}
    space.update({"gamma": ["uniform", 0.9, 0.999]} if gamma else {})
    keys = searched_keys({"space": space}, table)
    assert keys == ["model", "init", "batch_size", "lr", *(["gamma"] if gamma else [])]  # declared; epochs: fixed
    assert searched_keys({}, table)[:3] == ["model", "init", "lr"]  # nothing recorded: the summary's columns
    importances = hyperparameter_importance(table, keys, space)
    assert set(importances) == set(keys) and max(importances, key=importances.get) == "batch_size"
    assert report._headline(table, keys).startswith("**Best configuration:** FCN ResNet-50, fine-tune (init "
                                                    "`finetune`, batch_size 32, lr ")
    markdown = report.render_markdown("s/demo", {"space": space}, table, [], [], Path("out"), keys=keys)
    header = next(line for line in markdown.splitlines() if line.startswith("| trial |"))
    assert header.startswith("| trial | model | strategy | batch_size | lr | " + ("gamma | " if gamma else "seed"))
    assert "| t11 | FCN ResNet-50 | fine-tune |" in markdown and "nan" not in markdown
