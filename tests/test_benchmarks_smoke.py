"""The GPU benchmark script must run where Ray is not installed: run its CPU quick path with Ray blocked.

This checks that the script works end to end and imports no Ray; it asserts no speed.
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
    assert result  # a JSON object with the measurements of the quick run
