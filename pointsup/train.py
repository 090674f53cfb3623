"""Train a detector: `python -m pointsup.train [--config YAML] [--set key=value ...] [--resume]`.

With no arguments this is the built-in default job: synthetic data (created on first use),
10 simulated points per object, a small R18-FPN Mask R-CNN trained with point supervision
only, COCO evaluation on the (fully annotated) validation split, and everything written to
`output/`: checkpoints, config.yaml, metrics.jsonl, metrics.json, loss_curve.png, vis/*.png.

Multi-GPU (or multi-process CPU) training is plain DDP launched by torchrun:

    torchrun --nproc_per_node=8 -m pointsup.train --config configs/coco/mask_rcnn_R_50_FPN_3x_P10.yaml

`main` is a short story of named steps (`start_processes`, `build_datasets`, `build_optimizer`,
`restore`, `prepare_output_dir`, `train_loop`, `finish`); `train_loop` and `train_step` hold the
loop itself. Three ideas make resume and DDP simple:
  * the LR is a pure function of the iteration (`lr_at`), so no scheduler state exists;
  * the data order is a pure function of (seed, position in the stream) (`InfiniteSampler`),
    so resuming only needs the number of samples consumed = iteration * ims_per_batch;
  * one optimizer step consumes `ims_per_batch` images in total: `world_size` processes
    times `accumulate_steps` micro-batches of `ims_per_batch / (world_size * accumulate_steps)`.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from pointsup import checkpoint as ckpt
from pointsup.config import Config, SolverConfig, config_to_dict, load_config, save_config, validate_config
from pointsup.divergence import DivergenceGuard
from pointsup.evaluation import evaluate_coco, format_metrics
from pointsup.interrupt import StopRequest, TrainingInterrupted
from pointsup.utils import distributed as dist_utils
from pointsup.utils.callable_module import make_callable
from pointsup.utils.io import atomic_write_json
from pointsup.utils.logging import (append_jsonl, draw_ap_curve, draw_loss_curve, open_tensorboard, read_jsonl,
                                    tensorboard_scalars, truncate_jsonl)


def scaled_base_lr(solver: SolverConfig) -> float:
    """The peak LR actually used: base_lr * ims_per_batch / reference_batch (linear scaling
    rule, Goyal et al. 2017), or base_lr itself when solver.scale_lr is false."""
    if not solver.scale_lr:
        return solver.base_lr
    if solver.reference_batch <= 0:
        raise ValueError(f"solver.reference_batch must be positive, got {solver.reference_batch}")
    return solver.base_lr * solver.ims_per_batch / solver.reference_batch


def describe_lr(solver: SolverConfig) -> str:
    """One log line saying which peak LR is used and why."""
    lr = scaled_base_lr(solver)
    if not solver.scale_lr:
        return f"LR {lr:g} (solver.base_lr, linear scaling off)"
    return (f"LR {lr:g} = base_lr {solver.base_lr:g} x {solver.ims_per_batch} / {solver.reference_batch} images "
            f"(linear scaling rule; solver.scale_lr=false uses base_lr as given)")


def lr_at(iteration: int, solver: SolverConfig) -> float:
    """LR of (0-based) iteration `iteration`: linear warmup, then x gamma at each step.

    Like detectron2's WarmupMultiStepLR: the factor goes linearly from `warmup_factor` at
    iteration 0 to 1 at `warmup_iters`; the peak is `scaled_base_lr(solver)`.
    """
    factor = solver.gamma ** bisect.bisect_right(solver.steps, iteration)
    if iteration < solver.warmup_iters:
        alpha = iteration / solver.warmup_iters
        factor *= solver.warmup_factor * (1 - alpha) + alpha
    return scaled_base_lr(solver) * factor


class InfiniteSampler(Sampler[int]):
    """An endless stream of dataset indices: epoch e is a permutation seeded by (seed, e).

    Rank r of W takes stream positions r, r + W, r + 2W, ... starting at `start`, so the
    ranks see disjoint data, every epoch is reshuffled (what DistributedSampler.set_epoch
    does, here derived from the position), and a resumed run continues exactly where the
    checkpoint left off by passing start = samples consumed so far.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0, shuffle: bool = True):
        if size <= 0:
            raise ValueError("the training set is empty")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.start, self.shuffle = start, shuffle

    def permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        position, epoch, order = self.start + self.rank, -1, []
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                order = self.permutation(epoch)
            yield order[position % self.size]
            position += self.world_size


