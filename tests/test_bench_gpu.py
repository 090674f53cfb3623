"""scripts/bench_gpu.py on the CPU: the code a GPU run takes, at a tiny scale. The table has a
row per (model, variant, mode) with its ratios, and the 2-process DDP run (gloo) ends with the
same weights on both ranks."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
SCRIPT = os.path.join(ROOT, "scripts", "bench_gpu.py")
# One step per cell, timed from the first call; torch.compile with the "eager" backend traces
# the models (graph breaks and all) without inductor's minutes of C++ code generation.
TINY = ["--device", "cpu", "--size", "64", "--batch", "1", "--iters", "1", "--warmup", "0", "--threads", "1",
        "--compile-backend", "eager", "--ddp-steps", "1", "--budget-s", "0"]
KNOWN_ERRORS: set[tuple[str, str, str]] = set()  # (model, variant, mode) cells allowed to fail: none


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_bench(*extra: str, timeout: float) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, SCRIPT, *TINY, *extra], capture_output=True, text=True, timeout=timeout,
                            env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def table_rows(stdout: str) -> dict[tuple[str, str, str], list[str]]:
    """{(model, variant, mode): the other columns} of the printed markdown table."""
    rows = {}
    for line in stdout.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cols[0] != "model" and len(cols) == 8:
            rows[cols[0], cols[1], cols[2]] = cols[3:]
    return rows


def test_table_ratios_against_torchvision_and_own_fp32():
    bench = _load_script()
    args = bench.parse_args(["--models", "mask_rcnn", "--variants", "bf16", "--modes", "train", "--batch", "2"])
    assert args.models == ["mask_rcnn", "torchvision"] and args.variants == [frozenset(), frozenset({"bf16"})]
    Cell = bench.Cell
    cells = {
        ("mask_rcnn", "fp32", "train"): Cell(times=[1.0, 0.5, 0.5], first_s=3.0),  # median 0.5 s: 4 images/s
        ("torchvision", "fp32", "train"): Cell(times=[0.25], first_s=1.0, peak_mib=512.0),  # 8 images/s
        ("mask_rcnn", "bf16", "train"): Cell(times=[0.25], first_s=1.0),  # 8 images/s
        ("torchvision", "bf16", "train"): Cell(note="error: RuntimeError: no kernel"),
    }
    rows = table_rows(bench.format_table(cells, args))
    assert rows["mask_rcnn", "fp32", "train"] == ["4.00", "0.50", "1.00", "3.00", "-"]
    assert rows["torchvision", "fp32", "train"] == ["8.00", "1.00", "1.00", "1.00", "512"]
    assert rows["mask_rcnn", "bf16", "train"] == ["8.00", "-", "2.00", "1.00", "-"]  # no torchvision bf16 number
    assert rows["torchvision", "bf16", "train"][0] == "error: RuntimeError: no kernel"
    passed = {"backend": "gloo", "devices": ["cpu", "cpu"], "identical": True, "max_diff": 0.0, "max_change": 0.1,
              "seconds": 1.0}
    assert bench.format_ddp(passed, args).startswith("DDP: PASSED")
    assert bench.format_ddp({**passed, "identical": False, "max_diff": 1e-3}, args).startswith("DDP: FAILED")
    assert bench.format_ddp({**passed, "max_change": 0.0}, args).startswith("DDP: FAILED")  # nothing trained


def test_cpu_run_of_mask_rcnn_and_torchvision_with_ddp():
    """Mask R-CNN vs torchvision, fp32 and bf16 training (about 40 s on a loaded 2-core box)."""
    stdout = run_bench("--models", "mask_rcnn", "--variants", "fp32", "bf16", "--modes", "train", timeout=600)
    rows = table_rows(stdout)
    assert set(rows) == {(m, v, "train") for m in ("mask_rcnn", "torchvision") for v in ("fp32", "bf16")}, stdout
    for (model, variant, _), (images_per_s, x_torchvision, x_fp32, first_s, peak) in rows.items():
        assert float(images_per_s) > 0 and float(first_s) > 0 and peak == "-", (model, variant, stdout)
        if model == "torchvision":
            assert x_torchvision == "1.00"
        if variant == "fp32":
            assert x_fp32 == "1.00"
    assert "DDP: PASSED: 2 ranks (gloo, cpu, cpu), mask_rcnn, 1 steps" in stdout
    assert "weights identical across ranks: True (max |diff| 0)" in stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("POINTSUP_FULL_BENCH_TEST"),
                    reason="about 4 minutes; set POINTSUP_FULL_BENCH_TEST=1 (the fast test above covers the code path)")
def test_cpu_run_of_every_model_variant_and_mode():
    """The default table (3 models x fp32 / bf16 / channels_last / compile x train / infer):
    about 4 minutes on a loaded 2-core box, most of it dynamo tracing Implicit PointRend.
    Opt-in, to keep the default suite short."""
    stdout = run_bench(timeout=1200)
    rows = table_rows(stdout)
    expected = {(m, v, mode) for m in ("mask_rcnn", "implicit_pointrend", "torchvision")
                for v in ("fp32", "bf16", "channels_last", "compile") for mode in ("train", "infer")}
    assert set(rows) == expected, stdout
    errors = {key: cols[0] for key, cols in rows.items() if not cols[0][0].isdigit()}
    assert set(errors) <= KNOWN_ERRORS, errors
    assert "DDP: PASSED" in stdout
