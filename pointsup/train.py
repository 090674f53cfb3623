"""Train a detector: `python -m pointsup.train [--config YAML] [--set key=value ...] [--resume]`.

With no arguments this is the built-in default job: synthetic data (created on first use),
10 simulated points per object, a small R18-FPN Mask R-CNN trained with point supervision
only, COCO evaluation on the (fully annotated) validation split, and everything written to
`output/`: checkpoints, config.yaml, metrics.jsonl, metrics.json, loss_curve.png, vis/*.png.

Multi-GPU (or multi-process CPU) training is plain DDP launched by torchrun:

    torchrun --nproc_per_node=8 -m pointsup.train --config configs/coco/mask_rcnn_R_50_FPN_3x_P10.yaml

The loop in `main` reads top to bottom. Three ideas make resume and DDP simple:
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
import time
from contextlib import nullcontext
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
from pointsup.utils.logging import append_jsonl, draw_ap_curve, draw_loss_curve, read_jsonl, truncate_jsonl


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


def resolve_device(name: str) -> torch.device:
    if not name:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", dist_utils.get_local_rank())
    return device


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
    """The training set (masks or points, by cfg.model.mask_head.supervision) and the val set."""
    from pointsup.data.coco import CocoInstanceDataset
    from pointsup.data.transforms import build_test_transforms, build_train_transforms

    data = cfg.data
    supervision = cfg.model.mask_head.supervision
    if data.train_json:
        train_json, train_images, val_json, val_images = data.train_json, data.train_images, data.val_json, data.val_images
    else:
        train_json, train_images, val_json, val_images = prepare_synthetic_data(cfg)
    train_set = CocoInstanceDataset(
        train_json, train_images, transforms=build_train_transforms(data),
        use_masks=supervision == "masks", use_points=supervision == "points", skip_empty=data.filter_empty,
        require_points=supervision == "points", allow_paths_outside_root=data.allow_paths_outside_image_root,
    )
    val_set = CocoInstanceDataset(val_json, val_images, transforms=build_test_transforms(data), use_masks=False,
                                  use_points=False, allow_paths_outside_root=data.allow_paths_outside_image_root)
    return train_set, val_set


def synthetic_folder_name(data) -> str:
    """Cache folder of the built-in data: every generation parameter is in the name (the
    default variant keeps its historical name)."""
    name = f"train{data.synthetic_num_train}_val{data.synthetic_num_val}_size{data.synthetic_image_size}"
    variant = (data.synthetic_max_objects, data.synthetic_num_classes, data.synthetic_background)
    if variant != (6, 5, "texture"):
        name += f"_obj{variant[0]}_cls{variant[1]}_{variant[2]}"
    return name


def prepare_synthetic_data(cfg: Config) -> tuple[str, str, str, str]:
    """Create the built-in synthetic data set (and its P_N points file) once; return its paths.

    The folder name encodes the generation parameters so that changing them never reuses a
    stale cache. Point labels are simulated from the train masks (paper sec. 3.1), and the
    masks are then removed from that file: point-supervised training never sees a mask.
    """
    from pointsup.data.simulate_points import simulate_points
    from pointsup.data.synthetic import generate_synthetic_dataset

    data = cfg.data
    root = os.path.join(data.synthetic_dir, synthetic_folder_name(data))
    points_json = os.path.join(root, f"train_points_n{data.num_points}_without_masks.json")
    if dist_utils.is_main_process():
        if not os.path.exists(os.path.join(root, "val.json")):
            print(f"[pointsup] generating the synthetic data set in {root}")
            generate_synthetic_dataset(
                root, data.synthetic_num_train, data.synthetic_num_val, data.synthetic_image_size, seed=0,
                max_objects=data.synthetic_max_objects, num_classes=data.synthetic_num_classes,
                background=data.synthetic_background,
            )
        if not os.path.exists(points_json):
            with open(os.path.join(root, "train.json")) as f:
                coco_dict = json.load(f)
            coco_dict = simulate_points(coco_dict, data.num_points, seed=0, keep_masks=False)
            assert not any("segmentation" in ann for ann in coco_dict["annotations"])
            atomic_write_json(points_json, coco_dict)
    dist_utils.barrier()  # the other ranks wait until rank 0 has written the files
    train_json = points_json if cfg.model.mask_head.supervision == "points" else os.path.join(root, "train.json")
    images = os.path.join(root, "images")
    return train_json, images, os.path.join(root, "val.json"), images


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


def main(cfg: Config, resume: bool = False, model: nn.Module | None = None,
         train_set: Dataset | None = None, val_set: Dataset | None = None, overwrite: bool = False) -> dict:
    """Train (and evaluate) as configured; returns the final metrics (on rank 0; {} elsewhere).

    `model` / `train_set` / `val_set` default to the ones the config describes; pass your
    own from a notebook. `resume=True` continues from the last intact checkpoint in
    cfg.output_dir; a folder holding a run is otherwise refused unless `overwrite=True`.
    SIGINT / SIGTERM during the loop save a checkpoint and raise `TrainingInterrupted`.
    """
    with StopRequest() as stop:
        return _main(cfg, resume, overwrite, model, train_set, val_set, stop)


def _main(cfg: Config, resume: bool, overwrite: bool, model: nn.Module | None, train_set: Dataset | None,
          val_set: Dataset | None, stop: StopRequest) -> dict:
    # ---- Processes, devices, seeds --------------------------------------------------------
    validate_config(cfg)
    device = resolve_device(cfg.device)
    stop.device = device
    dist_utils.init_distributed(device)
    rank, world_size = dist_utils.get_rank(), dist_utils.get_world_size()
    is_main = rank == 0
    seed_everything(cfg.seed + rank)  # per-rank seeds: different augmentations per rank
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    solver = cfg.solver
    batch_size = micro_batch_size(solver, world_size)
    autocast_dtype = amp_dtype(solver.amp, device)
    out = cfg.output_dir
    metrics_jsonl = os.path.join(out, "metrics.jsonl")
    if is_main:  # checked before anything is written
        ckpt.check_output_dir(out, resume, overwrite)

    # ---- Data, model, optimizer -----------------------------------------------------------
    if train_set is None:
        train_set, val_set = build_datasets(cfg)
    if model is None:
        from pointsup.models import build_model

        model = build_model(cfg, cfg.model.num_classes or train_set.num_classes)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr_at(0, solver), momentum=solver.momentum, weight_decay=solver.weight_decay)
    if is_main:
        print(f"[pointsup] {describe_lr(solver)}")
    scaler = torch.amp.GradScaler(device.type, enabled=solver.amp == "fp16")  # fp16 only: bf16 needs no scaling

    start_iter = 0
    # The newest intact checkpoint: a truncated or poisoned newer one is skipped with a warning.
    last, state = ckpt.load_resume_checkpoint(out, cfg.divergence_max_weight) if resume else (None, None)
    if last:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_iter = state["iteration"]
        rng = state["rng"]
        if len(rng) == world_size:
            ckpt.set_rng_state(rng[rank])
        else:  # resumed with another number of processes: fresh but reproducible seeds
            seed_everything(_mix_seed(cfg.seed, rank, start_iter))
        if is_main:
            print(f"[pointsup] resumed from {last} at iteration {start_iter}")
    elif cfg.model.weights:
        ckpt.load_model_weights(model, cfg.model.weights)
    if resume and not last and is_main:
        print(f"[pointsup] --resume: no checkpoint in {out}, starting from scratch")
    if is_main:  # the config is valid, the model built, the checkpoint read: only now write
        if overwrite:
            ckpt.clear_run(out)
        os.makedirs(out, exist_ok=True)
        save_config(cfg, os.path.join(out, "config.yaml"))
    guard = DivergenceGuard(cfg.divergence_max_weight, cfg.divergence_loss_spike, last_good=last)
    if is_main:  # log lines after the checkpoint (or of an earlier run) are redone
        truncate_jsonl(metrics_jsonl, start_iter)
    # find_unused_parameters=False: every model keeps all its parameters in the graph.
    ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world_size > 1 else model
    loader = build_train_loader(cfg, train_set, batch_size, start=start_iter * solver.ims_per_batch, device=device)
    batches = iter(loader)

    def save(iteration: int, final: bool = False, confirmed: bool = False) -> str | None:
        rng_per_rank = dist_utils.all_gather_objects(ckpt.get_rng_state())  # collective: all ranks
        if not guard.may_save(iteration, model, final):  # never write a diverged checkpoint
            return None
        if is_main:
            state = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "iteration": iteration, "config": config_to_dict(cfg), "rng": rng_per_rank,
                "class_names": list(getattr(train_set, "class_names", [])),  # for predict.py
                "category_ids": list(getattr(train_set, "contiguous_to_category_id", [])),  # its results JSON
            }
            # last_checkpoint moves to it once the next loss is finite (pointsup/divergence.py).
            path = ckpt.save_checkpoint(out, ckpt.checkpoint_name(iteration, final), state, point_last=False)
            guard.saved(path, iteration, confirmed=final or confirmed)
            ckpt.prune_checkpoints(out, cfg.checkpoint_keep_last)
            return path
        return None

    def evaluate(iteration: int, final: bool = False) -> dict:
        if val_set is None:
            return {}
        num_images = 0 if final else cfg.eval_num_images  # periodic: a fixed subset
        metrics = evaluate_coco(model, val_set, device=device, num_workers=cfg.data.num_workers, num_images=num_images)
        if is_main:
            subset = {} if final or num_images <= 0 else {"eval_num_images": min(num_images, len(val_set))}
            append_jsonl(metrics_jsonl, {"iter": iteration, **metrics, **subset})
            tqdm.write(f"[pointsup] evaluation at iteration {iteration}:\n{format_metrics(metrics)}")
            records = read_jsonl(metrics_jsonl)  # curves drawn as the run goes
            draw_loss_curve(records, os.path.join(out, "loss_curve.png"))
            draw_ap_curve(records, os.path.join(out, "ap_curve.png"))
        return metrics

    # ---- The loop -------------------------------------------------------------------------
    progress = tqdm(total=solver.max_iter, initial=start_iter, disable=not is_main, dynamic_ncols=True, desc="train")
    log_sums: dict[str, torch.Tensor] = {}  # loss sums since the last log step (on device, no sync)
    log_count, log_start = 0, time.perf_counter()
    for it in range(start_iter, solver.max_iter):
        lr = lr_at(it, solver)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # Gradient accumulation: grads of `accumulate_steps` micro-batches add up before the
        # step; DDP all-reduces them only on the last one (no_sync on the others).
        for micro_step in range(solver.accumulate_steps):
            batch = next(batches).to(device, non_blocking=True)
            last_micro = micro_step == solver.accumulate_steps - 1
            with ddp_model.no_sync() if world_size > 1 and not last_micro else nullcontext():
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                    loss_dict = ddp_model(batch.images, batch.image_sizes, batch.targets)
                loss = sum(loss_dict.values())
                scaler.scale(loss / solver.accumulate_steps).backward()
            # One host sync per micro-step (cheap next to a detector step), so a NaN stops
            # the run before the optimizer step; loss spikes are recorded (pointsup/divergence.py).
            guard.check_loss(it + 1, loss_dict)
            for k, v in loss_dict.items():
                log_sums[k] = log_sums.get(k, 0) + v.detach().float() / solver.accumulate_steps
        if solver.clip_grad_norm > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(params, solver.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        log_count += 1
        progress.update(1)
        iteration = it + 1  # optimizer steps done

        # Logging: the only place where losses are reduced across ranks (one all_reduce).
        if (cfg.log_period > 0 and iteration % cfg.log_period == 0) or iteration == solver.max_iter:
            losses = dist_utils.reduce_loss_dict({k: v / log_count for k, v in log_sums.items()})
            total = sum(losses.values())
            seconds = (time.perf_counter() - log_start) / log_count
            if is_main:
                append_jsonl(metrics_jsonl, {"iter": iteration, "lr": lr, **losses, "total_loss": total, "time": seconds})
                progress.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2e}")
            log_sums, log_count, log_start = {}, 0, time.perf_counter()
        if cfg.checkpoint_period > 0 and iteration % cfg.checkpoint_period == 0 and iteration < solver.max_iter:
            save(iteration)
        if cfg.eval_period > 0 and iteration % cfg.eval_period == 0 and iteration < solver.max_iter:
            evaluate(iteration)
        if stop.requested() and iteration < solver.max_iter:  # SIGINT / SIGTERM: save this iteration, stop
            raise TrainingInterrupted(stop.signum, iteration, save(iteration, confirmed=True), guard.last_good)
    progress.close()
    stop.close()  # from here on a signal stops the process as usual

    # ---- The end: final checkpoint, evaluation, loss curve, prediction PNGs ----------------
    save(solver.max_iter, final=True)
    metrics = evaluate(solver.max_iter, final=True)
    if is_main:
        metrics = {**metrics, "iteration": solver.max_iter}
        atomic_write_json(os.path.join(out, "metrics.json"), metrics, indent=2)
        draw_loss_curve(read_jsonl(metrics_jsonl), os.path.join(out, "loss_curve.png"))
        if cfg.num_vis > 0 and val_set is not None:
            from pointsup.predict import visualize_dataset

            visualize_dataset(model, val_set, os.path.join(out, "vis"), cfg.num_vis, device)
    dist_utils.barrier()
    return metrics if is_main else {}


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
