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
from analysis.load import load_experiment, trial_table
from analysis.score import load_model, roc_curves
from study.metrics import SegMetric


@pytest.fixture(scope="module")
def demo_report(demo_study: Path, toy_root: Path, cache_dir: Path) -> Path:
    report.write_report(demo_study, toy_root, demo_study / "report", cache_dir=str(cache_dir))
    return demo_study / "report"


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


def test_test_metrics_agree_with_independent_computations(demo_report: Path, demo_study: Path, toy_root: Path,
                                                          cache_dir: Path) -> None:
    from study.data import build_dataset
    from study.data.transforms import normalize

    metrics_file = next((demo_report / "test").glob("*/metrics.json"))
    metrics = json.loads(metrics_file.read_text())
    model, cfg = load_model(torch.load(metrics["checkpoint"], weights_only=True))
    data = build_dataset("pets", "test", toy_root, cfg.image_size, cache_dir=cache_dir)
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


def test_errored_trials_are_counted_and_listed(demo_study: Path, toy_root: Path, cache_dir: Path,
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
    text = report.write_report(study, toy_root, tmp_path / "out", cache_dir=str(cache_dir)).read_text()
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
