"""Training checkpoints: written atomically, loaded without running code, found again by `--resume`.

A checkpoint is one `torch.save`d dict of tensors and plain Python values only:

    model         state_dict of the bare model (not the DDP wrapper)
    iteration     number of optimizer steps done; the LR is a pure function of it and the
                  data stream restarts from `iteration * ims_per_batch` samples
    config        the resolved config as a dict
    class_names   the training set's class names, category_ids its COCO category ids
    optimizer     SGD state (momentum buffers)                        } periodic checkpoints;
    scaler        GradScaler state (fp16 AMP; an empty dict otherwise) } model_final.pth only
    rng           per-rank RNG states (python, numpy, torch, cuda),    } with
                  a list indexed by rank; numpy's key array is stored  } checkpoint_final_optimizer
                  as a tensor so that the file needs no pickled numpy objects

A finished run's model_final.pth is thus about a third of a periodic checkpoint's size;
resuming a run at any periodic checkpoint stays exact.

Loading uses `torch.load(weights_only=True)`: a file that would build any other object (a
crafted pickle calling `os.system`, say) is refused before anything in it runs. Numpy
arrays are allowed too, so checkpoints written before the RNG state became a tensor still
load. Every failure is a `CheckpointError` naming the file.

Files in the output folder: `model_0000500.pth`, ..., `model_final.pth`, and a text file
`last_checkpoint` naming the newest one. Both are replaced atomically (temp file + rename),
so a run killed at any moment (even SIGKILL) leaves the previous checkpoint readable.
`load_resume_checkpoint` still verifies the newest one and falls back to the newest intact
checkpoint (a disk filled up, a file copied half-way), and `prune_checkpoints` implements
`checkpoint_keep_last`.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from typing import Any

import numpy as np
import torch

from pointsup.utils.io import atomic_save, atomic_write_text

LAST_CHECKPOINT = "last_checkpoint"
FINAL_NAME = "model_final.pth"
_PERIODIC = re.compile(r"^model_(\d{7})\.pth$")
# Files a training run writes into its output folder (used to recognise a folder that holds
# a run, and to clear one with --overwrite).
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.json", "loss_curve.png", "ap_curve.png", LAST_CHECKPOINT, FINAL_NAME)


class CheckpointError(ValueError):
    """A checkpoint file cannot be read safely, or does not hold what it should."""


def checkpoint_name(iteration: int, final: bool = False) -> str:
    return FINAL_NAME if final else f"model_{iteration:07d}.pth"


def save_checkpoint(output_dir: str, name: str, state: dict[str, Any], point_last: bool = True) -> str:
    """Atomically write `state` to output_dir/name, then (atomically) point `last_checkpoint` at it
    (unless `point_last` is False: the training loop does that once the next loss confirms it)."""
    path = os.path.join(output_dir, name)
    atomic_save(path, lambda tmp_path: torch.save(state, tmp_path))
    if point_last:
        point_last_checkpoint(path)
    return path


def point_last_checkpoint(path: str) -> None:
    """Atomically make `last_checkpoint` (in the folder of `path`) name `path`."""
    atomic_write_text(os.path.join(os.path.dirname(path), LAST_CHECKPOINT), os.path.basename(path))


def set_aside_checkpoint(path: str) -> str:
    """Rename a checkpoint that must never be resumed from to *.diverged.pth (kept for
    inspection, invisible to `--resume`); returns the new path."""
    new_path = path[: -len(".pth")] + ".diverged.pth"
    os.replace(path, new_path)
    return new_path


def list_checkpoints(output_dir: str) -> list[str]:
    """Checkpoint paths in `output_dir`, newest first: model_final.pth, then by iteration."""
    if not os.path.isdir(output_dir):
        return []
    names = os.listdir(output_dir)
    periodic = sorted((n for n in names if _PERIODIC.match(n)), reverse=True)
    ordered = ([FINAL_NAME] if FINAL_NAME in names else []) + periodic
    return [os.path.join(output_dir, n) for n in ordered]


def find_last_checkpoint(output_dir: str) -> str | None:
    """Path of the newest checkpoint in `output_dir` (the one `last_checkpoint` names), or None."""
    marker = os.path.join(output_dir, LAST_CHECKPOINT)
    if os.path.exists(marker):
        with open(marker) as f:
            path = os.path.join(output_dir, f.read().strip())
        if os.path.isfile(path):
            return path
    # No marker (e.g. copied by hand): fall back to the highest iteration on disk.
    candidates = list_checkpoints(output_dir)
    return candidates[0] if candidates else None


def safe_torch_load(path: str) -> Any:
    """`torch.load(path, weights_only=True)` with numpy arrays allowed; never runs code from the file.

    Raises CheckpointError naming `path` for a file that is missing, truncated, not a torch
    file, or that needs anything other than tensors, numpy arrays and plain Python types.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    multiarray = getattr(np, "_core", None) or np.core
    numpy_globals = [multiarray.multiarray._reconstruct, np.ndarray, np.dtype,
                     *(type(np.dtype(t)) for t in (np.uint32, np.float32, np.float64, np.int64, np.uint8))]
    try:
        with torch.serialization.safe_globals(numpy_globals):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (refused object), RuntimeError (truncated zip), EOFError, ...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in str(e) or "Unsupported global" in str(e):
            reason = ("it contains Python objects other than tensors and plain values, which could run "
                      "code when loaded; only load it with torch.load(weights_only=False) if you trust "
                      "where it came from")
        else:
            reason = f"not a readable torch file ({type(e).__name__}: {first_line})"
        raise CheckpointError(f"refusing to load {path}: {reason}") from None


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a pointsup checkpoint safely (see `safe_torch_load`); tensors moved to `map_location`."""
    state = safe_torch_load(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(state).__name__}")
    if str(map_location) != "cpu":
        state = _move(state, torch.device(map_location))
    return state


def _move(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_move(v, device) for v in obj]
    return obj


def weights_problem(state_dict: dict[str, torch.Tensor], max_abs: float) -> str | None:
    """Why these weights must not be trained on or saved: a non-finite entry, or a floating
    entry larger than `max_abs` in magnitude (a run that is blowing up); None when they are fine."""
    largest, largest_name = 0.0, ""
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.numel() == 0:
            continue
        if not torch.isfinite(value).all():
            return f"{name} has non-finite values"
        peak = value.detach().abs().max().item()
        if peak > largest:
            largest, largest_name = peak, name
    if max_abs > 0 and largest > max_abs:
        return f"max |weight| {largest:.3g} in {largest_name} exceeds {max_abs:.3g}"
    return None


def verify_checkpoint(path: str, max_weight_abs: float = 0.0) -> dict[str, Any]:
    """Load `path` and check that it is a complete training checkpoint with sane weights
    (model_final.pth may lack the optimizer state: see `checkpoint_final_optimizer`).

    Raises CheckpointError naming the file otherwise."""
    state = load_checkpoint(path)
    required = ("model", "iteration") if os.path.basename(path) == FINAL_NAME else ("model", "optimizer", "iteration")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a pointsup training checkpoint (missing {', '.join(missing)})")
    problem = weights_problem(state["model"], max_weight_abs)
    if problem:
        raise CheckpointError(f"{path}: poisoned weights ({problem})")
    return state


def load_resume_checkpoint(output_dir: str, max_weight_abs: float = 0.0) -> tuple[str | None, dict[str, Any] | None]:
    """(path, state) of the checkpoint `--resume` continues from; (None, None) when there is none.

    The newest checkpoint (`last_checkpoint`) is verified first; if it is truncated,
    unreadable or holds non-finite / exploding weights, the next newest is tried, with a
    warning naming what was skipped and why. Every candidate failing is an error: resuming
    silently from scratch would throw the run away.
    """
    newest = find_last_checkpoint(output_dir)
    candidates = ([newest] if newest else []) + [p for p in list_checkpoints(output_dir) if p != newest]
    problems = []
    for path in candidates:
        try:
            state = verify_checkpoint(path, max_weight_abs)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            warnings.warn(f"--resume: skipped {len(problems)} newer checkpoint(s): " + "; ".join(problems)
                          + f". Resuming from {path} (iteration {state['iteration']}).", stacklevel=2)
        return path, state
    if problems:
        raise CheckpointError(f"--resume: no intact checkpoint in {output_dir}: " + "; ".join(problems))
    return None, None


def prune_checkpoints(output_dir: str, keep_last: int) -> list[str]:
    """Delete all but the newest `keep_last` periodic checkpoints (model_final.pth and the one
    `last_checkpoint` names are always kept); 0 keeps everything. Returns the deleted paths."""
    if keep_last <= 0:
        return []
    newest = find_last_checkpoint(output_dir)
    periodic = [p for p in list_checkpoints(output_dir) if _PERIODIC.match(os.path.basename(p))]
    deleted = [p for p in periodic[keep_last:] if p != newest]
    for path in deleted:
        os.remove(path)
    return deleted


def holds_run(output_dir: str) -> list[str]:
    """Names of the training-run files in `output_dir` (empty when it holds no run)."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(n for n in os.listdir(output_dir) if n in RUN_FILES or _PERIODIC.match(n))


