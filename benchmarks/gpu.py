"""Every GPU measurement of issues 6 and 21 in one prepared run (about 5 minutes on one H100/H200).

    python benchmarks/gpu.py --out benchmarks/results/gpu-<device>.json [--data-root R]
    python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu-dry.json   # the code paths, no GPU, ~1 min

Uses only torch / torchvision / transformers and this repo's Ray-free modules (study.data,
study.loop, study.metrics, study.config, segmodels, benchmarks.throughput): the GPU machine has
no Ray and no Optuna. Without ``--data-root`` it writes Pets-like toy data in the real layout
(``study.data.toy`` scenes, upscaled to the genuine images' 290-510 px sides so that decoding costs
what it does on real photos). All timings are ratios measured side by side in this one run:

(a) segstudy epoch throughput vs the eager step on resident tensors (same model's eager forward +
    backward + AdamW step on random tensors already on the GPU, same batch): target >= 0.8. A reference
    for the data path, not a bound on the step.
(b) segstudy vs the naive torchvision pipeline (``benchmarks.throughput``): target >= 5.
(c) bf16 autocast on vs off through ``study.loop.train`` (``benchmarks.precision``): speed, and the val mIoU of a short
    run for two seeds each (the seed-to-seed spread is the noise the difference is judged against).
(d) packing: 1, 2, 4 and 8 (``--trials``) single-worker trials at once on one GPU, one process each (what
    Ray Tune does with ``--gpus-per-trial 0.25``), with the fast step, against one alone: aggregate
    images/s (target >= 2.5 at 4), the evidence for the default ``--gpus-per-trial``.
(e) the step's speed options one by one and together (``benchmarks.step_variants``: eager, TF32, fused
    AdamW, channels_last, bf16, compile, CUDA graphs, all, all + bf16), each with FLOPs per image,
    TFLOP/s and MFU against the bf16 matmul rate measured at the start (``peak``), and the cold and warm
    compile time of the fast set with its break-even in steps and epochs.
(f) the loop itself with the fast set (``--fast``: TF32, fused AdamW, channels_last for FCN, compile
    with CUDA graphs): images/s against the targets (>= 9,000 for both models at 64x64, batch 64), MFU.
(g) what the fast set learns: every option off against the fast set through ``study.loop.train``, two
    seeds each; val mIoU must stay within the seed spread (``benchmarks.precision.compare_speed``).
Plus a diagnostic: the loop with its per-step train-metric update switched off (that update
synchronises the GPU with the host every step).

The JSON (printed, and written to ``--out`` after every part, so a cut-short run keeps what it had)
names the device, the library versions and every setting. Parts that would start after
``--budget-s`` are skipped and listed under ``skipped``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as ``python benchmarks/gpu.py`` on a machine where segstudy is not installed
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402
from unittest import mock  # noqa: E402

import torch  # noqa: E402

from benchmarks import step_variants as sv  # noqa: E402
from benchmarks import throughput as tp  # noqa: E402
from benchmarks import yardstick as ys  # noqa: E402
from benchmarks.precision import compare_precision, compare_speed  # noqa: E402
from study.trial import build_trial_model, load_splits  # noqa: E402

log = logging.getLogger("benchmarks.gpu")

TARGETS = {"a_segstudy_vs_eager_resident": 0.8, "b_segstudy_vs_naive": 5.0, "d_shared_vs_alone": 2.5,
           "f_fast_img_s": 9000.0}


# ---------------------------------------------------------------- data
def write_pets_like(root: Path, n_trainval: int, scale: int, seed: int = 0) -> Path:
    """study.data.toy's Pets layout and scenes, each pair upscaled ``scale`` x (image bilinear, trimap nearest)."""
    from PIL import Image

    from study.data import toy

    original = toy.pet_pair

    def upscaled(rng: Any) -> tuple[Any, Any]:
        image, trimap = original(rng)
        size = (image.width * scale, image.height * scale)
        return image.resize(size, Image.BILINEAR), trimap.resize(size, Image.NEAREST)

    with mock.patch.object(toy, "pet_pair", upscaled if scale > 1 else original):
        return toy.write_toy(root, seed=seed, pets=(n_trainval, 4), cityscapes=(0, 0))


