"""GPU benchmark: pointsup's Mask R-CNN and Implicit PointRend against torchvision, one process.

Models (`--models`): pointsup's `mask_rcnn` and `implicit_pointrend` from configs/coco (R50-FPN,
detectron2's sizes, random weights: `model.backbone.weights=""`, nothing downloaded) and
`torchvision`'s maskrcnn_resnet50_fpn (built as in scripts/bench_models.py: FrozenBN, stem and
layer1 frozen, like pointsup). Every model sees the same random batch (scripts/bench_models.py's
`synthetic_batch`); pointsup trains from the points (`--supervision`), torchvision from the masks.

Variants (`--variants`; join with "+", e.g. bf16+channels_last):
  fp32           the plain model
  bf16           bf16 autocast (pointsup: solver.amp=bf16, the training loop's own autocast)
  channels_last  parameters and input images in channels-last memory
  compile        torch.compile (pointsup: model.compile=true through `train.training_module`,
                 the training loop's own set-up; `--compile-backend`, default inductor)

Measured for every (variant, mode, model), all models of a variant built together and their
runs interleaved (as scripts/bench_models.py does: load from other processes hits them alike):
  train  images/s of one optimizer step (forward, backward, SGD step). pointsup runs
         `pointsup.train.train_step`, the loop's step (with its per-step NaN check);
         torchvision the same step written out (its reference engine also checks the loss).
  infer  images/s of eval-mode inference; pointsup through `pointsup.inference.predict_batch`
         (the evaluation path). Score thresholds are 0, so every model keeps its 100 best
         detections per image (random weights give arbitrary scores).
  first  seconds of the first call (for `compile`: the compile time).
  peak   on CUDA: torch.cuda.max_memory_allocated during one more step minus the memory
         allocated just before it (the step's own activations, gradients and temporaries on
         top of the resident models); "-" on CPU.
Then a DDP smoke run: 2 processes (torch.multiprocessing spawn; NCCL with 2+ GPUs, else gloo,
both ranks on the one GPU, or on the CPU) build `--ddp-model` with different seeds, wrap it with
`pointsup.train.training_module` (DDP, as in training), take `--ddp-steps` optimizer steps with
`train_step` on different data per rank, and check that both ranks end with bit-identical weights
that moved from the start.

Order: fp32 / bf16 / channels_last cells, the DDP run, then compile cells (slowest: minutes of
compiling). A cell that would start after `--budget-s` seconds is skipped (shown as such), and
SIGTERM (e.g. `timeout`) prints the table of the cells done so far, so a time-limited run still
reports. Printed at the end: one markdown table with the ratios against torchvision (same variant
and mode) and against the model's own fp32.

    scripts/bench_gpu.sh                            # one GPU, batch 2 of 800 x 1088, at most 5 minutes
    timeout -k 20 290 python scripts/bench_gpu.py   # the same (cells start within --budget-s 200)
    python scripts/bench_gpu.py --device cpu --size 64 --batch 1 --iters 1 --warmup 0 \\
        --threads 1 --compile-backend eager --ddp-steps 2   # the same code at a tiny scale (tests)
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_models import POINTSUP_CONFIGS, build_torchvision, synthetic_batch  # noqa: E402

MODELS = ["mask_rcnn", "implicit_pointrend", "torchvision"]
FEATURES = ("bf16", "channels_last", "compile")  # a variant is a set of these; none = fp32
REFERENCE = "torchvision"


def parse_variant(name: str) -> frozenset[str]:
    parts = frozenset(name.split("+")) - {"fp32"}
    unknown = parts - set(FEATURES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant part(s) {sorted(unknown)}; use fp32 or {'+'.join(FEATURES)}")
    return parts


def variant_name(features: frozenset[str]) -> str:
    return "+".join(f for f in FEATURES if f in features) or "fp32"


# ---------------------------------------------------------------------------------------
# Models and one step of each, with the library's own code for pointsup
# ---------------------------------------------------------------------------------------


def pointsup_config(which: str, args, features: frozenset[str] = frozenset()):
    from pointsup.config import load_config

    overrides = [
        "model.backbone.weights=",  # random init: no ImageNet file needed
        f"model.mask_head.supervision={args.supervision}",
        f"model.roi_heads.score_thresh_test={args.score_thresh}",  # 100 detections per image
        f"solver.amp={'bf16' if 'bf16' in features else ''}",
        f"model.compile={'compile' in features}",
    ]
    return load_config(str(ROOT / "configs" / "coco" / POINTSUP_CONFIGS[which]), overrides)


def make_batch(args, device: torch.device, seed: int = 0, memory_format=torch.contiguous_format):
    """The random batch as an ImageBatch on `device` (pointsup) and as torchvision's inputs."""
    from pointsup.structures import ImageBatch, InstanceTargets

    H, W = args.height, args.width
    images, per_image = synthetic_batch(args.batch, H, W, args.num_objects, args.num_points, args.num_classes, seed)
    images = images.to(device).contiguous(memory_format=memory_format)
    with_masks = args.supervision == "masks"  # a point run never loads masks (pointsup.supervision)
    targets = [InstanceTargets(b, c, (H, W), m if with_masks else None, p, l).to(device) for b, c, m, p, l in per_image]
    batch = ImageBatch(images, [(H, W)] * args.batch, targets)
    tv_images = list(images / 255.0)  # (3, H, W) each: torchvision's transform makes its own batch tensor
    tv_targets = [{"boxes": b.to(device), "labels": (c + 1).to(device), "masks": m.to(torch.uint8).to(device)}
                  for b, c, m, _, _ in per_image]
    return batch, tv_images, tv_targets


