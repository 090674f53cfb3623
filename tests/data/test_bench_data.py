"""scripts/bench_data.py at a tiny scale, without detectron2: it generates its JPEGs, times
pointsup for mask and point supervision and prints the lines docs/PERFORMANCE.md (section "Data loader") quotes."""

from __future__ import annotations

import importlib.util
import os
import re

import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench_data.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_data_without_detectron2(tmp_path, capsys):
    bench = _load_script()
    bench.MIN_SIZES, bench.MAX_SIZE = (64, 80), 128  # keep the resize tiny
    threads = torch.get_num_threads()
    try:
        rc = bench.main(["--num-images", "4", "--width", "64", "--height", "48", "--objects", "2", "--rounds", "2",
                         "--profile", "3", "--resize-backend", "torch", "torch_uint8",
                         "--d2src", str(tmp_path / "no_detectron2"), "--data-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert rc == 0
    assert "detectron2 not found or not used (no detectron2 source at" in out
    # No detectron2 to compare with: the only ratio is between pointsup's two resize backends.
    assert re.findall(r"^\[\w+\] ratio (.+?):", out, re.M) == ["pointsup-torch_uint8 / pointsup"] * 2
    for mode in ("masks", "points"):
        line = re.search(rf"^\[{mode}\] pointsup +([0-9.]+) images/s wall, +([0-9.]+) images/s CPU time", out, re.M)
        assert line and float(line.group(1)) > 0 and float(line.group(2)) > 0, out
        assert re.search(rf"^\[{mode}\] pointsup-torch_uint8 +[0-9.]+ images/s wall", out, re.M), out
        assert f"[{mode}] pointsup profile (cProfile, own time, one pass):" in out
        assert len(re.findall(rf"^\[{mode}\] +[0-9. ]+% +[0-9.]+ ms/image", out, re.M)) == 3 * 2
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".jpg")]) == 4
