"""scripts/bench_cpu_threads.py at a tiny scale: it checks that the split and unsplit models
give the same outputs, then prints its timing lines."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_bench_cpu_threads_runs_and_compares_outputs():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench_cpu_threads.py"), "--threads", "2", "--size", "128",
         "--iters", "1", "--warmup", "0"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "outputs equal with and without the split (100 detections" in out
    assert "split / one call each:" in out and "pointsup / torchvision: split" in out
