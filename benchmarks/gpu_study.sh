#!/usr/bin/env bash
# Issue 21 on one GPU machine in two device calls: the benchmarks, then the whole report study with 3 seeds.
#
# The device image has torch but neither Ray nor Optuna, and one call carries at most 64 MiB (the working
# tree included), so the ~100 MiB wheel set travels in two parts (benchmarks/wheelparts.py).
#
# Here, once (needs the package index; .whl/ is git-ignored):
#   .venv/bin/python -m benchmarks.wheelparts download --dest .whl/wheels
#   .venv/bin/python -m benchmarks.wheelparts split --wheels .whl/wheels --out .whl     # .whl/call1, .whl/call2
# Then two device calls in a row; the machine stays warm 30 s after a call, and the ignored folders under
# .whl/ that the second call does not carry (call1/, the data, the Inductor cache) stay where the first left them:
#   1. run(carry=[".whl/call1"], timeout_s=540, command="bash benchmarks/gpu_study.sh bench")
#   2. run(carry=[".whl/call2"], timeout_s=600, command="bash benchmarks/gpu_study.sh study")
# Call 1 (needs no Ray) lands part 1 of the wheels, writes full-size synthetic data in the background (Pets'
# layout with 3,312 train, 368 val and 3,669 test images; Cityscapes' with 2,975 train and 500 val) and runs
# benchmarks/gpu.py (parts (a)-(g), about BENCH_BUDGET_S s), compiling into the shared Inductor cache.
# Call 2 joins and checks the parts, installs them with pip --no-index --no-deps --target, and runs
# `study.run --preset report --repeats 3` on that data, the Cityscapes stage included, every trial on the one
# GPU. Back in $OUT: gpu-<card>-issue21.json and gpu-bench.log (call 1); study.log (time-stamped console) and
# study-timing.json (stages, the loop's share of the wall time, each trial's MFU) (call 2).
# Knobs: BENCH_BUDGET_S (default 180), STUDY_ARGS (added to study.run's options).
set -euo pipefail
OUT=${OUT:-/tmp/gpu-study-out}
mkdir -p "$OUT" .whl
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.whl/inductor}  # one cache for every trial
DATA=$PWD/.whl/segstudy-full

write_data() {  # Pets trainval 3,680 = 3,312 train + 368 val (the fixed 10 %)
    [ -f "$DATA/.complete" ] && return 0
    python3 -c "
import sys, time
from study.data.toy import write_toy
t = time.time()
write_toy(sys.argv[1], seed=0, pets=(3680, 3669), cityscapes=(2975, 500))
print(f'full-size synthetic data written in {time.time() - t:.0f} s')" "$DATA" && touch "$DATA/.complete"
}

case "${1:-}" in
bench)  # call 1
    python3 -c "import json; m = json.load(open('.whl/call1/manifest.json')); print(len(m['wheels']), 'wheels')"
    write_data > "$OUT/data.log" 2>&1 &
    writer=$!
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    card=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).split()[-1].lower())")
    timeout $(( ${BENCH_BUDGET_S:-180} + 150 )) python3 benchmarks/gpu.py --budget-s "${BENCH_BUDGET_S:-180}" \
        --out "$OUT/gpu-$card-issue21.json" > "$OUT/gpu-bench.log" 2>&1 || echo "gpu.py ended with $?"
    cp "$OUT/gpu-$card-issue21.json" .whl/ 2>/dev/null || true  # for call 2's MFU (the peak measured here)
    tail -n 5 "$OUT/gpu-bench.log"
    wait "$writer"; cat "$OUT/data.log"
    ;;
study)  # call 2
    python3 benchmarks/wheelparts.py install --parts .whl --target /tmp/site
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
    export PATH=/tmp/site/bin:$PATH
    python3 -c "import ray, ray.tune, ray.train, optuna; print('ray', ray.__version__, 'optuna', optuna.__version__)"
    write_data  # no-op unless call 2 found a fresh machine
    peak=$(ls .whl/gpu-*-issue21.json 2>/dev/null | head -n 1 || true)
    set +e
    python3 -m study.run --preset report --repeats 3 --data-root "$DATA" --storage /tmp/segstudy-results \
        --name report-3-seeds --pretrained-fcn cityscapes --cache-dir /tmp/segstudy-cache ${STUDY_ARGS:-} 2>&1 \
        | python3 -m benchmarks.study_timing stamp --log "$OUT/study.log"
    status=${PIPESTATUS[0]}
    set -e
    echo "study.run exit status $status"
    python3 -m benchmarks.study_timing summarise --log "$OUT/study.log" \
        --experiment /tmp/segstudy-results/report-3-seeds ${peak:+--peak-json "$peak"} \
        --out "$OUT/study-timing.json" | tail -n 20 || true
    cp /tmp/segstudy-results/report-3-seeds/summary.csv "$OUT/" 2>/dev/null || true
    exit "$status"
    ;;
*)
    echo "usage: bash benchmarks/gpu_study.sh {bench|study}" >&2
    exit 2
    ;;
esac