def check_output_dir(output_dir: str, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds one, unless asked to continue or replace it.

    Called before anything is written; `clear_run` does the replacing once the config is valid.
    """
    existing = holds_run(output_dir)
    if resume and overwrite:
        raise ValueError("--resume continues the run in the output dir and --overwrite replaces it: pick one")
    if existing and not resume and not overwrite:
        shown = ", ".join(existing[:6]) + (", ..." if len(existing) > 6 else "")
        raise FileExistsError(
            f"{output_dir} already holds a training run ({shown}). Pass --resume to continue it, "
            f"--overwrite to replace it, or choose another --output-dir."
        )


def clear_run(output_dir: str) -> list[str]:
    """Delete the files of the run in `output_dir` (checkpoints, logs, config, metrics, vis/*.png)
    so that nothing of it is left beside a new run; other files stay. Returns what was deleted."""
    deleted = [os.path.join(output_dir, n) for n in holds_run(output_dir)]
    vis = os.path.join(output_dir, "vis")
    if os.path.isdir(vis):
        deleted += [os.path.join(vis, n) for n in os.listdir(vis) if n.endswith(".png")]
    for path in deleted:
        os.remove(path)
    return deleted


def load_model_weights(model: torch.nn.Module, path: str) -> None:
    """Load model weights from a pointsup checkpoint, or any format of `pointsup.weights.load_weights`
    (torchvision, detectron2, MSRA pickles; a path or URL). Missing / unexpected keys raise."""
    from pointsup.weights import load_weights

    load_weights(model, path)


def get_rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
