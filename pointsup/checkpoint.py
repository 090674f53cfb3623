"""Training checkpoints: written atomically, found again by `--resume`.

A checkpoint is one `torch.save`d dict:

    model       state_dict of the bare model (not the DDP wrapper)
    optimizer   SGD state (momentum buffers)
    scaler      GradScaler state (fp16 AMP; an empty dict otherwise)
    iteration   number of optimizer steps done; the LR is a pure function of it and the
                data stream restarts from `iteration * ims_per_batch` samples
    config      the resolved config as a dict
    rng         per-rank RNG states (python, numpy, torch, cuda), a list indexed by rank

Files in the output folder: `model_0000500.pth`, ..., `model_final.pth`, and a text file
`last_checkpoint` naming the newest one. Both are replaced atomically (temp file + rename),
so a run killed at any moment (even SIGKILL) leaves the previous checkpoint readable and
loses at most one checkpoint period of training.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from pointsup.utils.io import atomic_save, atomic_write_text

LAST_CHECKPOINT = "last_checkpoint"


def checkpoint_name(iteration: int, final: bool = False) -> str:
    return "model_final.pth" if final else f"model_{iteration:07d}.pth"


def save_checkpoint(output_dir: str, name: str, state: dict[str, Any]) -> str:
    """Atomically write `state` to output_dir/name, then point `last_checkpoint` at it."""
    path = os.path.join(output_dir, name)
    atomic_save(path, lambda tmp_path: torch.save(state, tmp_path))
    atomic_write_text(os.path.join(output_dir, LAST_CHECKPOINT), name)
    return path


def find_last_checkpoint(output_dir: str) -> str | None:
    """Path of the newest checkpoint in `output_dir`, or None when there is none."""
    marker = os.path.join(output_dir, LAST_CHECKPOINT)
    if os.path.exists(marker):
        with open(marker) as f:
            path = os.path.join(output_dir, f.read().strip())
        if os.path.exists(path):
            return path
    # No marker (e.g. copied by hand): fall back to the highest iteration on disk.
    if not os.path.isdir(output_dir):
        return None
    names = sorted(n for n in os.listdir(output_dir) if n.startswith("model_") and n.endswith(".pth"))
    if "model_final.pth" in names:
        return os.path.join(output_dir, "model_final.pth")
    return os.path.join(output_dir, names[-1]) if names else None


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    # weights_only=False: the checkpoint holds numpy / python RNG states, not only tensors.
    return torch.load(path, map_location=map_location, weights_only=False)


def load_model_weights(model: torch.nn.Module, path: str) -> None:
    """Load model weights from a pointsup checkpoint, or any format of `pointsup.weights.load_weights`
    (torchvision, detectron2, MSRA pickles; a path or URL). Missing / unexpected keys raise."""
    from pointsup.weights import load_weights

    load_weights(model, path)


def get_rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
