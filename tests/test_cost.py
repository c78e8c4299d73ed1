"""What a model costs: summary.csv's parameter and FLOP columns, the report's cost figure, and the GPU share a
trial asks for from its model's estimated peak memory. No Ray; the smallest model (SegFormer-B0) at toy sizes."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from segmodels import build_model
from segmodels.cost import count_flops, count_parameters
from study.gpu_memory import MIN_SHARE, OVERHEAD_BYTES, estimate_peak_bytes, gpu_share, training_memory
from study.settings import ResourcePlan, StudySettings
from study.summary import COST_COLUMNS, SUMMARY_COLUMNS, add_cost, model_cost, study_num_classes

GONE = "hf:/nonexistent/model-folder"


def test_each_trial_gets_its_models_parameters_and_flops_at_its_image_size() -> None:
    trials = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "model": ["segformer", "segformer", "segformer", GONE],
                           "image_size": [None, None, "64", None]})
    model_cost.cache_clear()
    costed = add_cost(trials, {"dataset": "pets", "image_size": "32"})
    net = build_model("segformer", 3)
    assert set(COST_COLUMNS) <= set(SUMMARY_COLUMNS)
    assert (costed.loc[:2, "params"] == count_parameters(net)).all()
    assert costed.loc[0, "flops"] == pytest.approx(count_flops(net, (32, 32)))
    assert costed.loc[2, "flops"] == pytest.approx(count_flops(net, (64, 64)))  # a searched image size
    assert costed.loc[2, "flops"] > 3.5 * costed.loc[0, "flops"]  # 4x the pixels
    assert math.isnan(costed.loc[3, "params"]) and math.isnan(costed.loc[3, "flops"])  # cannot be built here
    assert model_cost.cache_info().misses == 3  # once per (model, size), not per trial: 3 for the 4 trials
    assert "params" not in trials.columns  # the table given is left as it was


def test_the_class_count_comes_from_the_task_or_its_format() -> None:
    assert study_num_classes({"dataset": "pets"}) == 3 and study_num_classes({"dataset": "cityscapes"}) == 19
    assert study_num_classes({"dataset": "folder", "classes": ["sky", "road"]}) == 2
    assert study_num_classes({"dataset": "folder"}) is None


def test_the_report_draws_quality_against_cost(tmp_path: Path) -> None:
    from analysis import figures

    table = add_cost(pd.DataFrame({"trial_id": ["a", "b", "c"], "model": ["segformer", "segformer", GONE],
                                   "strategy": ["scratch", "fine-tune", "scratch"], "best_val_miou": [0.4, 0.5, 0.6],
                                   "stop_reason": ["completed", "stopped early (ASHA)", "completed"]}),
                     {"dataset": "pets", "image_size": "32"})
    png = figures.cost_figure(table, tmp_path / "cost")
    assert png.stat().st_size > 1000
    data = pd.read_csv(png.with_suffix(".csv"))
    assert list(data["trial_id"]) == ["a", "b"]  # the model without a cost is not drawn
    assert (data["flops"] == table.loc[0, "flops"]).all()


def test_a_gpu_share_is_the_quarters_that_hold_the_estimated_peak() -> None:
    gib = 1 << 30
    assert gpu_share(1 * gib, 100 * gib) == MIN_SHARE  # a small model still takes a quarter (4 per GPU)
    assert gpu_share(30 * gib, 100 * gib) == 0.5
    assert gpu_share(50 * gib, 100 * gib) == 0.5 and gpu_share(51 * gib, 100 * gib) == 0.75
    assert gpu_share(300 * gib, 100 * gib) == 1.0  # never more than one GPU
    assert estimate_peak_bytes(1000, 10, 8) == 20 * 1000 + 80 + OVERHEAD_BYTES


def test_the_activations_are_measured_and_grow_with_the_image() -> None:
    parameters, small = training_memory("segformer", "b0", 3, 32, 32)
    _, large = training_memory("segformer", "b0", 3, 64, 64)
    assert parameters == count_parameters(build_model("segformer", 3))
    assert 0 < small and large > 3.5 * small  # 4x the pixels (attention grows faster still)


def test_each_model_asks_for_its_own_share_of_the_gpu() -> None:
    settings = StudySettings(dataset="pets", image_size="32", batch_size=8, cpus_per_trial=2, gpus_per_trial=0.25,
                             points=[{"model": "segformer", "init": "scratch", "lr": 1e-3, "gamma": 0.98}],
                             space={"model": ("choice", ["segformer"]), "batch_size": ("choice", [8, 16])})
    parameters, activations = training_memory("segformer", "b0", 3, 32, 32)
    peak = estimate_peak_bytes(parameters, activations, 16)  # the largest batch the space may sample
    assert settings.gpu_shares(gpu_bytes=peak) == {"segformer": 1.0}
    assert settings.gpu_shares(gpu_bytes=3 * peak) == {"segformer": 0.5}
    plan = ResourcePlan(cpus_per_trial=2, gpus_per_trial=0.25, gpus_per_model=settings.gpu_shares(gpu_bytes=3 * peak))
    assert plan.trial_resources({"model": "segformer", "lr": 1e-3}) == {"cpu": 2, "gpu": 0.5}
    assert plan.trial_resources({"model": "fcn_resnet50"}) == {"cpu": 2, "gpu": 0.25}  # not sized: the default


@pytest.mark.parametrize("groups", [1, 8])
def test_a_backward_pass_counts_one_forward_per_gradient(groups: int) -> None:
    """Dense or grouped (SegFormer's depthwise Mix-FFN), a convolution's backward is its forward once for the
    input's gradient and once for the weight's: torch's own formula counts a grouped weight gradient as dense."""
    import torch

    stem, conv = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=groups)
    stem_flops = 2 * 16 * 16 * 8 * 3  # multiply-adds of every output pixel, counted as 2
    conv_flops = 2 * 16 * 16 * 8 * (8 // groups) * 9
    net = torch.nn.Sequential(stem, conv)
    assert count_flops(net, (16, 16)) == stem_flops + conv_flops
    # the images need no gradient: the stem computes its weight's only, the conv both
    assert count_flops(net, (16, 16), backward=True) == stem_flops + conv_flops + stem_flops + 2 * conv_flops


# ------------------------------------------------------------------ the measured cost's cache (issue 35, defect 9)
def _readings(*latencies: float, counted: dict | None = None):
    """A fake ``measure``: one reading per call, each ``latencies`` value in turn (the training step 10x it)."""
    calls = []

    def measure() -> dict:
        latency = latencies[min(len(calls), len(latencies) - 1)]
        calls.append(latency)
        return {"latency_ms": latency, "train_step_ms": 10 * latency, "throughput_ips": 1000 / latency,
                "peak_mem_mb": 5.0, "cost_device": "cpu test", **(counted or {})}

    return measure, calls


KEY = {"model": "lraspp_mobilenet_v3_large", "image_size": [64, 64], "device": "cpu test", "precision": "fp32"}


def test_a_measurement_is_repeated_and_its_spread_kept(tmp_path: Path) -> None:
    import json

    from segmodels.cost import REPEATS, cached_cost

    measure, calls = _readings(6.0, 5.8, 6.1, counted={"params": 7})
    cost = cached_cost(tmp_path, KEY, measure)
    assert len(calls) == REPEATS and cost["latency_ms"] == 6.0 and cost["params"] == 7  # the median of the three
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["spread"]["latency_ms"] == [5.8, 6.1] and record["readings"]["latency_ms"] == [6.0, 5.8, 6.1]
    assert cached_cost(tmp_path, KEY, measure) == cost and len(calls) == REPEATS  # from the file


def test_readings_spread_wide_are_taken_again(tmp_path: Path) -> None:
    from segmodels.cost import REPEATS, ROUNDS, cached_cost

    measure, calls = _readings(27.3, 5.8, 6.0, 5.8, 5.9, 5.9)  # a burst of load in the first round
    assert cached_cost(tmp_path, KEY, measure)["latency_ms"] == 5.9 and len(calls) == 2 * REPEATS
    noisy, calls = _readings(*[5.8, 27.3, 9.0] * ROUNDS)  # never steady: the fastest round, after every round
    assert cached_cost(tmp_path / "other", KEY, noisy)["latency_ms"] == 9.0 and len(calls) == ROUNDS * REPEATS


def test_a_cached_measurement_taken_under_load_is_measured_again(tmp_path: Path) -> None:
    """LR-ASPP measured 27.3 ms under load and 5.8 ms idle: the next use checks one quick reading, finds it far
    faster than every cached reading, measures again and keeps the idle measurement for the studies after it."""
    from segmodels.cost import REPEATS, cached_cost

    loaded, _ = _readings(27.3, 27.0, 27.6)
    assert cached_cost(tmp_path, KEY, loaded)["latency_ms"] == 27.3
    idle, calls = _readings(5.8, 5.9, 5.7)
    check, checks = _readings(5.8)
    assert cached_cost(tmp_path, KEY, idle, check)["latency_ms"] == 5.8 and len(calls) == REPEATS
    assert cached_cost(tmp_path, KEY, idle, check)["latency_ms"] == 5.8 and len(calls) == REPEATS  # now agrees
    assert len(checks) == 2


def test_a_check_slower_than_the_cache_keeps_it(tmp_path: Path) -> None:
    """A slower check reading means load now: measuring now would be loaded too, so the idle cache stays; a
    check within the cached readings' spread (and the tolerance) agrees."""
    from segmodels.cost import cached_cost

    idle, calls = _readings(5.8, 5.9, 5.7)
    cached_cost(tmp_path, KEY, idle)
    for reading in (27.3, 6.5, 5.0):
        check, _ = _readings(reading)
        assert cached_cost(tmp_path, KEY, idle, check)["latency_ms"] == 5.8
    assert len(calls) == 3


def test_remeasure_cost_measures_again_and_keeps_the_new_measurement(tmp_path: Path) -> None:
    from segmodels.cost import REPEATS, cached_cost

    first, _ = _readings(5.8)
    cached_cost(tmp_path, KEY, first)
    slower, calls = _readings(7.0)  # e.g. a device whose clocks are now capped: only a forced re-measure says so
    assert cached_cost(tmp_path, KEY, slower, force=True)["latency_ms"] == 7.0 and len(calls) == REPEATS
    assert cached_cost(tmp_path, KEY, slower)["latency_ms"] == 7.0 and len(calls) == REPEATS


def test_an_hf_folder_is_keyed_by_its_content_not_its_path(tmp_path: Path) -> None:
    import os

    from segmodels.cost import model_content
    from segmodels.toy import write_tiny_model

    folder = write_tiny_model(tmp_path / "my-model", "segformer", weights=True)
    first = model_content(f"hf:{folder}")
    os.utime(folder / "config.json", (1, 1))  # touched, not changed: the same content
    assert model_content(f"hf:{folder}") == first
    write_tiny_model(folder, "segformer", weights=True)  # the same architecture saved again, other weights
    second = model_content(f"hf:{folder}")
    write_tiny_model(folder, "upernet", weights=True)  # another model saved to the same folder
    assert len({first, second, model_content(f"hf:{folder}")}) == 3
    assert model_content("segformer") is None and model_content("hf:nvidia/mit-b0") is None  # not a folder


def test_a_trial_measures_again_for_another_model_in_the_same_folder_or_when_told(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """study.trial_cost end to end, with the timing faked: the key carries the hf: folder's content, and
    ``remeasure_cost`` (``--remeasure-cost``) measures again whatever the cache holds."""
    import study.trial_cost as trial_cost_module
    from segmodels.cost import REPEATS
    from segmodels.toy import write_tiny_model
    from study.config import TrainConfig

    fake, calls = _readings(5.8)
    monkeypatch.setattr(trial_cost_module, "measure_cost", lambda net, *args, **kwargs: fake())
    folder = write_tiny_model(tmp_path / "model", "segformer")
    cfg = TrainConfig(model=f"hf:{folder}", image_size=(32, 32), device="cpu", precision="fp32",
                      cache_dir=str(tmp_path / "cache"))
    segformer = trial_cost_module.trial_cost(cfg, 2)
    assert len(calls) == REPEATS
    trial_cost_module.trial_cost(cfg, 2)
    assert len(calls) == REPEATS + 1  # from the cache, after one check reading
    write_tiny_model(folder, "upernet")
    upernet = trial_cost_module.trial_cost(cfg, 2)
    assert len(calls) == 2 * REPEATS + 1  # another model at the same path: measured, not the old cost
    assert upernet["params"] != segformer["params"]
    trial_cost_module.trial_cost(cfg.replace(remeasure_cost=True), 2)
    assert len(calls) == 3 * REPEATS + 1 and len(list((tmp_path / "cache" / "cost").glob("*.json"))) == 2


def test_remeasure_cost_is_an_option_every_trial_gets() -> None:
    from study.run import settings_from_args
    from study.settings import ResourcePlan

    settings = settings_from_args(["--preset", "demo", "--remeasure-cost"])
    assert settings.remeasure_cost and settings.trial_base({}, ResourcePlan(1, 0))["remeasure_cost"]
    assert not settings_from_args(["--preset", "demo"]).remeasure_cost
