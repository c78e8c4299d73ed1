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
