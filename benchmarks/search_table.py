"""The search benchmark's JSON (``benchmarks.search_replay --out``) as Markdown tables, one per curve set:

    python -m benchmarks.search_table benchmarks/results/search-benchmark.json [--shares 0.5 1.0]

Each row: a method's normalised regret at each budget share (device-seconds), its mean with the bootstrap 95 % CI,
its IQM, and the share of runs within 0.01 val mIoU of the set's best; the default first, peers by regret at 100 %.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def cell(row: dict[str, Any]) -> str:
    low, high = row["regret_ci"]
    return f"{row['regret_mean']:.3f} [{low:.3f}, {high:.3f}] / {row['regret_iqm']:.3f} / {row['within_0.01']:.0%}"


def table(name: str, result: dict[str, Any], shares: list[str]) -> list[str]:
    methods = {m: r for m, r in result["methods"].items() if "budget_share" in r}
    order = sorted(methods, key=lambda m: (m != result["default"], methods[m]["budget_share"]["1.0"]["regret_mean"]))
    lines = [f"**{name}** ({result['configurations']} configurations, {result['epochs']} epochs, seeds "
             f"{result['seeds']}; budget {result['budget']['stated_as']})", "",
             "| method | " + " | ".join(f"{float(s):.0%} of the budget" for s in shares) + " |",
             "| --- | " + " | ".join("---" for _ in shares) + " |"]
    for method in order:
        name_cell = f"**{method}** (default)" if method == result["default"] else method
        lines.append(f"| {name_cell} | " + " | ".join(cell(methods[method]["budget_share"][s]) for s in shares) + " |")
    skipped = {m: r["skipped"] for m, r in result["methods"].items() if "skipped" in r}
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{m} ({why})" for m, why in skipped.items())]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", help="a benchmarks.search_replay output JSON")
    parser.add_argument("--shares", nargs="+", default=["0.25", "0.5", "1.0"])
    args = parser.parse_args(argv)
    data = json.loads(Path(args.result).read_text())
    print("Each cell: normalised regret mean [bootstrap 95 % CI] / IQM / runs within 0.01 of the best.\n")
    for name, result in data["curve_sets"].items():
        print("\n".join(table(name, result, args.shares)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
