"""Running independent single-threaded CPU ops side by side.

Some torchvision CPU kernels (RoIAlign's forward, NMS) run on one thread whatever
`torch.get_num_threads()` says. When a model calls such an op on independent pieces of work
(runs of RoIs, classes of boxes), the pieces can go to a pool of T Python threads: the op
releases the GIL while it runs, so T pieces run on T cores. Results are the same tensors the
calls return one after the other.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import Tensor

Item = TypeVar("Item")
Result = TypeVar("Result")

_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (process id, threads, pool)
_DISABLED = False  # set by `one_call_each` (benchmarks and checks)


@contextmanager
def one_call_each():
    """Within this block nothing is split: each op runs as one call on the calling thread
    (what pointsup did before; `scripts/bench_cpu_threads.py` times one against the other)."""
    global _DISABLED
    previous, _DISABLED = _DISABLED, True
    try:
        yield
    finally:
        _DISABLED = previous


def can_split(tensor: Tensor) -> bool:
    """Whether work on `tensor` may go to the pool: a float32 / float64 CPU tensor, more than
    one torch thread, outside autocast (per-thread state the pool does not have) and outside
    tracing or compiling (where the op must stay one node of the graph)."""
    return (not _DISABLED and tensor.device.type == "cpu" and torch.get_num_threads() > 1
            and tensor.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


def map_on_threads(fn: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """[fn(item) for item in items], on `torch.get_num_threads()` threads when that is > 1.

    fn runs with autograd off and without autocast on the pool's threads (both are
    per-thread state): callers hand it only work that needs neither.
    """
    threads = torch.get_num_threads()
    if threads < 2 or len(items) < 2:
        return [fn(item) for item in items]

    def no_grad_fn(item: Item) -> Result:
        with torch.no_grad():
            return fn(item)

    return list(_thread_pool(threads).map(no_grad_fn, items))


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    """A pool of `threads` workers for this process (a pool inherited through fork has no
    threads, and the thread count can change between calls)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != threads:
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[2].shutdown(wait=False)
        _POOL = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="pointsup_cpu"))
    return _POOL[2]
