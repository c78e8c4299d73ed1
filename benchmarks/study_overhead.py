"""What Ray adds per trial: a small demo-preset study, its wall time against its trials' own training time.

    python -m benchmarks.study_overhead [--num-samples 4] [--epochs 4] [--max-concurrent 1] [--out FILE] [--quick]

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
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.throughput import (CpuWatch, cpu_busy_s, library_versions, load_average, machine_info, now_utc,
                                   wait_for_quiet, write_json)

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
        loop_s, previous_epoch = 0.0, 0
        for row in rows:  # each report times the epoch before it; it stands in for the untimed ones since the last
            loop_s += (row["epoch"] - previous_epoch) * train_images / row["images_per_s"]
            previous_epoch = row["epoch"]
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
    encoders = {m: str(save_encoder(build_model(m, 19), folder / f"{m}_encoder.pt")) for m in ("segformer", "fcn_resnet50")}
    return {"data_root": str(root), "cache_dir": str(cache), "encoders": encoders, "train_images": len(train)}


def measure(num_samples: int = 4, epochs: int = 4, max_concurrent: int = 1, image_size: str = "32",
            keep: str | None = None, wait_quiet: float = 0.0, wait_max_s: float = 600.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="segstudy-overhead-") as tmp:
        folder = Path(keep) if keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        prep_started = time.perf_counter()
        prepared = prepare(folder, image_size)
        prep_s = time.perf_counter() - prep_started
        name = "overhead"
        args = [sys.executable, "-m", "study.run", "--preset", "demo", "--data-root", prepared["data_root"],
                "--storage", str(folder / "storage"), "--name", name, "--num-samples", str(num_samples),
                "--epochs", str(epochs), "--max-concurrent", str(max_concurrent), "--image-size", image_size,
                "--cache-dir", prepared["cache_dir"], "--no-report",
                "--pretrained-segformer", prepared["encoders"]["segformer"],
                "--pretrained-fcn", prepared["encoders"]["fcn_resnet50"]]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)  # always a fresh local Ray: its start-up is part of the overhead
        load_before = load_average()
        log.info("running: %s", " ".join(args[1:]))
        quiet_before = wait_for_quiet(wait_quiet, wait_max_s) if wait_quiet else None
        watch, busy_before = CpuWatch(), cpu_busy_s()
        started_at = time.time()
        with open(folder / "study.log", "w") as study_log:
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
            tail = (folder / "study.log").read_text()[-3000:]
            raise SystemExit(f"benchmarks.study_overhead: the study failed (exit {proc.returncode}):\n{tail}")
        trials = read_trials(folder / "storage" / name, prepared["train_images"])
    wall = ended_at - started_at
    n = len(trials)
    loop_sum = sum(t["loop_train_s"] for t in trials)
    tune_sum = sum(t["tune_time_total_s"] for t in trials)
    first_start = min(t["started_at"] for t in trials)
    last_report = max(t["last_report_at"] for t in trials)
    for t in trials:
        t["started_at_s"] = round(t.pop("started_at") - started_at, 2)
        t["last_report_at_s"] = round(t.pop("last_report_at") - started_at, 2)
    return {
        "benchmark": "study_overhead",
        "study_wall_s": round(wall, 2),
        "trials": n,
        "trials_sum_loop_train_s": round(loop_sum, 2),
        "trials_sum_tune_time_s": round(tune_sum, 2),
        "overhead_per_trial_s": round((wall * max_concurrent - loop_sum) / n, 2),
        "overhead_per_trial_vs_tune_time_s": round((wall * max_concurrent - tune_sum) / n, 2),
        "loop_share_of_wall": round(loop_sum / (wall * max_concurrent), 3),
        "setup_s": round(first_start - started_at, 2),
        "teardown_s": round(ended_at - last_report, 2),
        "prepare_s": round(prep_s, 2),
        "per_trial": trials,
        "settings": {"preset": "demo", "num_samples": num_samples, "epochs": epochs, "max_concurrent": max_concurrent,
                     "image_size": image_size, "train_images": prepared["train_images"], "pretraining_stage": False,
                     "note": "toy data, cache and encoder files made before the clock started (prepare_s)"},
        "cpu": cpu,
        "machine": machine_info("cpu"),
        "versions": {**library_versions(), **ray_versions()},
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.study_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-concurrent", type=int, default=1, help="trials at once (1: the formula is exact)")
    parser.add_argument("--image-size", default="32", help="the demo preset's 32 by default")
    parser.add_argument("--keep", help="work in this folder and keep it (study log, Tune results) instead of a temp dir")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SHARE",
                        help="first wait until other processes use < SHARE of the CPUs (e.g. 0.1)")
    parser.add_argument("--wait-max", type=float, default=600.0, help="seconds to wait for quiet at most")
    parser.add_argument("--quick", action="store_true", help="2 trials x 2 epochs (Ray start-up still dominates)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    if args.quick:
        args.num_samples, args.epochs = 2, 2
    result = measure(args.num_samples, args.epochs, args.max_concurrent, args.image_size, args.keep,
                     args.wait_quiet, args.wait_max)
    result["command"] = "python -m benchmarks.study_overhead " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
