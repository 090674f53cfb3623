"""SIGINT / SIGTERM during training: finish the current iteration, save a checkpoint, exit.

Clusters pre-empt jobs with SIGTERM (then SIGKILL a little later) and people press Ctrl-C;
either way the work since the last periodic checkpoint should not be lost. While training,
`StopRequest` turns the first signal into a flag; the loop checks it between iterations,
saves a checkpoint at the current iteration (resume from it is exact: the checkpoint is the
same as a periodic one) and raises `TrainingInterrupted`. `python -m pointsup.train` then
exits with the shell's code for the signal (130 for SIGINT, 143 for SIGTERM). A second
signal is not caught: it stops the process at once, as usual.

With DDP every rank must stop at the same iteration (saving is a collective), so the flag
is combined over ranks with one tiny all_reduce per iteration.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from pointsup.utils import distributed as dist_utils

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving `checkpoint` at `iteration`."""

    def __init__(self, signum: int, iteration: int, checkpoint: str | None, last_good: str | None = None):
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        name = signal.Signals(signum).name
        if checkpoint:
            saved = f"saved {checkpoint}; continue with --resume"
        else:  # e.g. right after a loss spike (pointsup/divergence.py)
            saved = f"no checkpoint saved at this iteration; --resume continues from {last_good or 'scratch'}"
        super().__init__(f"{name} received: stopped after iteration {iteration}, {saved}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process killed by the signal


class StopRequest:
    """Context manager: while active, SIGINT / SIGTERM set `signum` instead of killing the process.

    Only the main thread can install signal handlers; elsewhere (a notebook worker thread)
    this does nothing and signals keep their usual effect.
    """

    def __init__(self, device: torch.device | None = None):
        self.device = device or torch.device("cpu")
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Give the signals their previous handlers back (idempotent)."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # a second signal: the user insists, stop now
            previous = self._previous.get(signum, signal.SIG_DFL)
            self.close()
            if callable(previous):
                previous(signum, frame)
            else:
                signal.raise_signal(signum)
            return
        self.signum = signum

    def requested(self) -> bool:
        """True on every rank when any rank got a signal (one all_reduce under DDP)."""
        if not dist_utils.is_distributed():
            return self.signum is not None
        flag = torch.tensor([0 if self.signum is None else self.signum], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if self.signum is None and flag.item():
            self.signum = int(flag.item())
        return bool(flag.item())
