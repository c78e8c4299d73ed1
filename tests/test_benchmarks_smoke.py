"""The GPU benchmark script must run where Ray is not installed: run its CPU quick path with Ray blocked.

This checks that the script works end to end, imports no Ray and reports the yardstick (FLOPs per image,
TFLOP/s, MFU) for the loop and every step variant; it asserts no speed.
"""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK_RAY = ("import runpy, sys; sys.modules['ray'] = None; sys.modules['optuna'] = None; "
             "sys.argv = ['benchmarks/gpu.py'] + sys.argv[1:]; "
             "runpy.run_path('benchmarks/gpu.py', run_name='__main__')")


def test_gpu_script_runs_without_ray(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-c", BLOCK_RAY, "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    results = result["results"]
    assert not result["ray_imported"]
    failed = {k: v for k, v in results.items() if isinstance(v, dict) and "error" in v}
    assert not failed, failed
    assert results["peak"]["bf16"]["tflops"] > 0
    loop = results["fast_loop"]["segformer"]
    assert set(loop["yardstick"]["segstudy"]) >= {"gflop_per_image", "achieved_tflops", "mfu"}
    assert loop["yardstick"]["segstudy"]["gflop_per_image"] > 0 and "eager_resident_img_s" in loop
    steps = results["steps"]["segformer"]["variants"]
    assert "eager" in steps and all("mfu" in v["yardstick"] for v in steps.values())