# ---------------------------------------------------------------- (d) several trials on one GPU
def _share_worker(rank: int, spec: dict[str, Any], barrier: Any, queue: Any) -> None:
    """One single-worker trial: warm up one epoch, wait for the others, then time ``spec['epochs']`` epochs."""
    try:
        torch.set_num_threads(spec["threads"])
        from study.config import TrainConfig
        from study.loop import train

        base = TrainConfig(dataset="pets", data_root=spec["data_root"], model=spec["model"], epochs=1,
                           batch_size=spec["batch_size"], image_size=spec["image_size"], seed=rank,
                           device=spec["device"], precision=spec["precision"], cache_dir=spec["cache"],
                           **spec.get("speed", {}))
        train_set, val_set = load_splits(base)
        model = build_trial_model(base, train_set.num_classes)
        train(base, train_set, val_set, model)  # warm-up: CUDA context, cudnn autotuning, allocator
        cfg = base.replace(epochs=spec["epochs"], val_every=spec["epochs"])
        barrier.wait(timeout=spec["barrier_timeout"])
        started = time.time()
        result = train(cfg, train_set, val_set, model)
        ended = time.time()
        queue.put({"rank": rank, "started": started, "ended": ended, "images": len(train_set) * cfg.epochs,
                   "loop_img_s_last_epoch": result.rows[-1]["images_per_s"]})
    except BaseException as exc:  # reported, never hangs the parent
        queue.put({"rank": rank, "error": f"{type(exc).__name__}: {exc}"})
        try:
            barrier.abort()
        except Exception:
            pass


def run_trials_at_once(n: int, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_share_worker, args=(rank, spec, barrier, queue), daemon=True) for rank in range(n)]
    started = time.perf_counter()
    for p in procs:
        p.start()
    reports = []
    try:
        for _ in range(n):
            reports.append(queue.get(timeout=max(1.0, timeout_s - (time.perf_counter() - started))))
    except Exception as exc:  # queue.Empty: a trial hung
        reports.append({"rank": -1, "error": f"timed out after {timeout_s:.0f} s ({type(exc).__name__})"})
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        return {"trials": n, "error": errors[0]}
    window = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    overlap = min(r["ended"] for r in reports) - max(r["started"] for r in reports)
    images = sum(r["images"] for r in reports)
    return {"trials": n, "aggregate_img_s": round(images / window, 1), "window_s": round(window, 2),
            "all_running_s": round(overlap, 2), "images": images,
            "per_trial_img_s": [round(r["images"] / (r["ended"] - r["started"]), 1)
                                for r in sorted(reports, key=lambda r: r["rank"])],
            "wall_s_with_startup": round(time.perf_counter() - started, 1)}


def sharing(spec: dict[str, Any], counts: list[int], timeout_s: float) -> dict[str, Any]:
    """``counts`` trials at once (1 first: the reference); ``shared_vs_alone`` is at 4 trials (or the most run)."""
    runs = {n: run_trials_at_once(n, spec, timeout_s) for n in sorted(set([1, *counts]))}
    out: dict[str, Any] = {"model": spec["model"], "epochs_timed": spec["epochs"], "threads_per_trial": spec["threads"],
                           "speed": spec.get("speed", {}), "runs": {str(n): r for n, r in runs.items()}}
    alone = runs[1]
    if "error" not in alone:
        out["vs_alone"] = {str(n): round(r["aggregate_img_s"] / alone["aggregate_img_s"], 3)
                           for n, r in runs.items() if "error" not in r}
        key = "4" if "4" in out["vs_alone"] else max(out["vs_alone"], key=int)
        out["shared_vs_alone"], out["shared_trials"] = out["vs_alone"][key], int(key)
    return out


