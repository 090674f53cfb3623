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


def test_sigterm_saves_the_current_iteration_and_exits_143(tmp_path):
    """A cluster's pre-emption: SIGTERM in the middle of a period. The process finishes the
    step, saves a checkpoint of exactly the last logged iteration, exits with 128 + 15, and
    --resume continues from there without a gap."""
    out, data = str(tmp_path / "output"), str(tmp_path / "synthetic")
    overrides = [f"data.synthetic_dir={data}", *TINY, "num_vis=0", "checkpoint_period=1000"]
    cmd = [sys.executable, "-m", "pointsup.train", "--output-dir", out, "--set", *overrides, "solver.max_iter=10000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(os.path.join(out, "metrics.jsonl")) and len(logged_iters(out)) >= 2:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output
    stopped_at = max(logged_iters(out))
    last = ckpt.find_last_checkpoint(out)
    assert last.endswith(f"model_{stopped_at:07d}.pth"), (last, stopped_at)
    assert ckpt.load_checkpoint(last)["iteration"] == stopped_at
    assert f"SIGTERM received: stopped after iteration {stopped_at}" in output

    train.cli(["--output-dir", out, "--resume", "--set", *overrides, f"solver.max_iter={stopped_at + 2}"])
    assert logged_iters(out) == list(range(1, stopped_at + 3))
