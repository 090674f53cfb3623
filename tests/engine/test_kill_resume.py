"""A training process killed with SIGKILL resumes from its last checkpoint and loses at most
one checkpoint period (checkpoints are written atomically, so the last one is readable)."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from pointsup import checkpoint as ckpt
from pointsup import train

from .test_main_job import TINY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def logged_iters(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r["iter"] for r in map(json.loads, f) if "total_loss" in r]


def test_sigkill_then_resume(tmp_path):
    out, data = str(tmp_path / "output"), str(tmp_path / "synthetic")
    overrides = [f"data.synthetic_dir={data}", *TINY, "num_vis=0", "checkpoint_period=3"]
    cmd = [sys.executable, "-m", "pointsup.train", "--output-dir", out, "--set", *overrides, "solver.max_iter=10000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            last = ckpt.find_last_checkpoint(out)
            if last and last.endswith("model_0000006.pth"):
                break
            time.sleep(0.2)
        time.sleep(0.5)  # kill it somewhere in the next period, maybe in the middle of a write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = ckpt.find_last_checkpoint(out)
    assert last is not None, "no checkpoint was written before the kill"
    start = torch.load(last, weights_only=False)["iteration"]  # the last checkpoint is complete
    logged = logged_iters(out)
    assert start >= 6 and max(logged) - start < 3 + 1  # lost at most one period (plus the step being run)

    train.cli(["--output-dir", out, "--resume", "--set", *overrides, f"solver.max_iter={start + 2}"])
    assert logged_iters(out) == list(range(1, start + 3))  # continued, no gap and no duplicate
    assert ckpt.find_last_checkpoint(out).endswith("model_final.pth")