# ---------------------------------------------------------------- (e) the step's speed options
def step_options(model: str, device: str, batch_size: int, image_size: Any, steps: int, variants: list[str],
                 peak: dict[str, Any], compile_cost_of: str | None) -> dict[str, Any]:
    """``benchmarks.step_variants`` in this process (one fresh model per variant), plus one compile cost."""
    import argparse as _argparse

    from study.config import parse_image_size

    size, dev = parse_image_size(image_size), torch.device(device)
    flops = ys.train_flops_per_image(tp.fresh_model(model, 3, 0), size)
    out: dict[str, Any] = {"model": model, "gflop_per_image_fwd_bwd": round(flops / 1e9, 4), "variants": {}}
    for variant in variants:
        try:
            r = sv.time_variant(model, variant, dev, batch_size, size, steps)
        except Exception as exc:  # one broken option must not lose the others
            out["variants"][variant] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        r["yardstick"] = ys.yardstick(r["img_s"], flops, peak)
        out["variants"][variant] = r
    eager = out["variants"].get("eager", {}).get("median_step_s")
    for r in out["variants"].values():
        if eager and "median_step_s" in r:
            r["speedup_vs_eager"] = round(eager / r["median_step_s"], 3)
    if compile_cost_of and eager:
        args = _argparse.Namespace(model=model, device=device, batch_size=batch_size, image_size=image_size,
                                   steps=steps)
        out["compile_cost"] = {compile_cost_of: sv.compile_cost(args, compile_cost_of, eager, steps_per_epoch=52)}
    return out


# ---------------------------------------------------------------- diagnostic
def without_train_metric(data_root: str, cache: str, model: str, device: str, batch_size: int, image_size: Any,
                         epochs: int) -> dict[str, Any]:
    """The loop as is, then with ``SegMetric.update`` a no-op: what the per-step metric update costs."""
    from study.config import TrainConfig
    from study.metrics import SegMetric

    cfg = TrainConfig(dataset="pets", data_root=data_root, model=model, epochs=1 + epochs, batch_size=batch_size,
                      image_size=image_size, device=device, cache_dir=cache)
    train_set, val_set = load_splits(cfg)
    with_metric = tp.run_segstudy(cfg, train_set, val_set, tp.fresh_model(model, train_set.num_classes, 0), 1)
    with mock.patch.object(SegMetric, "update", lambda self, *a, **k: None):
        no_metric = tp.run_segstudy(cfg, train_set, val_set, tp.fresh_model(model, train_set.num_classes, 0), 1)
    return {"model": model, "segstudy_img_s": round(with_metric["img_s"], 1),
            "segstudy_no_train_metric_img_s": round(no_metric["img_s"], 1),
            "metric_update_cost_share": round(1 - with_metric["img_s"] / no_metric["img_s"], 3)}


