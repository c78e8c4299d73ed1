"""The figures of a study with several objectives: its Pareto front on val and on test, and hypervolume
against trials. Each writes ``stem.png`` and ``stem.csv`` (``analysis.figures``' convention)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.figures import _save, plt
from analysis.load import model_colours, model_label
from analysis.pareto import test_column, val_column

AXIS_NAMES = {"val_miou": "mIoU", "latency_ms": "latency at batch 1 (ms)", "throughput_ips": "throughput (img/s)",
              "train_step_ms": "training step (ms)", "peak_mem_mb": "peak memory (MB)", "params": "parameters",
              "flops": "forward FLOPs per image"}


def axis_name(metric: str, direction: str) -> str:
    """An objective's axis label, with the way it is better."""
    return f"{AXIS_NAMES.get(metric, metric)} ({'higher' if direction == 'max' else 'lower'} is better)"


def axis_label(metric: str, direction: str, split: str) -> str:
    """An objective's axis label on ``split``'s panel: mIoU says which split it was measured on, a cost (the same on
    every split) does not."""
    return (f"{split} " if test_column(metric) != val_column(metric) else "") + axis_name(metric, direction)


def pareto_front_figure(candidates: pd.DataFrame, front: pd.DataFrame, objectives: dict[str, str],
                        stem: Path) -> Path:
    """The front in the objectives' declared order: on val, every completed configuration (grey; its mean over
    seeds) and the front (coloured by model); on test, the same front points at their test values, with the 95 % CI
    over seeds, hollow where the point is dominated on test. Two objectives: one row, y the first, x the second,
    the front joined as a staircase. More: one row per pair of objectives (y the earlier, x the later), so every
    objective, val mIoU included, is drawn against every other; the front is over all of them, so a front point
    may look dominated in one pair. ``candidates``: ``analysis.pareto.configuration_means``; ``front``:
    ``analysis.pareto.tested_on_test``."""
    names = list(objectives)
    pairs = [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    colours = model_colours(sorted(set(front["model"]))) if "model" in front else {}
    fig, axes = plt.subplots(len(pairs), 2, figsize=(11, 4.4 * len(pairs)), squeeze=False)
    for row, (y_metric, x_metric) in zip(axes, pairs, strict=True):
        for ax, split in zip(row, ("val", "test"), strict=True):
            _front_panel(ax, split, candidates, front, (x_metric, objectives[x_metric]),
                         (y_metric, objectives[y_metric]), colours, staircase=len(objectives) == 2)
    if len(objectives) > 2:
        fig.suptitle(f"Each pair of the {len(objectives)} objectives (the front is over all of them)", fontsize=9)
    fig.tight_layout()
    return _save(fig, stem, front)


def _front_panel(ax, split: str, candidates: pd.DataFrame, front: pd.DataFrame, x: tuple[str, str],
                 y: tuple[str, str], colours: dict[str, str], staircase: bool) -> None:
    """One panel of ``pareto_front_figure``: ``x`` and ``y`` are (metric, direction)."""
    column = val_column if split == "val" else test_column
    (x_metric, x_dir), (y_metric, y_dir) = x, y
    if split == "val":
        ax.scatter(candidates[val_column(x_metric)], candidates[val_column(y_metric)], color="lightgrey", s=30,
                   label="every completed configuration")
    if staircase:
        line = front.sort_values(column(x_metric))
        ax.plot(line[column(x_metric)], line[column(y_metric)], color="black", lw=0.8, alpha=0.6,
                drawstyle="steps-post" if split == "val" else "default")
    for model, group in front.groupby("model"):
        colour = colours.get(model_label(model), "tab:blue")
        kept = group["on_test_front"].astype(bool) if split == "test" and "on_test_front" in group else \
            pd.Series(True, index=group.index)
        for on_front, part in group.groupby(kept):
            face = colour if on_front else "none"
            ax.scatter(part[column(x_metric)], part[column(y_metric)], s=60, facecolors=face, edgecolors=colour,
                       label=model_label(model) + ("" if on_front else " (dominated on test)"))
        if split == "test" and "test_ci_low" in group and "val_miou" in (x_metric, y_metric):
            low = (group["test_miou"] - group["test_ci_low"]).fillna(0.0)  # one seed: no interval
            high = (group["test_ci_high"] - group["test_miou"]).fillna(0.0)
            bars = {"yerr" if y_metric == "val_miou" else "xerr": [low, high]}
            ax.errorbar(group[column(x_metric)], group[column(y_metric)], **bars, fmt="none", ecolor=colour,
                        alpha=0.7)
    ax.set_xlabel(axis_label(x_metric, x_dir, split))
    ax.set_ylabel(axis_label(y_metric, y_dir, split))
    ax.set_title(f"Pareto set chosen on val, {'on val' if split == 'val' else 'tested on test'}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def hypervolume_figure(curve: pd.DataFrame, objectives: dict[str, str], stem: Path) -> Path:
    """Hypervolume of the completed trials so far against the trials trained (``analysis.pareto.hypervolume_curve``)."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.step(curve["trial"], curve["hypervolume"], where="post", color="tab:purple")
    ax.scatter(curve["trial"], curve["hypervolume"], color="tab:purple", s=12)
    ax.set_xlabel("trials trained, in the order they were created")
    ax.set_ylabel("hypervolume (objectives rescaled to [0, 1])")
    ax.set_title("Hypervolume of " + " × ".join(f"{m} ({d})" for m, d in objectives.items()))
    ax.grid(alpha=0.3)
    return _save(fig, stem, curve)
