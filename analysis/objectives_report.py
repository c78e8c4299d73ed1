"""The report's sections on accuracy against cost: the Pareto set of a study with several objectives (chosen on
val, tested on test), hypervolume against trials, the best model under each constraint, the quality-against-cost
scatter of any study, the configurations refused before training, and which model is best.

The report reads ``study.json``'s ``objectives`` and ``constraints`` (``analysis.pareto``) and the per-trial
columns of the summary; a cost it does not find is never made up: the scatter falls back from measured latency
to counted FLOPs and says so on its axis.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis import pareto
from analysis.load import configuration_keys, model_label
from analysis.pareto_figures import hypervolume_figure, pareto_front_figure
from segmodels.cost import MEASURED
from study.options import is_missing
from study.summary import COUNTED_COST

LATENCY = "latency_ms"


def trained(table: pd.DataFrame) -> pd.DataFrame:
    """The trials that trained: every one but the configurations refused as infeasible before training."""
    return table[table["stop_reason"] != pareto.INFEASIBLE]


def cost_columns(table: pd.DataFrame) -> list[str]:
    """The numeric cost columns the summary has a value in: counted (params, FLOPs) and measured on the device."""
    return [c for c in (*COUNTED_COST, *MEASURED) if c in table.columns and table[c].notna().any()]


def cost_axis(table: pd.DataFrame) -> tuple[str, str, str] | None:
    """(column, axis label, caption) of the quality-against-cost scatter: measured latency where the summary has
    it, else FLOPs, labelled as standing in for the latency; None when there is neither."""
    done = trained(table)
    if LATENCY in done and done[LATENCY].notna().any():
        device = _device(done)
        return (LATENCY, f"inference latency at batch 1, ms{device} (log)",
                f"Best val mIoU of every trained trial against its model's measured inference latency at batch 1"
                f"{device} (`summary.csv`'s `latency_ms`).")
    if "flops" in done and done["flops"].notna().any():
        return ("flops", "forward GFLOPs per image (log); latency not measured in this study, FLOPs stand in",
                "Best val mIoU of every trained trial against its model's forward GFLOPs per image at the trial's "
                "image size (log scale), each model labelled with its parameter count (`summary.csv`'s `params` and "
                "`flops`); latency was not measured, so counted FLOPs stand in for it.")
    return None


def _device(table: pd.DataFrame) -> str:
    devices = sorted({str(d) for d in table.get("cost_device", pd.Series(dtype=object)).dropna()})
    return f" on {', '.join(devices)}" if devices else ""


def value_text(value: object) -> str:
    """A table cell for any recorded value: numbers to 4 significant digits, a dash when unset."""
    if is_missing(value):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def configuration_label(row: pd.Series, keys: list[str]) -> str:
    """A configuration in words: its model, then its init (searched or not: it names the strategy) and every other
    searched key as ``key value``."""
    shown = ["init", *(k for k in keys if k not in ("model", "init"))]
    others = [f"{k} {value_text(row[k])}" for k in shown if k in row]
    return f"{model_label(str(row['model']))}" + (f" ({', '.join(others)})" if others else "")


def infeasible_lines(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """The section listing the configurations refused before training, with their measured cost."""
    refused = table[table["stop_reason"] == pareto.INFEASIBLE]
    if not len(refused):
        return []
    costs = cost_columns(refused)
    lines = ["## Infeasible configurations", "", f"{len(refused)} configuration(s) broke a constraint on a cost "
             "measured before training, so they were never trained; they are in no figure and no Pareto set.", ""]
    for _, row in refused.iterrows():
        cost = ", ".join(f"{c} {value_text(row[c])}" for c in costs)
        lines.append(f"- `{row['trial_id']}` {configuration_label(row, keys)}" + (f": {cost}" if cost else ""))
    return lines + [""]


def pareto_trial_ids(table: pd.DataFrame, settings: dict, keys: list[str]) -> list[str]:
    """The trials (every seed) of the configurations on the val Pareto front: those the report scores on test."""
    objectives, constraints = pareto.objectives_of(settings), pareto.constraints_of(settings)
    if len(objectives) < 2 or not _has_columns(table, [*objectives, *constraints]):
        return []
    front = pareto.pareto_set(trained(table), objectives, group_keys(table, keys), constraints)
    return [i for ids in front["trial_ids"] for i in ids.split()]


def group_keys(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """The keys a configuration is grouped by: every configuration column of the summary (init too, when the space
    fixed it), then any other searched key."""
    return list(dict.fromkeys([*configuration_keys(table), *(k for k in keys if k in table.columns)]))


def _has_columns(table: pd.DataFrame, metrics: list[str]) -> bool:
    return all(pareto.val_column(m) in table.columns for m in metrics)


def objective_report(table: pd.DataFrame, settings: dict, keys: list[str],
                     out: Path) -> tuple[list[tuple[Path, str]], list[str], list[str]]:
    """(figures, markdown lines, notes) for the objectives and constraints ``settings`` (``study.json``) names;
    ``table``: one row per trial with ``test_miou`` for the trials ``pareto_trial_ids`` gave."""
    objectives, constraints = pareto.objectives_of(settings), pareto.constraints_of(settings)
    missing = [m for m in [*objectives, *constraints] if pareto.val_column(m) not in table.columns]
    if missing:
        return [], [], [f"No Pareto set or constraint check: the summary has no column for {', '.join(missing)}."]
    figures: list[tuple[Path, str]] = []
    lines: list[str] = []
    costs = tuple(cost_columns(table))
    if len(objectives) >= 2:
        figures, lines = _pareto_part(trained(table), objectives, constraints, keys, costs, out)
    if constraints:
        lines += [constraint_sentence(trained(table), keys, constraints, costs), ""]
    return figures, lines, []


def _pareto_part(table: pd.DataFrame, objectives: dict[str, str], constraints: dict, keys: list[str],
                 costs: tuple[str, ...], out: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """The Pareto figure, the hypervolume figure and the table of the Pareto set."""
    front = pareto.pareto_set(table, objectives, group_keys(table, keys), constraints, extra=(*costs, "best_val_miou"))
    if not len(front):
        return [], ["## Pareto set", "", "No trial completed its epochs, so there is no Pareto set.", ""]
    tested = pareto.tested_on_test(front, table.set_index("trial_id")["test_miou"], objectives)
    tested.to_csv(out / "pareto_set.csv", index=False)
    columns = [pareto.val_column(m) for m in objectives]
    candidates = pareto.configuration_means(table, group_keys(table, keys), columns)
    names = " and ".join(f"{m} ({d})" for m, d in objectives.items())
    infeasible = "" if tested["feasible"].all() else (" No configuration meets the constraints, so the set is taken "
                                                       "among all of them and every point breaks one.")
    figures = [(pareto_front_figure(candidates, tested, objectives, out / "pareto_front"),
                f"The Pareto set of {names}, chosen on val among the completed configurations (each the mean over its "
                "seeds), then the same configurations on test, with the 95 % CI over seeds; hollow: dominated on "
                "test" + (f"; one row per pair of the {len(objectives)} objectives." if len(objectives) > 2 else ".")
                + infeasible),
               (hypervolume_figure(pareto.hypervolume_curve(table, objectives, constraints), objectives,
                                   out / "hypervolume"),
                "Hypervolume of the completed trials so far against the trials trained (objectives rescaled to "
                "[0, 1] over the completed trials; reference point 1.1 in each).")]
    return figures, pareto_table_lines(tested, objectives, keys, costs, constraints)


def pareto_table_lines(tested: pd.DataFrame, objectives: dict[str, str], keys: list[str],
                       costs: tuple[str, ...], constraints: dict | None = None) -> list[str]:
    """The Pareto set as a markdown table: configuration, seeds, val and test mIoU, cost columns, test front; with
    ``constraints``, the ones each configuration breaks, said first when no configuration meets them all."""
    constraints = constraints or {}
    shown = [c for c in dict.fromkeys([*(pareto.val_column(m) for m in objectives if m != "val_miou"), *costs])
             if c in tested.columns and c != "cost_device"]
    lines = ["## Pareto set", ""]
    if constraints and not tested["feasible"].all():
        words = " and ".join(pareto.bound_text(m, b) for m, b in constraints.items())
        lines += [f"**No completed configuration meets the constraints ({words}).** The set below is taken among "
                  "all of them, as if there were none: every configuration in it breaks a constraint, named in its "
                  "*breaks* column.", ""]
    lines += [f"The {len(tested)} configuration(s) no other completed configuration beats in every "
              f"objective ({', '.join(f'{m} {d}' for m, d in objectives.items())}), chosen on val means over seeds, "
              "then tested on test (`pareto_set.csv`). *On test front*: still undominated among them on test.", "",
              "| configuration | seeds | val mIoU | test mIoU [95 % CI] | " + "".join(f"{c} | " for c in shown)
              + "on test front |" + (" breaks |" if constraints else ""),
              "| --- | ---: | ---: | --- | " + "---: | " * len(shown) + "--- |" + (" --- |" if constraints else "")]
    for _, row in tested.iterrows():
        ci = "" if math.isnan(row["test_ci_low"]) else f" [{row['test_ci_low']:.4f}, {row['test_ci_high']:.4f}]"
        test = "—" if math.isnan(row["test_miou"]) else f"{row['test_miou']:.4f}{ci}"
        cells = "".join(f"{value_text(row[c])} | " for c in shown)
        breaks = f" {'; '.join(pareto.broken(row, constraints)) or '—'} |" if constraints else ""
        lines.append(f"| {configuration_label(row, keys)} | {row['seeds']} | {row['best_val_miou']:.4f} | {test} | "
                     f"{cells}{'yes' if row['on_test_front'] else 'no'} |{breaks}")
    return lines + [""]


def constraint_sentence(table: pd.DataFrame, keys: list[str], constraints: dict, costs: tuple[str, ...]) -> str:
    """The best model under each constraint alone, and under all of them: the configuration with the highest mean
    val mIoU among those whose means meet it, with its test mIoU where it was scored."""
    best = pareto.best_under_constraints(table, group_keys(table, keys), constraints, extra=("test_miou", *costs))
    parts = []
    for name, row in best.items():
        case = "all constraints together" if name == "all" else pareto.bound_text(name, constraints[name])
        if row is None:
            parts.append(f"under {case}, no completed configuration qualifies")
            continue
        test = "" if math.isnan(row.get("test_miou", math.nan)) else f", test mIoU {row['test_miou']:.4f}"
        parts.append(f"under {case}, {configuration_label(row, keys)} (val mIoU {row['best_val_miou']:.4f}{test})")
    return "**Best model under each constraint** (chosen on val means over seeds): " + "; ".join(parts) + "."


def which_model_lines(rows: pd.DataFrame, seeds: int) -> list[str]:
    """The "Which model" section: every pair of models' best configurations on test mIoU, their own Holm family."""
    if not len(rows):
        return []
    from analysis.findings import MIN_SEEDS

    lines = ["## Which model", "", "Each pair of models' best configurations (chosen on val), compared on test mIoU "
             "with Welch's t-test and a Holm correction of their own, apart from the claims' (`which_model.csv`)."
             + ("" if seeds > 1 else f" One seed per configuration: no verdict (at least {MIN_SEEDS} per group)."), "",
             "| A | B | n (A/B) | mean A | mean B | A − B [CI] | p (Holm) | verdict |",
             "| --- | --- | --- | ---: | ---: | --- | ---: | --- |"]
    for _, row in rows.iterrows():
        ci = "" if math.isnan(row["ci_low"]) else f" [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
        p = "—" if math.isnan(row["p_holm"]) else f"{row['p_holm']:.3g}"
        lines.append(f"| {row['group_a']} | {row['group_b']} | {row['n_a']}/{row['n_b']} | {row['mean_a']:.3f} | "
                     f"{row['mean_b']:.3f} | {row['diff']:+.3f}{ci} | {p} | **{row['verdict']}** |")
    return lines + [""]
