"""Where a whole study's wall time went: stages from its time-stamped console, the loop from its trials.

    python -m study.run ... 2>&1 | python -m benchmarks.study_timing stamp --log study.log
    python -m benchmarks.study_timing summarise --log study.log --experiment STORAGE/NAME \
        [--train-images 3312] [--image-size 64] [--peak-json gpu.json] --out timing.json

``stamp`` copies its input to stdout and to ``--log``, each line prefixed with the seconds since it
started. ``summarise`` reads the stages from the console lines ``study.run`` prints (checks, Ray's start,
the Cityscapes stage, the trials, the report) and, from each ``trial_*/progress.csv``, the loop's own
training time (epochs x train images / its images/s) and the trial's MFU: images/s x forward+backward
FLOPs per image (``segmodels.cost``) / the bf16 matmul rate (``--peak-json``: ``benchmarks/gpu.py``'s
``results.peak``, else measured here). Needs no Ray.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# The console line that opens each stage (study.orchestrate, study.run), in order.
STAGES = [("checks", r"data and encoders checked"), ("ray_start", r"^Ray "), ("pretraining", r"^pretraining:"),
          ("trials", r"^trials: "), ("trials_done", r"^trials done in"), ("report", r"^report: "),
          ("done", r"^done in")]


def stamp(log: Path) -> None:
    started = time.monotonic()
    with log.open("w") as out:
        for line in sys.stdin:
            stamped = f"{time.monotonic() - started:9.2f} {line}"
            out.write(stamped)
            out.flush()
            sys.stdout.write(line)
            sys.stdout.flush()


def stage_times(log: Path) -> dict[str, Any]:
    """Seconds from the start to the first line of each stage, and each stage's length."""
    first: dict[str, float] = {}
    last_line = 0.0
    for line in log.read_text(errors="replace").splitlines():
        seconds, _, text = line.strip().partition(" ")
        try:
            t = float(seconds)
        except ValueError:
            continue
        last_line = t
        for name, pattern in STAGES:
            if name not in first and re.search(pattern, text.strip()):
                first[name] = t
    marks = [(name, first[name]) for name, _ in STAGES if name in first]
    lengths = {f"{a}_s": round(tb - ta, 1) for (a, ta), (_, tb) in zip(marks, marks[1:], strict=False)}
    return {"first_line_s": {k: round(v, 1) for k, v in first.items()}, "stage_s": lengths,
            "wall_s": round(last_line, 1)}


def trial_times(experiment: Path, train_images: int, flops: dict[str, float], peak_tflops: float | None,
                val_every: int = 2) -> list[dict[str, Any]]:
    out = []
    for progress in sorted(experiment.glob("**/trial_*/progress.csv")):
        rows = list(csv.DictReader(progress.open()))
        if not rows:
            continue
        params = json.loads((progress.parent / "params.json").read_text()) if (progress.parent / "params.json"
                                                                               ).is_file() else {}
        rates = [float(r["images_per_s"]) for r in rows if r.get("images_per_s")]
        epochs = int(float(rows[-1].get("epoch") or 0))
        loop_s = epochs * train_images / statistics.mean(rates) if rates else None
        model = params.get("model") or rows[-1].get("config/model")
        entry = {"trial": progress.parent.name, "model": model, "init": params.get("init"),
                 "seed": params.get("seed"), "epochs": epochs,
                 "img_s_mean": round(statistics.mean(rates), 1) if rates else None,
                 "loop_s": round(loop_s, 1) if loop_s else None,
                 "tune_time_total_s": float(rows[-1]["time_total_s"]) if rows[-1].get("time_total_s") else None}
        if rates and peak_tflops and model in flops:
            entry["mfu"] = round(statistics.mean(rates) * flops[model] / 1e12 / peak_tflops, 5)
        out.append(entry)
    return out


def summarise(log: Path, experiment: Path, train_images: int, image_size: int, peak_json: Path | None) -> dict:
    import torch

    from benchmarks import throughput as tp
    from benchmarks import yardstick as ys

    peak = None
    if peak_json and peak_json.is_file():
        peak = (json.loads(peak_json.read_text()).get("results") or {}).get("peak")
    if not peak or "bf16" not in peak:
        peak = ys.device_peak("cuda" if torch.cuda.is_available() else "cpu")
    flops = {m: ys.train_flops_per_image(tp.fresh_model(m, 3, 0), (image_size, image_size))
             for m in ("segformer", "fcn_resnet50")}
    stages = stage_times(log)
    trials = trial_times(experiment, train_images, flops, peak["bf16"]["tflops"])
    loop = sum(t["loop_s"] or 0 for t in trials)
    trials_s = stages["stage_s"].get("trials_s")
    return {"stages": stages, "trials": trials, "loop_s_sum": round(loop, 1),
            "loop_share_of_wall": round(loop / stages["wall_s"], 3) if stages["wall_s"] else None,
            "loop_share_of_trials_stage": round(loop / trials_s, 3) if trials_s else None,
            "note": "loop_s sums over trials that may run at once; a share over 1 means they overlapped",
            "mfu_mean": round(statistics.mean(t["mfu"] for t in trials if "mfu" in t), 5)
            if any("mfu" in t for t in trials) else None,
            "gflop_per_image_fwd_bwd": {m: round(f / 1e9, 4) for m, f in flops.items()}, "peak": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.study_timing", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stamp")
    s.add_argument("--log", required=True)
    m = sub.add_parser("summarise")
    m.add_argument("--log", required=True)
    m.add_argument("--experiment", required=True)
    m.add_argument("--train-images", type=int, default=3312)
    m.add_argument("--image-size", type=int, default=64)
    m.add_argument("--peak-json")
    m.add_argument("--out")
    args = parser.parse_args(argv)
    if args.command == "stamp":
        stamp(Path(args.log))
        return 0
    result = summarise(Path(args.log), Path(args.experiment), args.train_images, args.image_size,
                       Path(args.peak_json) if args.peak_json else None)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
