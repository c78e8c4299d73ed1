"""The report whatever a study searched, on studies written to disk as Tune and segstudy leave them (no Ray, no
training): the searched keys have one answer, objectives keep their declared order, hypervolume follows creation
order, a constraint nobody meets is said, model names become clean file names, and the sample figures decode only
their four images of the stages the study had."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import pareto
from analysis.load import searched_keys as report_keys
from study.fates import record_fate

MODELS = ("hf:/abs/models/mine", "tv:lraspp_mobilenet_v3_large")


def write_study(folder: Path, settings: dict, trials: list[dict]) -> Path:
    """A finished study folder: study.json, each trial's params.json, result.json and fate, and Tune's experiment
    state, which lists the trials with their creation numbers out of id order (as Tune does). ``trials``: dicts with
    ``id``, ``params``, ``val`` (the val mIoU per epoch) and optional ``cost`` (columns every result carries)."""
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(settings))
    state = []
    for number, trial in enumerate(trials, start=1):
        tdir = folder / f"trial_{trial['id']}"
        tdir.mkdir()
        (tdir / "params.json").write_text(json.dumps(trial["params"]))
        rows = [{"epoch": e, "val_miou": v, "val_loss": 1 - v, "train_miou": v, "train_loss": 1 - v,
                 "trial_id": trial["id"], **trial.get("cost", {})} for e, v in enumerate(trial["val"], start=1)]
        (tdir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        record_fate(str(folder), trial["id"], "completed", len(rows))
        state.append([json.dumps({"trial_id": trial["id"], "experiment_tag": f"{number}_x"}), "{}"])
    state.reverse()  # Tune's list is not in creation order either
    (folder / "experiment_state-2030-01-01_00-00-00.json").write_text(json.dumps({"trial_data": state}))
    return folder


def model_init_trials() -> list[dict]:
    return [{"id": f"{k:02x}", "params": {"model": MODELS[k % 2], "init": ("scratch", "finetune")[k // 2 % 2]},
             "val": [0.3 + 0.05 * k, 0.35 + 0.05 * k]} for k in range(4)]


def test_the_searched_keys_have_one_answer(tmp_path: Path) -> None:
    """The console (StudySettings), summary.csv and the report read the same keys: model and init always, a key
    the space fixes to one value is not searched, a key the points name is, in declared order."""
    from study.resolve import resolve
    from study.summary import searched_keys, summary_columns

    space = tmp_path / "space.yaml"
    space.write_text("space:\n  model: {choice: [segformer]}\n  init: scratch\n  head_lr_mult: {choice: [1.0, 4.0]}\n"
                     "  batch_size: {choice: [8]}\n  gamma: {uniform: [0.9, 0.99]}\nimage_size: 32\nnum_samples: 2\n")
    settings = resolve({"storage": str(tmp_path)}, None, str(space))
    expected = ["model", "init", "gamma", "head_lr_mult"]
    assert settings.searched_keys() == expected
    recorded = json.loads(json.dumps({"space": settings.space, "points": settings.points}))  # as study.json has it
    assert searched_keys(recorded) == expected
    table = pd.DataFrame({k: [1.0] for k in [*expected, "lr", "batch_size"]})
    assert report_keys(recorded, table) == expected
    grid = {"points": [{"model": "segformer", "init": "scratch", "weight_decay": 0.01}]}  # a grid's points name keys
    assert searched_keys(grid) == ["model", "init", "weight_decay"]
    assert summary_columns(expected)[:5] == ["trial_id", *expected] and "lr" not in summary_columns(expected)


@pytest.mark.parametrize("extra", [{}, {"head_lr_mult": ["choice", [1.0, 4.0]]}])
def test_a_study_that_did_not_search_lr_gets_its_report(tmp_path: Path, extra: dict) -> None:
    """A space of model and init only (or with head_lr_mult): the report is written, its tables show the searched
    columns and no lr; models named hf:/path and tv:name give flat file names without a colon."""
    from analysis.report import write_report

    trials = model_init_trials()
    for k, trial in enumerate(trials):
        trial["params"].update({"head_lr_mult": (1.0, 4.0)[k % 2]} if extra else {})
    settings = {"dataset": "pets", "data_root": str(tmp_path / "no-data"), "epochs": 2, "pretrain": {},
                "space": {"model": ["choice", list(MODELS)], "init": ["choice", ["scratch", "finetune"]], **extra}}
    study = write_study(tmp_path / "study", settings, trials)
    text = write_report(study).read_text()
    sections = text.split("\n## ")
    for title in ("Test mIoU", "Configurations"):
        header = next(line for line in next(s for s in sections if s.startswith(title)).splitlines()
                      if line.startswith("| "))
        assert ("head_lr_mult" in header) == bool(extra) and "| lr |" not in header, header
    report = study / "report"
    assert not [p for p in report.rglob("*") if p.is_dir() and p.parent == report and p.name not in ("test",)]
    assert not [p for p in report.rglob("*") if ":" in p.name]
    assert {"curves_hf_abs_models_mine.png", "curves_tv_lraspp_mobilenet_v3_large.png"} <= {p.name for p in
                                                                                          report.iterdir()}
    assert "cityscapes" not in text.lower()  # no Cityscapes stage: no word of its download


def test_three_objectives_keep_their_order_and_the_curve_its_creation_order(tmp_path: Path) -> None:
    """study.json as the study writes it keeps the objectives' order; the report's Pareto figure draws every pair
    (val mIoU included); hypervolume follows the trials' creation order, not their ids; a val_miou bound no
    configuration meets is said in the Pareto section."""
    from analysis.report import write_report
    from study.orchestrate import record_settings
    from study.resolve import resolve
    from study.settings import ResourcePlan

    space = tmp_path / "space.yaml"
    space.write_text("space:\n  model: {choice: [segformer, fcn_resnet50]}\n  init: scratch\n"
                     "objectives: {val_miou: max, latency_ms: min, peak_mem_mb: min}\n"
                     "constraints: {val_miou: {min: 0.99}}\nimage_size: 32\nnum_samples: 4\n")
    settings = resolve({"storage": str(tmp_path), "name": "three", "data_root": str(tmp_path / "no-data")}, None,
                       str(space))
    record_settings(settings, ResourcePlan(cpus_per_trial=1, gpus_per_trial=0))
    recorded = json.loads((tmp_path / "three" / "study.json").read_text())
    assert list(recorded["objectives"]) == ["val_miou", "latency_ms", "peak_mem_mb"]
    ids = ["ff", "0a", "c3", "5b"]  # created in this order; their ids sort otherwise
    trials = [{"id": i, "params": {"model": "segformer", "init": "scratch"}, "val": [0.2 + 0.1 * k],
               "cost": {"latency_ms": 10.0 - k, "peak_mem_mb": 100.0 + 10 * (k % 2)}} for k, i in enumerate(ids)]
    study = write_study(tmp_path / "study", {**recorded, "image_size": None}, trials)  # no size: no params counted
    text = write_report(study).read_text()
    assert pd.read_csv(study / "report" / "hypervolume.csv")["trial_id"].tolist() == ids
    assert "**No completed configuration meets the constraints (val_miou ≥ 0.99).**" in text
    pareto_lines = text.split("## Pareto set")[1].split("\n## ")[0]
    assert "| val_miou ≥ 0.99 |" in pareto_lines


def _axes_of(monkeypatch, objectives: dict[str, str]) -> list[tuple[str, str]]:
    """(y label, x label) of every panel the Pareto figure draws for ``objectives``."""
    from analysis import pareto_figures

    drawn = {}
    monkeypatch.setattr(pareto_figures, "_save", lambda fig, stem, data: drawn.setdefault("fig", fig))
    front = pd.DataFrame({"model": ["segformer", "segformer"], "best_val_miou": [0.6, 0.5], "test_miou": [0.55, 0.5],
                          "test_ci_low": [np.nan] * 2, "test_ci_high": [np.nan] * 2, "latency_ms": [9.0, 4.0],
                          "params": [3e6, 1e6], "on_test_front": [True, True]})
    pareto_figures.pareto_front_figure(front, front, objectives, Path("unused"))
    return [(ax.get_ylabel(), ax.get_xlabel()) for ax in drawn["fig"].axes]


def test_the_pareto_figure_draws_the_objectives_in_declared_order(monkeypatch) -> None:
    three = _axes_of(monkeypatch, {"val_miou": "max", "latency_ms": "min", "params": "min"})
    assert [(y.split(" (")[0], x.split(" (")[0]) for y, x in three] == [
        ("val mIoU", "latency at batch 1"), ("test mIoU", "latency at batch 1"), ("val mIoU", "parameters"),
        ("test mIoU", "parameters"), ("latency at batch 1", "parameters"), ("latency at batch 1", "parameters")]
    two = _axes_of(monkeypatch, {"latency_ms": "min", "val_miou": "max"})  # y the first, the split on mIoU only
    assert [(y.split(" (")[0], x.split(" (")[0]) for y, x in two] == [
        ("latency at batch 1", "val mIoU"), ("latency at batch 1", "test mIoU")]


def test_hypervolume_follows_creation_order() -> None:
    table = pd.DataFrame({"trial_id": ["ff", "0a"], "created": [1, 2], "best_val_miou": [0.5, 0.7],
                          "latency_ms": [10.0, 5.0], "status": "done", "stop_reason": "completed"})
    curve = pareto.hypervolume_curve(table, {"val_miou": "max", "latency_ms": "min"})
    assert curve["trial_id"].tolist() == ["ff", "0a"] and curve["hypervolume"].tolist() == pytest.approx([0.01, 1.21])


def test_a_folder_task_without_a_stage_samples_four_images_at_its_size(tmp_path: Path, monkeypatch) -> None:
    """A folder task with ``pretrain: none``: its report decodes four training images at the study's size (not the
    whole split again) and says nothing of Cityscapes; a study with a Cityscapes stage still shows (or notes) it."""
    from analysis import report
    from study.data import cache
    from study.data.toy import FOLDER_CLASSES, write_folder

    write_folder(tmp_path / "data", {"train": 10}, np.random.default_rng(0))
    decoded = []
    real = cache._decode
    monkeypatch.setattr(cache, "_decode", lambda source, k, size, *a: decoded.append(size) or real(source, k, size, *a))
    settings = {"dataset": "folder", "classes": list(FOLDER_CLASSES), "data_root": str(tmp_path / "data"),
                "image_size": [32, 48], "epochs": 2, "pretrain": {},
                "space": {"model": ["choice", [MODELS[0]]], "init": ["choice", ["scratch", "finetune"]],
                          "lr": ["loguniform", 1e-4, 1e-3]}}
    trials = [{**t, "params": {**t["params"], "model": MODELS[0], "lr": 1e-4 * (k + 1)}}  # MODELS[0]: no cost counted
              for k, t in enumerate(model_init_trials())]
    text = report.write_report(write_study(tmp_path / "study", settings, trials)).read_text()
    assert "](samples_folder.png)" in text and "cityscapes" not in text.lower()
    assert decoded == [(32, 48)] * 4
    notes: list[str] = []
    staged = {**settings, "pretrain": {"dataset": "cityscapes", "image_size": "32x64", "models": ["segformer"]}}
    report._sample_figures(staged, "folder", tmp_path / "data", tmp_path / "out", notes)
    assert len(notes) == 1 and notes[0].startswith("No cityscapes samples")  # a stage it had: its data is missing


def test_a_constraint_no_configuration_meets_is_said(tmp_path: Path) -> None:
    from analysis.objectives_report import objective_report

    table = pd.DataFrame({"trial_id": ["a", "b"], "model": "segformer", "init": "scratch", "lr": [1e-3, 1e-4],
                          "seed": 0, "best_val_miou": [0.4, 0.3], "latency_ms": [5.0, 3.0], "test_miou": np.nan,
                          "status": "done", "stop_reason": "completed"})
    settings = {"objectives": {"val_miou": "max", "latency_ms": "min"}, "constraints": {"val_miou": {"min": 0.5}}}
    figures, lines, _ = objective_report(table, settings, ["model", "init", "lr"], tmp_path)
    text = "\n".join(lines)
    assert "**No completed configuration meets the constraints (val_miou ≥ 0.5).**" in text
    assert text.count("| val_miou ≥ 0.5 |") == 2 and "every point breaks one" in figures[0][1]
