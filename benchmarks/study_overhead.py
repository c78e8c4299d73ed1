"""What Ray adds per trial: a small demo-preset study, its wall time against its trials' own training time.

    python -m benchmarks.study_overhead [--variants tune,train] [--repeats 1] [--num-samples 4] [--epochs 4]
                                        [--max-concurrent 1] [--out FILE] [--quick]

Each variant is the same study run with another trial runner (``--trial-runner tune`` / ``train``),
or the Train runner with one thing changed (``train-preemption-watcher``: the watcher actor on;
``train-fast-health-check``: the controller polls every 0.2 s), alternating within each repeat so that
a slow moment of the machine hits every variant alike. ``--variants all`` runs all four.

Runs ``python -m study.run --preset demo`` (a subprocess, as a user would: Ray is started and shut
down inside it) on toy data in a temporary folder, with encoder files written by
``segmodels.save_encoder(build_model(m, 19), path)`` passed as ``--pretrained-segformer`` /
``--pretrained-fcn`` so there is no pretraining stage. Toy data and the decoded-data cache are made
before the clock starts. Then it reads Tune's ``trial_*/result.json`` and prints ONE JSON object:

- ``overhead_per_trial_s`` = (study wall time x concurrent slots - sum of the trials' loop training
  time) / trials, where a trial's loop training time is the shared loop's own epoch time
  (train images / ``images_per_s``, the timed epoch standing in for the untimed ones between
  validations). It holds everything that is not a training epoch: Python and Ray start-up, Tune
  and Train scheduling, the Train worker start, data loading, model building, validation,
  checkpoints, shutdown.
- ``overhead_per_trial_vs_tune_time_s``: the same against Tune's ``time_total_s`` (the trainable's
  own clock, which starts before the Train worker group), i.e. what lies outside the trainables.
- ``setup_s`` (process start to the first trial's start) and ``teardown_s`` (last report to exit).
- ``between_trials_s``: for trials run one after another, the time from one trial's last report to
  the next trial's start (Tune scheduling, actor start or reuse, the Train run's start), and
  ``trial_start_to_first_report_s`` minus that report's training time: what a trial spends before
  and around its first epochs (data, model, validation, checkpoint).

With ``--max-concurrent 1`` (the default) trials run one after another and the formula is exact; with
more slots it is an estimate. ``cpu.foreign_cpu_share`` is the share of the machine that processes
outside the study's process tree (Ray's daemons and workers included in the tree) used meanwhile;
``--wait-quiet 0.1`` first waits until other processes use less than 10 % of the CPUs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.throughput import (
    CpuWatch,
    cpu_busy_s,
    library_versions,
    load_average,
    machine_info,
    now_utc,
    wait_for_quiet,
    write_json,
)
from study.space import load_preset

log = logging.getLogger("benchmarks.study_overhead")

REPO = Path(__file__).resolve().parents[1]


class TreeCpu(threading.Thread):
    """Samples /proc to add up the CPU time of a process and all its descendants (Ray's daemons and workers).

    ``os.times()`` misses them: Ray's processes are not all reaped by our child. A process that
    ends between two samples loses at most one interval of its CPU time.
    """

    def __init__(self, root_pid: int, interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root_pid, self.interval_s = root_pid, interval_s
        self.seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> utime + stime in seconds
        self.halt = threading.Event()
        self.ticks = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        stats = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                text = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
            stats[int(name)] = (int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / self.ticks)
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        todo = [self.root_pid]
        while todo:
            pid = todo.pop()
            if pid in stats:
                _, start, cpu = stats[pid]
                self.seen[(pid, start)] = cpu
            todo.extend(children.get(pid, []))

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(self.interval_s)

    def stop(self) -> float:
        self.halt.set()
        self.join()
        return sum(self.seen.values())


def read_trials(experiment: Path, train_images: int) -> list[dict[str, Any]]:
    """One dict per Tune trial folder: its reports, Tune's clock and the loop's own training time."""
    trials = []
    for result_file in sorted(experiment.glob("trial_*/result.json")):
        rows = []
        for line in result_file.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        if not rows:
            continue
        params_file = result_file.parent / "params.json"
        params = json.loads(params_file.read_text()) if params_file.is_file() else {}
        loop_s, previous_epoch, first_loop_s = 0.0, 0, None
        for row in rows:  # each report times the epoch before it; it stands in for the untimed ones since the last
            loop_s += (row["epoch"] - previous_epoch) * train_images / row["images_per_s"]
            previous_epoch = row["epoch"]
            first_loop_s = loop_s if first_loop_s is None else first_loop_s
        first, last = rows[0], rows[-1]
        trials.append({
            "trial": result_file.parent.name,
            "model": params.get("model"),
            "init": params.get("init"),
            "epochs": last["epoch"],
            "reports": len(rows),
            "tune_time_total_s": round(last["time_total_s"], 2),
            "loop_train_s": round(loop_s, 2),
            "images_per_s_mean": round(sum(r["images_per_s"] for r in rows) / len(rows), 2),
            "started_at": first["timestamp"] - first["time_total_s"],
            "first_report_delay_s": first["time_total_s"] - first_loop_s,
            "last_report_at": last["timestamp"],
        })
    return trials


def prepare(folder: Path, image_size: str) -> dict[str, Any]:
    """Toy data, a filled cache and encoder files under ``folder``; returns the paths and train size."""
    from segmodels import build_model, save_encoder
    from study.data import build_dataset
    from study.data.toy import write_toy
    from study.loop import seed_everything

    root = write_toy(folder / "toy")
    cache = folder / "cache"
    train = build_dataset("pets", "train", root, image_size, cache_dir=cache)
    build_dataset("pets", "val", root, image_size, cache_dir=cache)
    seed_everything(0)
    encoders = {m: str(save_encoder(build_model(m, 19), folder / f"{m}_encoder.pt"))
                for m in ("segformer", "fcn_resnet50")}
    return {"data_root": str(root), "cache_dir": str(cache), "encoders": encoders, "train_images": len(train)}


# name -> (trial runner, environment of the study). ``train`` is the Train runner as the study runs it (no
# preemption watcher without spot nodes, checkpoints uploaded asynchronously); the other two change one thing:
# the watcher back on, or the controller's health-check poll at 0.2 s instead of Ray's 2 s (measured, and not
# the default: it leaks placement groups of stopped trials, study.orchestrate.cluster).
VARIANTS = {
    "tune": ("tune", {}),
    "train": ("train", {}),
    "train-preemption-watcher": ("train", {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}),
    "train-fast-health-check": ("train", {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}),
}


def measure(prepared: dict[str, Any], folder: Path, variant: str = "tune", num_samples: int = 4, epochs: int = 4,
            max_concurrent: int = 1, image_size: str = "32", wait_quiet: float = 0.0,
            wait_max_s: float = 600.0) -> dict[str, Any]:
    runner, extra_env = VARIANTS[variant]
    name = f"overhead-{variant}-{time.time_ns()}"
    space = folder / f"{name}-points.yaml"  # the demo's first warm-start points: a search runs at least its points
    space.write_text(yaml.safe_dump({"points": load_preset("demo")["points"][:num_samples]}))
    args = [sys.executable, "-m", "study.run", "--preset", "demo", "--space", str(space),
            "--data-root", prepared["data_root"],
            "--storage", str(folder / "storage"), "--name", name, "--num-samples", str(num_samples),
            "--epochs", str(epochs), "--max-concurrent", str(max_concurrent), "--image-size", image_size,
            "--cache-dir", prepared["cache_dir"], "--no-report", "--trial-runner", runner,
            "--pretrained-segformer", prepared["encoders"]["segformer"],
            "--pretrained-fcn", prepared["encoders"]["fcn_resnet50"]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **extra_env}
    env.pop("RAY_ADDRESS", None)  # always a fresh local Ray: its start-up is part of the overhead
    load_before = load_average()
    log.info("running: %s", " ".join(args[1:]))
    quiet_before = wait_for_quiet(wait_quiet, wait_max_s) if wait_quiet else None
    watch, busy_before = CpuWatch(), cpu_busy_s()
    started_at = time.time()
    with open(folder / f"{name}.log", "w") as study_log:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=study_log, stderr=subprocess.STDOUT)
        tree = TreeCpu(proc.pid)
        tree.start()
        proc.wait()
    ended_at = time.time()
    tree_cpu_s = tree.stop()
    cpu = watch.stop()
    busy = None if busy_before is None else cpu_busy_s() - busy_before
    cpu["study_process_tree_cpu_s"] = round(tree_cpu_s, 1)
    cpu["foreign_cpu_share"] = None if busy is None else round(
        max(0.0, busy - tree_cpu_s - cpu["own_cpu_s"]) / (cpu["wall_s"] * (os.cpu_count() or 1)), 3)
    cpu["wait_for_quiet"] = quiet_before
    if proc.returncode != 0:
        tail = (folder / f"{name}.log").read_text()[-3000:]
        raise SystemExit(f"benchmarks.study_overhead: the study failed (exit {proc.returncode}):\n{tail}")
    trials = read_trials(folder / "storage" / name, prepared["train_images"])
    wall = ended_at - started_at
    n = len(trials)
    ordered = sorted(trials, key=lambda t: t["started_at"])
    gaps = [b["started_at"] - a["last_report_at"] for a, b in zip(ordered, ordered[1:], strict=False)]
    loop_sum = sum(t["loop_train_s"] for t in trials)
    tune_sum = sum(t["tune_time_total_s"] for t in trials)
    first_start = min(t["started_at"] for t in trials)
    last_report = max(t["last_report_at"] for t in trials)
    for t in trials:
        t["started_at_s"] = round(t.pop("started_at") - started_at, 2)
        t["last_report_at_s"] = round(t.pop("last_report_at") - started_at, 2)
    return {
        "benchmark": "study_overhead",
        "variant": variant,
        "trial_runner": runner,
        "environment": extra_env,
        "study_wall_s": round(wall, 2),
        "trials": n,
        "trials_sum_loop_train_s": round(loop_sum, 2),
        "trials_sum_tune_time_s": round(tune_sum, 2),
        "overhead_per_trial_s": round((wall * max_concurrent - loop_sum) / n, 2),
        "overhead_per_trial_vs_tune_time_s": round((wall * max_concurrent - tune_sum) / n, 2),
        "loop_share_of_wall": round(loop_sum / (wall * max_concurrent), 3),
        "between_trials_s": [round(g, 2) for g in gaps] if max_concurrent == 1 else None,
        "between_trials_mean_s": round(sum(gaps) / len(gaps), 2) if gaps and max_concurrent == 1 else None,
        "trial_start_to_first_report_minus_training_s": [round(t["first_report_delay_s"], 2) for t in ordered],
        "setup_s": round(first_start - started_at, 2),
        "teardown_s": round(ended_at - last_report, 2),
        "per_trial": trials,
        "cpu": cpu,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "measured_at": now_utc(),
    }


def ray_versions() -> dict[str, str]:
    versions = {}
    for module in ("ray", "optuna"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "not installed"
    return versions


def run(variants: list[str], repeats: int, num_samples: int, epochs: int, max_concurrent: int, image_size: str,
        keep: str | None, wait_quiet: float, wait_max_s: float) -> dict[str, Any]:
    """Every variant ``repeats`` times, alternating, on one set of prepared data; the median per variant."""
    with tempfile.TemporaryDirectory(prefix="segstudy-overhead-") as tmp:
        folder = Path(keep) if keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        prep_started = time.perf_counter()
        prepared = prepare(folder, image_size)
        prep_s = time.perf_counter() - prep_started
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for repeat in range(repeats):
            for variant in variants:
                log.info("repeat %d/%d: %s", repeat + 1, repeats, variant)
                runs[variant].append(measure(prepared, folder, variant, num_samples, epochs, max_concurrent,
                                             image_size, wait_quiet, wait_max_s))
    keys = ("overhead_per_trial_s", "loop_share_of_wall", "between_trials_mean_s", "study_wall_s", "setup_s",
            "teardown_s")
    summary = {v: {k: statistics.median(r[k] for r in rs) if rs[0][k] is not None else None for k in keys}
               for v, rs in runs.items()}
    return {
        "benchmark": "study_overhead",
        "summary_median": summary,
        "runs": runs,
        "settings": {"preset": "demo", "variants": variants, "repeats": repeats, "num_samples": num_samples,
                     "epochs": epochs, "max_concurrent": max_concurrent, "image_size": image_size,
                     "train_images": prepared["train_images"], "pretraining_stage": False,
                     "prepare_s": round(prep_s, 2),
                     "note": "toy data, cache and encoder files made before the clock started (prepare_s)"},
        "machine": machine_info("cpu"),
        "versions": {**library_versions(), **ray_versions()},
        "measured_at": now_utc(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.study_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="tune,train", help=f"comma-separated, or all: {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the variants (medians are reported)")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-concurrent", type=int, default=1, help="trials at once (1: the formula is exact)")
    parser.add_argument("--image-size", default="32", help="the demo preset's 32 by default")
    parser.add_argument("--keep", help="work in this folder and keep it (study logs, Tune results), not a temp dir")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SHARE",
                        help="first wait until other processes use < SHARE of the CPUs (e.g. 0.1)")
    parser.add_argument("--wait-max", type=float, default=600.0, help="seconds to wait for quiet at most")
    parser.add_argument("--quick", action="store_true", help="2 trials x 2 epochs (Ray start-up still dominates)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    if args.quick:
        args.num_samples, args.epochs = 2, 2
    variants = list(VARIANTS) if args.variants == "all" else [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; expected {', '.join(VARIANTS)} or all")
    result = run(variants, args.repeats, args.num_samples, args.epochs, args.max_concurrent, args.image_size,
                 args.keep, args.wait_quiet, args.wait_max)
    result["command"] = "python -m benchmarks.study_overhead " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