def _mix_seed(*values: int) -> int:
    """A well-mixed 31-bit seed from several integers (seed, rank, epoch, ...)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0] & 0x7FFFFFFF)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker with base_seed + worker_id; derive numpy / random from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def micro_batch_size(solver: SolverConfig, world_size: int) -> int:
    """Images per process per forward pass: ims_per_batch / (world_size * accumulate_steps)."""
    parts = world_size * solver.accumulate_steps
    if solver.ims_per_batch % parts != 0:
        raise ValueError(
            f"solver.ims_per_batch={solver.ims_per_batch} is not divisible by world_size ({world_size}) "
            f"x solver.accumulate_steps ({solver.accumulate_steps})"
        )
    return solver.ims_per_batch // parts


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("solver.amp=fp16 needs CUDA; use bf16 (or '') on CPU")
        return torch.float16
    raise ValueError(f"solver.amp must be '', 'bf16' or 'fp16', got {amp!r}")


def build_datasets(cfg: Config) -> tuple[Dataset, Dataset]:
    """The training set (with the labels the model's supervision needs, `pointsup.supervision`)
    and the val set, from the configured data or the built-in data."""
    from pointsup.data.builtin import data_paths
    from pointsup.data.coco import CocoInstanceDataset
    from pointsup.data.transforms import build_test_transforms, build_train_transforms
    from pointsup.supervision import dataset_labels

    data = cfg.data
    boxinst = cfg.model.meta_architecture == "condinst" and cfg.model.condinst.boxinst
    labels = dataset_labels(cfg.model.mask_head.supervision, boxinst)
    paths = data_paths(cfg)
    train_set = CocoInstanceDataset(
        paths.train_points_json if labels.use_points else paths.train_json, paths.train_images,
        transforms=build_train_transforms(data), use_masks=labels.use_masks, use_points=labels.use_points,
        require_masks=labels.require_masks, require_points=labels.require_points, skip_empty=data.filter_empty,
        allow_paths_outside_root=data.allow_paths_outside_image_root,
    )
    val_set = CocoInstanceDataset(paths.val_json, paths.val_images, transforms=build_test_transforms(data), use_masks=False,
                                  use_points=False, allow_paths_outside_root=data.allow_paths_outside_image_root)
    return train_set, val_set


def build_train_loader(cfg: Config, dataset: Dataset, batch_size: int, start: int, device: torch.device) -> DataLoader:
    from pointsup.data.collate import collate

    rank, world_size = dist_utils.get_rank(), dist_utils.get_world_size()
    sampler = InfiniteSampler(len(dataset), cfg.seed, rank, world_size, start=start)
    # Our own generator, so creating the loader does not draw from the global torch RNG
    # (that would break exact resume); it seeds the workers, freshly after a resume.
    generator = torch.Generator().manual_seed(_mix_seed(cfg.seed, rank, start))
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
        collate_fn=partial(collate, size_divisibility=32), num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda", worker_init_fn=_seed_worker, generator=generator,
        persistent_workers=cfg.data.num_workers > 0,
    )


@dataclass
class Run:
    """What the steps of one training run share (`main` builds it, the steps below use it)."""

    cfg: Config
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_set: Dataset
    val_set: Dataset | None
    guard: DivergenceGuard | None = None
    tensorboard: object | None = None  # a SummaryWriter on rank 0 when cfg.tensorboard
    rank: int = field(default_factory=dist_utils.get_rank)
    world_size: int = field(default_factory=dist_utils.get_world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def metrics_jsonl(self) -> str:
        return os.path.join(self.cfg.output_dir, "metrics.jsonl")

    def log(self, record: dict) -> None:
        """Append a record to metrics.jsonl (and TensorBoard, when on); rank 0 only."""
        append_jsonl(self.metrics_jsonl, record)
        if self.tensorboard is not None:
            for tag, value in tensorboard_scalars(record).items():
                self.tensorboard.add_scalar(tag, value, record["iter"])
            self.tensorboard.flush()


def main(cfg: Config, resume: bool = False, model: nn.Module | None = None,
         train_set: Dataset | None = None, val_set: Dataset | None = None, overwrite: bool = False) -> dict:
    """Train (and evaluate) as configured; returns the final metrics (on rank 0; {} elsewhere).

    `model` / `train_set` / `val_set` default to the ones the config describes; pass your
    own from a notebook. `resume=True` continues from the last intact checkpoint in
    cfg.output_dir; a folder holding a run is otherwise refused unless `overwrite=True`.
    SIGINT / SIGTERM during the loop save a checkpoint and raise `TrainingInterrupted`.
    """
    with StopRequest() as stop:
        device = start_processes(cfg)
        stop.device = device
        if dist_utils.is_main_process():  # checked before anything is written
            ckpt.check_output_dir(cfg.output_dir, resume, overwrite)
        if train_set is None:
            train_set, val_set = build_datasets(cfg)
        if model is None:
            from pointsup.models import build_model

            model = build_model(cfg, cfg.model.num_classes or train_set.num_classes)
        model.to(device).train()
        run = Run(cfg, device, model, *build_optimizer(cfg, model, device), train_set, val_set)
        start_iter, last = restore(run, resume)
        prepare_output_dir(run, overwrite, start_iter)
        run.guard = DivergenceGuard(cfg.divergence_max_weight, cfg.divergence_loss_spike, last_good=last)
        train_loop(run, start_iter, stop)
        stop.close()  # from here on a signal stops the process as usual
        return finish(run)


def start_processes(cfg: Config) -> torch.device:
    """Validate the config, pick the device, join the process group (torchrun), seed."""
    validate_config(cfg)
    device = dist_utils.resolve_device(cfg.device)
    dist_utils.init_distributed(device)
    seed_everything(cfg.seed + dist_utils.get_rank())  # per-rank seeds: different augmentations per rank
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def build_optimizer(cfg: Config, model: nn.Module, device: torch.device) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler]:
    """SGD with momentum over the trainable parameters (LR set per iteration by `lr_at`)."""
    solver = cfg.solver
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr_at(0, solver), momentum=solver.momentum, weight_decay=solver.weight_decay)
    if dist_utils.is_main_process():
        print(f"[pointsup] {describe_lr(solver)}")
    scaler = torch.amp.GradScaler(device.type, enabled=solver.amp == "fp16")  # fp16 only: bf16 needs no scaling
    return optimizer, scaler


def restore(run: Run, resume: bool) -> tuple[int, str | None]:
    """--resume: the newest intact checkpoint (a truncated or poisoned newer one is skipped with
    a warning) -> (its iteration, its path); else model.weights, if any -> (0, None)."""
    cfg = run.cfg
    last, state = ckpt.load_resume_checkpoint(cfg.output_dir, cfg.divergence_max_weight) if resume else (None, None)
    if not last:
        if cfg.model.weights:
            ckpt.load_model_weights(run.model, cfg.model.weights)
        if resume and run.is_main:
            print(f"[pointsup] --resume: no checkpoint in {cfg.output_dir}, starting from scratch")
        return 0, None
    run.model.load_state_dict(state["model"])
    start_iter, rng = state["iteration"], state.get("rng", [])
    if "optimizer" in state:
        run.optimizer.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["scaler"])
    elif start_iter < cfg.solver.max_iter:  # a model_final.pth written without them
        warnings.warn(f"{last} holds no optimizer state (checkpoint_final_optimizer was false): continuing "
                      f"from iteration {start_iter} with fresh SGD momentum, so not exactly as an unbroken run "
                      f"would", stacklevel=2)
    if len(rng) == run.world_size:
        ckpt.set_rng_state(rng[run.rank])
    else:  # resumed with another number of processes: fresh but reproducible seeds
        seed_everything(_mix_seed(cfg.seed, run.rank, start_iter))
    if run.is_main:
        print(f"[pointsup] resumed from {last} at iteration {start_iter}")
    return start_iter, last


def prepare_output_dir(run: Run, overwrite: bool, start_iter: int) -> None:
    """Only now, with the config valid, the model built and the checkpoint read, write: the
    config, and a metrics log without the lines after the checkpoint (they are redone)."""
    if not run.is_main:
        return
    if overwrite:
        ckpt.clear_run(run.cfg.output_dir)
    os.makedirs(run.cfg.output_dir, exist_ok=True)
    save_config(run.cfg, os.path.join(run.cfg.output_dir, "config.yaml"))
    truncate_jsonl(run.metrics_jsonl, start_iter)
    if run.cfg.tensorboard:  # a resumed run adds to the same folder; TensorBoard shows the newest value per step
        run.tensorboard = open_tensorboard(os.path.join(run.cfg.output_dir, "tensorboard"))


def train_loop(run: Run, start_iter: int, stop: StopRequest) -> None:
    """Optimizer steps start_iter .. max_iter, with logging, checkpoints and evaluations on
    their periods; SIGINT / SIGTERM save the current iteration and raise TrainingInterrupted."""
    cfg, solver = run.cfg, run.cfg.solver
    ddp_model = training_module(run)
    batch_size = micro_batch_size(solver, run.world_size)
    batches = iter(build_train_loader(cfg, run.train_set, batch_size, start_iter * solver.ims_per_batch, run.device))
    # Redrawn 10x a second on a terminal; in a log file (harness, cluster jobs) once a minute,
    # not thousands of carriage-return updates per run.
    progress = tqdm(total=solver.max_iter, initial=start_iter, disable=not run.is_main, dynamic_ncols=True,
                    desc="train", mininterval=0.1 if sys.stderr.isatty() else 60.0)
    log = LossLog()
    for it in range(start_iter, solver.max_iter):
        lr = lr_at(it, solver)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        log.add(train_step(run, ddp_model, batches, it))
        progress.update(1)
        iteration = it + 1  # optimizer steps done
        if (cfg.log_period > 0 and iteration % cfg.log_period == 0) or iteration == solver.max_iter:
            total = log.write(run, iteration, lr)
            progress.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2e}")
        if iteration < solver.max_iter:
            if cfg.checkpoint_period > 0 and iteration % cfg.checkpoint_period == 0:
                save_checkpoint(run, iteration)
            if cfg.eval_period > 0 and iteration % cfg.eval_period == 0:
                evaluate_and_log(run, iteration)
            if stop.requested():  # SIGINT / SIGTERM: save this iteration, stop
                raise TrainingInterrupted(stop.signum, iteration, save_checkpoint(run, iteration, confirmed=True),
                                          run.guard.last_good)
    progress.close()


def training_module(run: Run, compile_backend: str = "inductor") -> nn.Module:
    """The module `train_step` calls: run.model, compiled when cfg.model.compile, wrapped in DDP
    when there are several processes. It shares run.model's parameters, so checkpoints and
    evaluation keep using run.model itself (eager, no DDP `module.` or compile `_orig_mod.` prefix).

    The order is PyTorch's recommendation ("Where to apply torch.compile?"): compile the inner
    module, then wrap it in DDP. Dynamo does not trace DDP's wrapper well; inside it, dynamo
    splits the graphs at DDP's gradient buckets so that the all-reduces still overlap the
    backward pass. `torch.compile(module)` rather than `module.compile()` (in place) keeps the
    evaluation and prediction calls of run.model eager. `compile_backend`: torch.compile's
    backend ("eager" only traces, for quick tests of this path).
    """
    module = run.model
    if run.device.type == "cpu":
        # The backbone and the RoI heads run channels-last on CPU (models/backbone.py,
        # ops/roi_pooler.py), so oneDNN returns conv-weight gradients channels-last. Weights
        # in the same layout spare autograd a re-layout copy of every such gradient per step
        # (its gradient layout contract) and DDP its "grad strides do not match bucket view
        # strides" copies. Values are unchanged; only 4-D tensors change layout.
        run.model.to(memory_format=torch.channels_last)
    if run.cfg.model.compile:
        module = torch.compile(module, backend=compile_backend)
    if run.world_size > 1:
        # find_unused_parameters=False: every model keeps all its parameters in the graph.
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        module = DDP(module, device_ids=device_ids)
    return module


def train_step(run: Run, ddp_model: nn.Module, batches: Iterator, it: int) -> dict[str, torch.Tensor]:
    """One optimizer step over `accumulate_steps` micro-batches; returns the losses (detached,
    averaged over the micro-batches, on the device: no host sync beyond the NaN check)."""
    solver = run.cfg.solver
    autocast_dtype = amp_dtype(solver.amp, run.device)
    losses: dict[str, torch.Tensor] = {}
    # Gradient accumulation: grads of `accumulate_steps` micro-batches add up before the
    # step; DDP all-reduces them only on the last one (no_sync on the others).
    for micro_step in range(solver.accumulate_steps):
        batch = next(batches).to(run.device, non_blocking=True)
        last_micro = micro_step == solver.accumulate_steps - 1
        with ddp_model.no_sync() if run.world_size > 1 and not last_micro else nullcontext():
            with torch.autocast(run.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                loss_dict = ddp_model(batch.images, batch.image_sizes, batch.targets)
            loss = sum(loss_dict.values())
            run.scaler.scale(loss / solver.accumulate_steps).backward()
        # The loop's one host sync per micro-step (cheap next to a detector step, whose RoI
        # sampling and NMS sync anyway): a NaN stops the run before the optimizer step and any
        # checkpoint; loss spikes are recorded (pointsup/divergence.py). Otherwise the losses stay
        # on the device until LossLog.write at log steps (fp16 adds GradScaler.step's inf check).
        run.guard.check_loss(it + 1, loss_dict)
        for k, v in loss_dict.items():
            losses[k] = losses.get(k, 0) + v.detach().float() / solver.accumulate_steps
    if solver.clip_grad_norm > 0:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
        params = [p for group in run.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, solver.clip_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return losses


class LossLog:
    """Loss sums since the last log step, kept on the device; `write` is the only place where
    losses are reduced across ranks (one all_reduce) and appended to metrics.jsonl."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count, self.start = 0, time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.count += 1

    def write(self, run: Run, iteration: int, lr: float) -> float:
        losses = dist_utils.reduce_loss_dict({k: v / self.count for k, v in self.sums.items()})
        total = sum(losses.values())
        seconds = (time.perf_counter() - self.start) / self.count
        if run.is_main:
            run.log({"iter": iteration, "lr": lr, **losses, "total_loss": total, "time": seconds})
        self.reset()
        return total


def save_checkpoint(run: Run, iteration: int, final: bool = False, confirmed: bool = False) -> str | None:
    """model_<iteration>.pth (model_final.pth) with everything an exact resume needs; never a
    diverged one (`DivergenceGuard`). Collective: every rank calls it."""
    rng_per_rank = dist_utils.all_gather_objects(ckpt.get_rng_state())
    if not run.guard.may_save(iteration, run.model, final) or not run.is_main:
        return None
    state = {
        "model": run.model.state_dict(), "iteration": iteration, "config": config_to_dict(run.cfg),
        "class_names": list(getattr(run.train_set, "class_names", [])),  # for the Predictor
        "category_ids": list(getattr(run.train_set, "contiguous_to_category_id", [])),  # its results JSON
    }
    if not final or run.cfg.checkpoint_final_optimizer:  # what an exact resume needs besides the model
        state.update(optimizer=run.optimizer.state_dict(), scaler=run.scaler.state_dict(), rng=rng_per_rank)
    # last_checkpoint moves to it once the next loss is finite (pointsup/divergence.py).
    path = ckpt.save_checkpoint(run.cfg.output_dir, ckpt.checkpoint_name(iteration, final), state, point_last=False)
    run.guard.saved(path, iteration, confirmed=final or confirmed)
    ckpt.prune_checkpoints(run.cfg.output_dir, run.cfg.checkpoint_keep_last)
    return path


def evaluate_and_log(run: Run, iteration: int, final: bool = False) -> dict:
    """COCO AP on the val set (periodic: its first eval_num_images images), logged to
    metrics.jsonl, with the loss and AP curves redrawn."""
    if run.val_set is None:
        return {}
    cfg, out = run.cfg, run.cfg.output_dir
    num_images = 0 if final else cfg.eval_num_images  # periodic: a fixed subset
    metrics = evaluate_coco(run.model, run.val_set, device=run.device, num_workers=cfg.data.num_workers,
                            num_images=num_images)
    if run.is_main:
        subset = {} if final or num_images <= 0 else {"eval_num_images": min(num_images, len(run.val_set))}
        run.log({"iter": iteration, **metrics, **subset})
        tqdm.write(f"[pointsup] evaluation at iteration {iteration}:\n{format_metrics(metrics)}")
        records = read_jsonl(run.metrics_jsonl)  # curves drawn as the run goes
        draw_loss_curve(records, os.path.join(out, "loss_curve.png"))
        draw_ap_curve(records, os.path.join(out, "ap_curve.png"))
    return metrics


def finish(run: Run) -> dict:
    """The final checkpoint, evaluation on all val images, metrics.json, loss curve and the
    prediction PNGs; returns the metrics on rank 0 ({} elsewhere)."""
    cfg, out = run.cfg, run.cfg.output_dir
    save_checkpoint(run, cfg.solver.max_iter, final=True)
    metrics = evaluate_and_log(run, cfg.solver.max_iter, final=True)
    if run.is_main:
        metrics = {**metrics, "iteration": cfg.solver.max_iter}
        atomic_write_json(os.path.join(out, "metrics.json"), metrics, indent=2)
        draw_loss_curve(read_jsonl(run.metrics_jsonl), os.path.join(out, "loss_curve.png"))
        if cfg.num_vis > 0 and run.val_set is not None:
            from pointsup.predict import visualize_dataset

            visualize_dataset(run.model, run.val_set, os.path.join(out, "vis"), cfg.num_vis, run.device)
        if run.tensorboard is not None:
            run.tensorboard.close()
    dist_utils.barrier()
    return metrics if run.is_main else {}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pointsup.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config; None = the built-in default job")
    parser.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE",
                        help="override config values, e.g. --set solver.max_iter=100 model.mask_head.supervision=masks")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output dir")
    parser.add_argument("--output-dir", default=None, help="shortcut for --set output_dir=D; None = the config's output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the training run in the output dir (without it, such a folder is refused)")
    return parser.parse_args(argv)


def cli(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    overrides = args.set + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    cfg = load_config(args.config, overrides)
    try:
        metrics = main(cfg, resume=args.resume, overwrite=args.overwrite)
    except TrainingInterrupted as e:
        print(f"[pointsup] {e}")
        raise SystemExit(e.exit_code) from None
    finally:
        dist_utils.destroy_distributed()
    if metrics:
        print(json.dumps({k: v for k, v in metrics.items() if k in ("bbox", "segm")}))
    return metrics


# `pointsup.train(cfg)` runs `main`: the module is callable (pointsup/utils/callable_module.py).
make_callable(__name__, "main")

if __name__ == "__main__":
    cli()
