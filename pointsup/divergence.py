"""Stop a diverging run before it poisons a checkpoint.

A run that diverges does not always go straight to NaN: with a too-high LR the weights grow
for a few steps (max |w| 2.3e9 in an accidental divergence, 5.5e19 with base_lr=1e6,
against about 6 in a healthy default job) and only then the loss overflows. A checkpoint
written in between is a trap: `--resume` would continue from garbage. Two facts shape the
checks:

  * The loss of iteration k is computed with the weights of checkpoint k-1, so the first
    evidence about checkpoint k is the loss of iteration k+1. A periodic checkpoint is
    therefore written at once but `last_checkpoint` is pointed at it only when the next
    loss is finite and no spike (`confirm`); otherwise it is renamed *.diverged.pth.
  * Exploding weights can be seen directly: before any checkpoint is written, non-finite
    weights or |w| > `max_weight_abs` stop the run instead (`may_save`).

The loss checks (`check_loss`, every micro-step): a non-finite loss stops the run at once
(before the backward pass); a total loss above `spike_factor` x the median of the last
`window` losses is a spike: the pending checkpoint is set aside and no checkpoint is
written for `window` iterations (the run may recover, but not from these weights). Every
stop message names the last checkpoint that passed, so the user knows where `--resume`
continues from.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import deque

import torch
from torch import Tensor, nn

from pointsup import checkpoint as ckpt


class TrainingDiverged(FloatingPointError):
    """The loss or the weights stopped being usable; the message names the last good checkpoint."""


class DivergenceGuard:
    """Loss-spike and weight checks for one training run (see the module docstring).

    max_weight_abs: largest |weight| a checkpoint may hold; 0 turns the check off.
    spike_factor:   a total loss above spike_factor x the median of the last `window`
                    losses is a spike; 0 turns spike detection off.
    last_good:      the newest checkpoint that passed the checks (or was resumed from).
    pending:        (path, iteration) of a checkpoint written but not yet confirmed (rank 0).
    """

    def __init__(self, max_weight_abs: float, spike_factor: float, window: int = 20, last_good: str | None = None):
        self.max_weight_abs, self.spike_factor, self.window = max_weight_abs, spike_factor, window
        self.recent: deque[float] = deque(maxlen=window)
        self.last_spike: tuple[int, str] | None = None  # (iteration, description)
        self.last_good = last_good
        self.pending: tuple[str, int] | None = None

    def _stop_message(self, what: str) -> str:
        where = (f"the last good checkpoint is {self.last_good} (continue from it with --resume, e.g. with a "
                 f"lower solver.base_lr)" if self.last_good else "no good checkpoint was saved before this")
        return f"{what}; {where}"

    def check_loss(self, iteration: int, loss_dict: dict[str, Tensor]) -> None:
        """Confirm or set aside the pending checkpoint; raise TrainingDiverged on a non-finite
        loss; record a spike. One host sync."""
        names = list(loss_dict)
        values = dict(zip(names, torch.stack([loss_dict[k].detach().float() for k in names]).tolist()))
        total = sum(values.values())
        terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        problem = None if math.isfinite(total) else "not finite"
        # Even one earlier loss is a reference: a healthy loss falls, it does not jump 20x.
        if problem is None and self.spike_factor > 0 and self.recent:
            median = statistics.median(self.recent)
            if total > self.spike_factor * median:
                problem = f"a spike ({total:.4g} > {self.spike_factor:g} x median {median:.4g} of the last losses)"
                self.last_spike = (iteration, f"{total:.4g} > {self.spike_factor:g} x median {median:.4g}; {terms}")
        if self.pending and iteration > self.pending[1]:
            if problem is None:
                self.confirm()
            else:
                path = ckpt.set_aside_checkpoint(self.pending[0])
                warnings.warn(f"the loss right after {self.pending[0]} is {problem}: renamed it {path}; "
                              f"last good checkpoint: {self.last_good}", stacklevel=2)
                self.pending = None
        if not math.isfinite(total):
            raise TrainingDiverged(self._stop_message(f"loss is not finite at iteration {iteration}: {terms}"))
        self.recent.append(total)

    def may_save(self, iteration: int, model: nn.Module, final: bool = False) -> bool:
        """Whether the checkpoint of `iteration` may be written; raises TrainingDiverged when the
        weights are non-finite or exploding. Every rank gets the same answer for the weights
        (DDP keeps them equal); the spike answer is rank 0's own and only rank 0 writes."""
        problem = ckpt.weights_problem(model.state_dict(), self.max_weight_abs)
        if problem:
            raise TrainingDiverged(self._stop_message(f"weights diverged by iteration {iteration}: {problem}"))
        if not final and self.last_spike and iteration - self.last_spike[0] < self.window:
            spike_iter, description = self.last_spike
            warnings.warn(f"not saving the checkpoint of iteration {iteration}: loss spike at iteration "
                          f"{spike_iter} ({description}); last good checkpoint: {self.last_good}", stacklevel=2)
            return False
        return True

    def saved(self, path: str, iteration: int, confirmed: bool = False) -> None:
        """A checkpoint was written (rank 0): point last_checkpoint at it now (`confirmed`: the
        final one, or one saved on a signal) or after the next loss."""
        self.pending = (path, iteration)
        if confirmed:
            self.confirm()

    def confirm(self) -> None:
        if self.pending:
            ckpt.point_last_checkpoint(self.pending[0])
            self.last_good, self.pending = self.pending[0], None