def pointsup_run(which: str, args, device: torch.device, features: frozenset[str]):
    """A `pointsup.train.Run` of the model (its optimizer, AMP scaler, divergence guard) as
    `pointsup.train.main` builds it, and the module `train_step` calls."""
    from pointsup.divergence import DivergenceGuard
    from pointsup.models import build_model
    from pointsup.train import Run, build_optimizer, training_module

    cfg = pointsup_config(which, args, features)
    model = build_model(cfg, args.num_classes).to(device).train()
    if "channels_last" in features:
        model = model.to(memory_format=torch.channels_last)
    with redirect_stdout(StringIO()):  # build_optimizer prints the LR line
        optimizer, scaler = build_optimizer(cfg, model, device)
    run = Run(cfg, device, model, optimizer, scaler, train_set=None, val_set=None,
              guard=DivergenceGuard(max_weight_abs=0.0, spike_factor=0.0))
    return run, training_module(run, compile_backend=args.compile_backend)


def make_runner(which: str, args, device: torch.device, features: frozenset[str]):
    """Build one model for a variant; returns {mode: function running one synchronised step}."""
    from pointsup.train import amp_dtype, train_step

    autocast_dtype = torch.bfloat16 if "bf16" in features else None
    memory_format = torch.channels_last if "channels_last" in features else torch.contiguous_format
    batch, tv_images, tv_targets = make_batch(args, device, memory_format=memory_format)
    if which in POINTSUP_CONFIGS:
        from pointsup.inference import predict_batch

        run, module = pointsup_run(which, args, device, features)
        autocast_dtype = amp_dtype(run.cfg.solver.amp, device)  # the library's choice for the config
        batches = itertools.repeat(batch)  # already on the device: train_step's .to() is a no-op

        def train():
            train_step(run, module, batches, 0)

        def infer():
            return predict_batch(module, list(batch.images), device, amp_dtype=autocast_dtype)

    else:
        model = build_torchvision(args).to(device).train()
        if "channels_last" in features:
            model = model.to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        # The SGD of pointsup.train.build_optimizer, at the LR of its first iteration.
        optimizer = torch.optim.SGD(params, lr=run_lr(args), momentum=0.9, weight_decay=1e-4)
        module = torch.compile(model, backend=args.compile_backend) if "compile" in features else model

        def autocast():
            enabled = autocast_dtype is not None
            return torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=enabled)

        def train():
            module.train()
            with autocast():
                loss_dict = module(tv_images, tv_targets)
            loss = sum(loss_dict.values())
            loss.backward()
            if not math.isfinite(loss.item()):  # torchvision's references/detection/engine.py checks each step
                raise FloatingPointError(f"torchvision loss is not finite: {loss_dict}")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        @torch.no_grad()
        def infer():
            module.eval()
            with autocast():
                return module(tv_images)

    def synchronised(step):
        def once():
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        return once

    return {"train": synchronised(train), "infer": synchronised(infer)}


