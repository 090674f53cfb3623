"""LR schedule values and the infinite sampler (disjoint ranks, reshuffles, resumable)."""

import itertools

import pytest

from pointsup.config import SolverConfig, load_config
from pointsup.train import InfiniteSampler, describe_lr, lr_at, micro_batch_size, scaled_base_lr


def test_lr_warmup_and_steps():
    s = SolverConfig(base_lr=0.02, warmup_iters=1000, warmup_factor=0.001, steps=[60000, 80000], gamma=0.1)
    assert lr_at(0, s) == pytest.approx(0.02 * 0.001)
    assert lr_at(500, s) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert lr_at(1000, s) == pytest.approx(0.02)
    assert lr_at(59999, s) == pytest.approx(0.02)
    assert lr_at(60000, s) == pytest.approx(0.002)
    assert lr_at(80000, s) == pytest.approx(0.0002)


def test_lr_without_warmup():
    s = SolverConfig(base_lr=0.1, warmup_iters=0, steps=[2])
    assert [lr_at(i, s) for i in range(4)] == pytest.approx([0.1, 0.1, 0.01, 0.01])


def test_micro_batch_size():
    assert micro_batch_size(SolverConfig(ims_per_batch=16, accumulate_steps=2), 4) == 2
    with pytest.raises(ValueError, match="not divisible"):
        micro_batch_size(SolverConfig(ims_per_batch=6, accumulate_steps=2), 2)


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_sampler_ranks_are_disjoint_and_cover_each_epoch():
    size = 10
    r0, r1 = take(InfiniteSampler(size, 0, 0, 2), 5), take(InfiniteSampler(size, 0, 1, 2), 5)
    assert sorted(r0 + r1) == list(range(size))


def test_sampler_reshuffles_each_epoch_and_resumes():
    stream = take(InfiniteSampler(10, 0), 30)
    assert sorted(stream[:10]) == sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]
    assert take(InfiniteSampler(10, 0, start=13), 17) == stream[13:]
    # rank 1 of 2 resumed after 6 global samples continues at global positions 7, 9, ...
    assert take(InfiniteSampler(10, 0, rank=1, world_size=2, start=6), 3) == stream[7:12:2]


def test_linear_scaling_rule():
    # Goyal et al. 2017: the LR is proportional to the batch; base_lr is tuned for reference_batch.
    s = SolverConfig(base_lr=0.02, reference_batch=16, ims_per_batch=4, warmup_iters=0, steps=[100])
    assert scaled_base_lr(s) == pytest.approx(0.005)
    assert lr_at(0, s) == pytest.approx(0.005) and lr_at(100, s) == pytest.approx(0.0005)
    s.scale_lr = False  # the switch: base_lr as given
    assert scaled_base_lr(s) == 0.02 and lr_at(0, s) == pytest.approx(0.02)
    assert "linear scaling off" in describe_lr(s)
    s.scale_lr, s.ims_per_batch = True, 32
    assert scaled_base_lr(s) == pytest.approx(0.04)
    assert "0.04 = base_lr 0.02 x 32 / 16" in describe_lr(s)


def test_coco_configs_state_their_reference_batch():
    # detectron2's recipe: 0.02 for 16 images. On 4 GPUs x 2 images the LR used halves.
    cfg = load_config("configs/coco/mask_rcnn_R_50_FPN_1x.yaml", ["solver.ims_per_batch=8"])
    assert cfg.solver.reference_batch == 16
    assert scaled_base_lr(cfg.solver) == pytest.approx(0.01)
    # The built-in job's base_lr is tuned at its own batch: unchanged at the default batch.
    default = load_config(None)
    assert scaled_base_lr(default.solver) == default.solver.base_lr
