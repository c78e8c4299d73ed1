"""A researcher's own study end to end: their data (a folder task, non-square, class weights on), their models
(a torchvision builder, a Hugging Face folder and SegFormer in one space file, ASHA), a space that searches the batch
size and leaves gamma at its default, a confirm stage, the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from segmodels import build_model, save_encoder
from segmodels.toy import write_tiny_model
from study.data.toy import FOLDER_CLASSES, write_toy

REPO = Path(__file__).resolve().parents[1]
TV_MODEL = "tv:lraspp_mobilenet_v3_large"


def test_own_task_and_space_end_in_a_report(ray_cluster: str, cache_dir: Path, tmp_path: Path) -> None:
    write_toy(tmp_path / "data", seed=3, formats=("folder",))
    hf_folder = write_tiny_model(tmp_path / "tiny-upernet", "upernet", num_classes=4, weights=True)
    hf_model = f"hf:{hf_folder}"
    encoders = {m: str(save_encoder(build_model(m, 4), tmp_path / f"{m.replace(':', '_')}.pt"))
                for m in ("segformer", TV_MODEL)}  # offline: no ImageNet or Hub weights, so encoder files
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({"dataset": "folder", "root": "data/folder", "classes": list(FOLDER_CLASSES),
                                    "image_size": "32x48", "class_weights": "median_frequency"}))
    models = ["segformer", TV_MODEL, hf_model]
    space = tmp_path / "mine.yaml"
    space.write_text(yaml.safe_dump({
        "space": {"model": {"choice": models}, "init": {"choice": ["finetune"]},
                  "lr": {"loguniform": [1.0e-3, 3.0e-3]}, "batch_size": {"choice": [4, 8]}},
        "points": [{"model": m, "init": "finetune", "lr": 2.0e-3, "batch_size": 8} for m in models],
        "num_samples": 3, "epochs": 2, "val_every": 1, "pretrain": "none",
        "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}},
    }))
    args = [sys.executable, "-m", "study.run", "--space", str(space), "--task", str(task), "--storage",
            str(tmp_path / "results"), "--confirm-top", "3", "--repeats", "2",
            "--pretrained-segformer", encoders["segformer"], "--pretrained-model", f"{TV_MODEL}={encoders[TV_MODEL]}"]
    done = subprocess.run(args, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ray_cluster}, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    experiment = tmp_path / "results" / "mine"

    recorded = json.loads((experiment / "study.json").read_text())  # the task travels with the study
    assert recorded["dataset"] == "folder" and recorded["classes"] == list(FOLDER_CLASSES)
    assert recorded["class_weights"] == "median_frequency" and recorded["image_size"] == [32, 48]
    frequencies = pd.read_csv(experiment / "class_frequencies.csv")
    assert list(frequencies["class"]) == list(FOLDER_CLASSES) and (frequencies["train_pixels"] > 0).all()

    summary = pd.read_csv(experiment / "summary.csv")  # the confirm stage: 3 configurations x 2 seeds
    assert len(summary) == 6 and set(summary["model"]) == set(models) and (summary["status"] == "done").all()
    assert summary["params"].gt(0).all() and summary["flops"].gt(0).all()
    config = json.loads(next((experiment / "confirm").glob("trial_*/params.json")).read_text())
    assert config["model"] in models

    report = (experiment / "report" / "report.md").read_text()
    findings = pd.read_csv(experiment / "report" / "findings.csv")
    labels = {"segformer": "SegFormer", TV_MODEL: "lraspp_mobilenet_v3_large", hf_model: "tiny-upernet"}
    pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]
    for a, b in pairs:  # a row for every pair of models that ran
        assert any(labels[a] in claim and labels[b] in claim for claim in findings["claim"]), (a, b, findings)
    assert "tiny-upernet" in report and "Per-class test IoU" in report
    assert "batch_size" in report and "gamma" not in done.stdout  # what was searched is shown, what was not is not