def run_lr(args) -> float:
    from pointsup.train import lr_at

    return lr_at(0, pointsup_config("mask_rcnn", args).solver)


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One (model, variant, mode): seconds per timed step, first call, step peak memory."""

    times: list[float] = field(default_factory=list)
    first_s: float = float("nan")
    peak_mib: float | None = None
    note: str = ""  # why it was not measured

    def images_per_s(self, batch: int) -> float:
        return batch / statistics.median(self.times) if self.times else float("nan")


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def exceeded(self) -> bool:
        return self.seconds > 0 and self.elapsed() > self.seconds


def error_note(e: Exception) -> str:
    """One line: the exception's type and last message line (a child process's traceback ends
    with the error itself)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
    return f"error: {type(e).__name__}: {lines[-1][:160]}"


def step_peak_mib(once, device: torch.device) -> float | None:
    """CUDA: max_memory_allocated during one step minus what was allocated before it."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    once()
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def measure_variant(features: frozenset[str], modes: list[str], args, device: torch.device, budget: Budget,
                    cells: dict) -> None:
    """Build every model for the variant, then per mode: a first call each, warm-up, timed runs
    alternating between the models, and one step under the memory counter."""
    name = variant_name(features)
    runners = {}
    # Implicit PointRend compiles slowest (its inference most of all): last, so that a budget
    # cut leaves the Mask R-CNN vs torchvision comparison whole.
    for which in sorted(args.models, key=lambda m: m == "implicit_pointrend"):
        if budget.exceeded():
            for mode in modes:
                cells[which, name, mode] = Cell(note="skipped (budget)")
            continue
        torch.manual_seed(0)  # the same random weights whatever else is built
        try:
            runners[which] = make_runner(which, args, device, features)
        except Exception as e:  # shown in the table; the other models still run
            for mode in modes:
                cells[which, name, mode] = Cell(note=error_note(e))
    for mode in modes:
        active = {}
        for which, steps in runners.items():
            if budget.exceeded():
                cells[which, name, mode] = Cell(note="skipped (budget)")
                continue
            cell = cells[which, name, mode] = Cell()
            start = time.perf_counter()
            try:
                steps[mode]()
            except Exception as e:  # e.g. an op without a bf16 kernel: shown in the table
                cell.note = error_note(e)
                print(f"  {which:19s} {name:24s} {mode:5s} {cell.note}", flush=True)
                continue
            cell.first_s = time.perf_counter() - start
            print(f"  {which:19s} {name:24s} {mode:5s} first call {cell.first_s:7.2f} s", flush=True)
            active[which] = steps[mode]
        for _ in range(max(0, args.warmup - 1)):
            for once in active.values():
                once()
        for i in range(args.iters):
            for which, once in active.items():
                if args.warmup == 0 and i == 0:  # no warm-up: the first call is the first timed run
                    cells[which, name, mode].times.append(cells[which, name, mode].first_s)
                    continue
                start = time.perf_counter()
                once()
                cells[which, name, mode].times.append(time.perf_counter() - start)
        for which, once in active.items():
            cells[which, name, mode].peak_mib = step_peak_mib(once, device)
    del runners
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------
# DDP smoke run: 2 processes, the training loop's DDP set-up and step
# ---------------------------------------------------------------------------------------


def ddp_backend_and_devices(device: torch.device, world_size: int) -> tuple[str, list[str]]:
    """NCCL with one GPU per rank when there are enough GPUs; else gloo (CUDA tensors on the one
    GPU, or the CPU)."""
    if device.type == "cuda":
        if torch.cuda.device_count() >= world_size:
            return "nccl", [f"cuda:{r}" for r in range(world_size)]
        return "gloo", [f"cuda:{device.index or 0}"] * world_size
    return "gloo", ["cpu"] * world_size


def ddp_worker(rank: int, world_size: int, port: int, backend: str, devices: list[str], args, out_path: str) -> None:
    import torch.distributed as dist

    from pointsup.train import train_step

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    device = torch.device(devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world_size)  # before Run: training_module sees 2 ranks
    try:
        torch.manual_seed(100 + rank)  # different initial weights: DDP must start every rank from rank 0's
        features = frozenset({"compile"}) if args.ddp_compile else frozenset()
        run, module = pointsup_run(args.ddp_model, args, device, features)
        start = [p.detach().clone() for p in run.model.parameters()]  # after DDP's broadcast from rank 0
        batch, _, _ = make_batch(args, device, seed=rank)  # different data per rank: gradients must be averaged
        for it in range(args.ddp_steps):
            train_step(run, module, itertools.repeat(batch), it)
        weights = torch.cat([p.detach().float().reshape(-1) for p in run.model.parameters()])
        weights = weights if backend == "nccl" else weights.cpu()  # NCCL gathers CUDA tensors; gloo: CPU is safe
        moved = max((p.detach() - s).abs().max().item() for p, s in zip(run.model.parameters(), start))
        gathered = [torch.empty_like(weights) for _ in range(world_size)]
        dist.all_gather(gathered, weights)
        if rank == 0:
            diff = max((g - gathered[0]).abs().max().item() for g in gathered[1:])
            identical = all(torch.equal(g, gathered[0]) for g in gathered[1:])
            with open(out_path, "w") as f:
                f.write(f"{int(identical)} {diff!r} {moved!r}\n")
    finally:
        dist.destroy_process_group()


def ddp_smoke(args, device: torch.device) -> dict:
    """Spawn 2 ranks; returns backend, devices, identical (bool), max |difference|, max |change|."""
    import torch.multiprocessing as mp

    world_size = 2
    backend, devices = ddp_backend_and_devices(torch.device(args.ddp_device or args.device), world_size)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "ddp.txt")
        start = time.perf_counter()
        mp.spawn(ddp_worker, args=(world_size, port, backend, devices, args, out_path), nprocs=world_size, join=True)
        identical, diff, moved = open(out_path).read().split()
    return {"backend": backend, "devices": devices, "identical": identical == "1", "max_diff": float(diff),
            "max_change": float(moved), "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def format_table(cells: dict, args) -> str:
    """Markdown: one row per (model, variant, mode), images/s and the two ratios."""
    lines = ["| model | variant | mode | images/s | x torchvision | x own fp32 | first call s | step peak MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for mode in args.modes:
        for features in args.variants:
            name = variant_name(features)
            for which in args.models:
                cell = cells.get((which, name, mode), Cell(note="not run (stopped)"))
                if not cell.times:
                    lines.append(f"| {which} | {name} | {mode} | {cell.note or 'not run'} | - | - | - | - |")
                    continue
                ips = cell.images_per_s(args.batch)
                ratios = []
                for other in ((REFERENCE, name, mode), (which, "fp32", mode)):
                    ref = cells.get(other)
                    ratios.append(f"{ips / ref.images_per_s(args.batch):.2f}" if ref and ref.times else "-")
                peak = f"{cell.peak_mib:.0f}" if cell.peak_mib is not None else "-"
                lines.append(f"| {which} | {name} | {mode} | {ips:.2f} | {ratios[0]} | {ratios[1]} | "
                             f"{cell.first_s:.2f} | {peak} |")
    return "\n".join(lines)


def format_ddp(result: dict | None, args) -> str:
    if result is None:
        return "DDP: not run"
    if "error" in result:
        return f"DDP: FAILED ({result['error']}; --ddp-device cpu runs it with gloo on the CPU)"
    verdict = "PASSED" if result["identical"] and result["max_change"] > 0 else "FAILED"
    compiled = f", compiled ({args.compile_backend})" if args.ddp_compile else ""
    return (f"DDP: {verdict}: 2 ranks ({result['backend']}, {', '.join(result['devices'])}), {args.ddp_model}{compiled}, "
            f"{args.ddp_steps} steps in {result['seconds']:.1f} s: weights identical across ranks: "
            f"{result['identical']} (max |diff| {result['max_diff']:.3g}); max |change| from the start "
            f"{result['max_change']:.3g}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1088)
    parser.add_argument("--size", type=int, default=0, help="square input: sets --height and --width")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per cell (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per cell, the first call included "
                                                              "(0: the first call is also the first timed one)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16", "channels_last", "compile"],
                        help="fp32 or any of bf16, channels_last, compile joined with '+'")
    parser.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    parser.add_argument("--supervision", choices=["masks", "points"], default="points")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--num-objects", type=int, default=5, help="GT instances per image")
    parser.add_argument("--num-points", type=int, default=10, help="GT points per instance (pointsup)")
    parser.add_argument("--score-thresh", type=float, default=0.0, help="test score threshold of every model")
    parser.add_argument("--torchvision-as-built", action="store_true",
                        help="torchvision with the builder's trainable BN (default: FrozenBN, stem + layer1 frozen)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend; 'eager' only traces (the quick CPU test of the path)")
    parser.add_argument("--ddp-model", default="mask_rcnn", choices=list(POINTSUP_CONFIGS))
    parser.add_argument("--ddp-steps", type=int, default=3, help="optimizer steps of the DDP smoke run (0: skip it)")
    parser.add_argument("--ddp-compile", action="store_true",
                        help="DDP run with model.compile=true (DDP around the compiled module, as training does)")
    parser.add_argument("--ddp-device", default="", help="device of the DDP run ('': --device; cpu: gloo on the CPU)")
    parser.add_argument("--budget-s", type=float, default=200,
                        help="cells that would start later than this are skipped (0: no limit)")
    args = parser.parse_args(argv)
    if args.size:
        args.height = args.width = args.size
    args.variants = list(dict.fromkeys(parse_variant(v) for v in args.variants))
    if frozenset() not in args.variants:
        args.variants.insert(0, frozenset())  # fp32: every "x own fp32" ratio needs it
    if REFERENCE not in args.models:
        args.models.append(REFERENCE)
    args.threads = max(1, args.threads)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)  # an explicit index, as pointsup.utils.distributed.resolve_device gives
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} CPU thread(s)"
    print(f"bench_gpu: {gpu}, torch {torch.__version__}, batch {args.batch} x {args.height}x{args.width}, "
          f"supervision={args.supervision}, iters={args.iters} warmup={args.warmup}, "
          f"compile backend={args.compile_backend}, budget {args.budget_s:g} s", flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)  # `timeout` still gets the table of the cells done
    budget, cells, ddp = Budget(args.budget_s), {}, None
    eager = [v for v in args.variants if "compile" not in v]
    compiled = [v for v in args.variants if "compile" in v]
    try:
        for features in eager:
            measure_variant(features, args.modes, args, device, budget, cells)
        if args.ddp_steps > 0:
            try:
                ddp = ddp_smoke(args, device)
            except Exception as e:  # reported under the table; the compile cells still run
                ddp = {"error": error_note(e)}
            print(format_ddp(ddp, args), flush=True)
        for features in compiled:
            for mode in args.modes:  # all models' training first: the most wanted numbers
                measure_variant(features, [mode], args, device, budget, cells)
    except KeyboardInterrupt as e:
        print(f"stopped ({e}): the table holds the cells done so far", flush=True)
    print()
    print(format_table(cells, args))
    print()
    print(format_ddp(ddp, args) if args.ddp_steps > 0 else "DDP: skipped (--ddp-steps 0)")
    print(f"total {budget.elapsed():.0f} s", flush=True)
    ddp_ok = args.ddp_steps == 0 or (ddp is not None and ddp.get("identical") and ddp.get("max_change", 0) > 0)
    return 0 if ddp_ok else 1


if __name__ == "__main__":
    sys.exit(main())
