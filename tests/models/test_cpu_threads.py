"""pointsup.ops.cpu_threads: results in input order, on the pool's threads only when torch has
more than one thread, without autograd there, and never inside autocast."""

from __future__ import annotations

import threading

import torch

from pointsup.ops.cpu_threads import can_split, map_on_threads, one_call_each


def test_map_on_threads_keeps_order_and_uses_the_pool_only_with_threads():
    previous = torch.get_num_threads()
    leaf = torch.ones(3, requires_grad=True)
    try:
        torch.set_num_threads(2)
        seen = []
        out = map_on_threads(lambda i: (seen.append(threading.current_thread().name), (leaf * i).requires_grad)[1], list(range(6)))
        assert out == [False] * 6  # autograd off on the pool's threads
        assert all(name.startswith("pointsup_cpu") for name in seen)
        assert map_on_threads(lambda i: i * i, list(range(7))) == [i * i for i in range(7)]
        torch.set_num_threads(1)
        seen.clear()
        assert map_on_threads(lambda i: (seen.append(threading.current_thread().name), i)[1], [3, 1]) == [3, 1]
        assert seen == [threading.current_thread().name] * 2  # one thread: called in place
    finally:
        torch.set_num_threads(previous)


def test_can_split_only_float_cpu_work_outside_autocast():
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert can_split(torch.zeros(2))
        assert not can_split(torch.zeros(2, dtype=torch.bfloat16))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not can_split(torch.zeros(2))
        with one_call_each():
            assert not can_split(torch.zeros(2))
        assert can_split(torch.zeros(2))
        torch.set_num_threads(1)
        assert not can_split(torch.zeros(2))
    finally:
        torch.set_num_threads(previous)
