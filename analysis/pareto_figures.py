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


def pareto_front_figure(candidates: pd.DataFrame, front: pd.DataFrame, objectives: dict[str, str],
                        stem: Path) -> Path:
    """Two panels over the first two objectives (y the first, x the second): on val, every completed
    configuration (grey; its mean over seeds) and the front (coloured by model, joined); on test, the same front
    points at their test values, with the 95 % CI over seeds, hollow where the point is dominated on test.
    ``candidates``: ``analysis.pareto.configuration_means``; ``front``: ``analysis.pareto.tested_on_test``."""
    (y_metric, y_dir), (x_metric, x_dir) = list(objectives.items())[:2]
    colours = model_colours(sorted(set(front["model"]))) if "model" in front else {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharex=True)
    for ax, split, column in ((axes[0], "val", val_column), (axes[1], "test", test_column)):
        if split == "val":
            ax.scatter(candidates[val_column(x_metric)], candidates[val_column(y_metric)], color="lightgrey", s=30,
                       label="every completed configuration")
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
            if split == "test" and y_metric == "val_miou" and "test_ci_low" in group:
                low = (group["test_miou"] - group["test_ci_low"]).fillna(0.0)  # one seed: no interval
                high = (group["test_ci_high"] - group["test_miou"]).fillna(0.0)
                ax.errorbar(group[column(x_metric)], group["test_miou"], yerr=[low, high], fmt="none", ecolor=colour,
                            alpha=0.7)
        ax.set_xlabel(axis_name(x_metric, x_dir))
        ax.set_ylabel(f"{split} " + axis_name(y_metric, y_dir))
        ax.set_title(f"Pareto set chosen on val, {'on val' if split == 'val' else 'tested on test'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if len(objectives) > 2:
        fig.suptitle(f"The first two of {len(objectives)} objectives (the front is over all of them)", fontsize=9)
    fig.tight_layout()
    return _save(fig, stem, front)


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