# ---------------------------------------------------------------- driver
class Report:
    def __init__(self, out: str | None, base: dict[str, Any], budget_s: float) -> None:
        self.out, self.data, self.budget_s = out, base, budget_s
        self.started = time.perf_counter()
        self.data.setdefault("skipped", [])

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def part(self, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one measurement unless the time budget is spent; record it (or its error) and save."""
        if self.elapsed() > self.budget_s:
            log.warning("skipping %s: %.0f s spent of the %.0f s budget", key, self.elapsed(), self.budget_s)
            self.data["skipped"].append(key)
            return None
        log.info("[%5.1f s] %s", self.elapsed(), key)
        t0 = time.perf_counter()
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:  # one failed part must not lose the others
            log.exception("%s failed", key)
            value = {"error": f"{type(exc).__name__}: {exc}"}
        if isinstance(value, dict):
            value["part_s"] = round(time.perf_counter() - t0, 1)
        section, _, name = key.partition(":")
        (self.data["results"].setdefault(section, {}).__setitem__(name, value) if name
         else self.data["results"].__setitem__(section, value))
        self.save()
        return value

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        if self.out:
            tp.write_json(self.out, self.data)


def checks(results: dict[str, Any]) -> dict[str, Any]:
    """Each target with its measured value and whether it is met (None where not measured)."""
    out: dict[str, Any] = {}
    for model, r in (results.get("throughput") or {}).items():
        if r and "error" not in r:
            a, target = r.get("segstudy_vs_eager_resident"), TARGETS["a_segstudy_vs_eager_resident"]
            out[f"a_segstudy_vs_eager_resident[{model}]"] = {"value": a, "target": target,
                                                              "met": None if a is None else a >= target}
            out[f"b_segstudy_vs_naive[{model}]"] = {"value": r["ratio"], "target": TARGETS["b_segstudy_vs_naive"],
                                                     "met": r["ratio"] >= TARGETS["b_segstudy_vs_naive"]}
    for model, r in (results.get("bf16") or {}).items():
        if r and "error" not in r:
            out[f"c_bf16[{model}]"] = {"speedup": r["bf16_speedup"], "val_miou_delta": r["val_miou_delta"],
                                       "seed_spread": r["seed_spread_max"], "met": r["within_noise"]}
    for model, r in (results.get("fast_loop") or {}).items():
        if r and "error" not in r:
            out[f"f_fast_img_s[{model}]"] = {"value": r["segstudy_img_s"], "target": TARGETS["f_fast_img_s"],
                                             "mfu": r["yardstick"]["segstudy"]["mfu"],
                                             "met": r["segstudy_img_s"] >= TARGETS["f_fast_img_s"]}
    for model, r in (results.get("fast_miou") or {}).items():
        if r and "error" not in r:
            out[f"g_fast_miou[{model}]"] = {"speedup": r["fast_speedup"], "val_miou_delta": r["val_miou_delta"],
                                            "seed_spread": r["seed_spread_max"], "met": r["within_noise"]}
    share = results.get("sharing")
    if share and "shared_vs_alone" in share:
        out["d_shared_vs_alone"] = {"value": share["shared_vs_alone"], "target": TARGETS["d_shared_vs_alone"],
                                    "met": share["shared_vs_alone"] >= TARGETS["d_shared_vs_alone"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here (after every part)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--data-root", help="folder with oxford-iiit-pet/ (default: Pets-like toy data written here)")
    parser.add_argument("--images", type=int, default=1024, help="toy trainval images to write (90%% train)")
    parser.add_argument("--toy-scale", type=int, default=4, help="upscale toy pairs to realistic photo sizes")
    parser.add_argument("--models", default="segformer,fcn_resnet50")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", default="64")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per side for (a)/(b)")
    parser.add_argument("--bf16-epochs", type=int, default=10, help="length of each (c) run")
    parser.add_argument("--bf16-models", default="segformer,fcn_resnet50")
    parser.add_argument("--seeds", default="0,1", help="seeds of the (c) runs (two give a noise estimate)")
    parser.add_argument("--trials", default="1,2,4,8", help="(d) trials sharing the GPU, one packing per count")
    parser.add_argument("--fast", default="tf32=on,fused_adamw=on,channels_last=auto,compile=reduce-overhead",
                        help="(d), (f), (g): the loop's speed options for the fast step (TrainConfig fields)")
    parser.add_argument("--variants", default=None,
                        help="(e) step variants (default: benchmarks.step_variants' CUDA list; on cpu a short one)")
    parser.add_argument("--fast-epochs", type=int, default=6, help="length of each (g) run")
    parser.add_argument("--share-model", default="segformer")
    parser.add_argument("--share-epochs", type=int, default=20, help="(d) timed epochs per trial")
    parser.add_argument("--threads-per-trial", type=int, default=1,
                        help="torch CPU threads per (d) trial (as Ray sets for --cpus-per-trial 1)")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="start no part after this many seconds")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings that exercise every code path in about a minute")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here (use --device cpu --quick to check the code paths)")
    if args.quick:
        args.images, args.toy_scale, args.image_size, args.batch_size = 40, 1, "32", 8
        args.epochs, args.bf16_epochs, args.trials, args.share_epochs, args.fast_epochs = 1, 2, "2", 1, 1
        args.models = args.bf16_models = "segformer"
        args.seeds, args.bf16_epochs, args.budget_s = "0", 1, float("inf")
    models = [m for m in args.models.split(",") if m]
    bf16_models = [m for m in args.bf16_models.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    counts = [int(n) for n in args.trials.split(",") if n]
    fast = dict(item.split("=", 1) for item in args.fast.split(",") if item)
    if args.device == "cpu":  # the CPU dry run checks code paths: no CUDA-only option, no (minutes-long) compile
        fast = {**fast, "tf32": "off", "compile": "off"}
    variants = [v for v in (args.variants or sv.DEFAULT_VARIANTS["cuda" if args.device == "cuda" else "cpu"]
                            ).split(",") if v]
    if args.quick:  # every code path, none of the slow ones (bf16 is emulated on CPUs without native bf16)
        variants = ["eager", "fused_adamw"]
    compiled = [v for v in variants if set(v.split("+")) & {*sv.COMPILE_TOKENS, "all"}]

    device = torch.device(args.device)
    machine = tp.machine_info(device)
    report = Report(args.out, {
        "benchmark": "gpu",
        "device_name": machine.get("gpu_name") or f"CPU: {machine['cpu_model']} (dry run, not a GPU measurement)",
        "targets": TARGETS,
        "results": {},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": machine,
        "versions": tp.library_versions(),
        "load_average_before": tp.load_average(),
        "measured_at": tp.now_utc(),
    }, args.budget_s)

    with tempfile.TemporaryDirectory(prefix="segstudy-gpu-bench-") as tmp:
        data_root = args.data_root
        if not data_root:
            t0 = time.perf_counter()
            data_root = str(write_pets_like(Path(tmp) / "data", args.images, args.toy_scale))
            report.data["settings"]["toy_data_write_s"] = round(time.perf_counter() - t0, 1)
        cache = str(Path(tmp) / "cache")
        from study.data import build_dataset

        t0 = time.perf_counter()
        train_set = build_dataset("pets", "train", data_root, args.image_size, cache_dir=cache)
        build_dataset("pets", "val", data_root, args.image_size, cache_dir=cache)
        report.data["settings"].update(train_images=len(train_set),
                                       cache_first_decode_s=round(time.perf_counter() - t0, 2))
        del train_set

        common = dict(device=args.device, batch_size=args.batch_size, image_size=args.image_size)
        off = {"tf32": "off", "fused_adamw": "off", "channels_last": "off", "compile": "off"}
        spec = {"data_root": data_root, "cache": cache, "model": args.share_model, "epochs": args.share_epochs,
                "threads": args.threads_per_trial, "precision": "fp32", "barrier_timeout": 120,
                "device": args.device, "batch_size": args.batch_size, "image_size": args.image_size, "speed": fast}
        peak = report.part("peak", ys.device_peak, device)
        # most important first: the budget may skip the tail
        for model in models:
            report.part(f"fast_loop:{model}", tp.measure, data_root, model, epochs=args.epochs, warmup=1,
                        eager_resident=True, cache_dir=cache, speed=fast, peak=peak, **common)
        for model in models if not args.quick else []:  # quick: fast_loop already ran these code paths
            report.part(f"throughput:{model}", tp.measure, data_root, model, epochs=args.epochs, warmup=1,
                        eager_resident=True, cache_dir=cache, speed=off, peak=peak, **common)
        for model in models:
            report.part(f"steps:{model}", step_options, model, args.device, args.batch_size, args.image_size,
                        steps=10, variants=variants, peak=peak, compile_cost_of=None)
        for model in models:
            report.part(f"fast_miou:{model}", compare_speed, data_root, cache, model, epochs=args.fast_epochs,
                        seeds=seeds, fast=fast, **common)
        report.part("sharing", sharing, spec, counts, timeout_s=150)
        for model in bf16_models:
            report.part(f"bf16:{model}", compare_precision, data_root, cache, model, epochs=args.bf16_epochs,
                        seeds=seeds, speed=fast, **common)
        if compiled:
            report.part(f"compile_cost:{models[0]}", step_options, models[0], args.device, args.batch_size,
                        args.image_size, steps=10, variants=["eager"], peak=peak, compile_cost_of=compiled[-1])
        report.part("diagnostics", without_train_metric, data_root, cache, models[0], epochs=args.epochs, **common)

    report.data["checks"] = checks(report.data["results"])
    report.data["ray_imported"] = sys.modules.get("ray") is not None  # must stay False: the GPU machine has no Ray
    report.data["load_average_after"] = tp.load_average()
    report.save()
    print(json.dumps(report.data, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
