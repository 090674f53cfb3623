"""DDP on CPU (gloo, 2 processes): identical parameters across ranks, same loss as 1 process."""

import json
import os
import socket

import torch
import torch.multiprocessing as mp

from pointsup.data.coco import CocoInstanceDataset
from pointsup.evaluation import evaluate_coco
from pointsup.utils import distributed as dist_utils

from .fakes import OracleModel, TinyDetector, make_tiny_coco, tiny_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(out_dir: str, json_path: str, image_dir: str, accumulate_steps: int) -> None:
    """One training run of 3 steps with 2 images per step in total; saves the final weights."""
    from pointsup.train import main

    cfg = tiny_config(out_dir, max_iter=3, ims_per_batch=2, accumulate_steps=accumulate_steps)
    dataset = CocoInstanceDataset(json_path, image_dir, transforms=None, use_masks=False)
    val_set = CocoInstanceDataset(json_path, image_dir, transforms=None, use_masks=False, use_points=False)
    torch.manual_seed(123)
    model = TinyDetector()
    if dist_utils.get_rank() == 1:
        with torch.no_grad():  # rank 1 starts elsewhere: DDP must broadcast rank 0's weights
            model.box.weight.add_(1.0)
    main(cfg, model=model, train_set=dataset, val_set=val_set)  # eval: sharded, gathered
    torch.save(model.state_dict(), os.path.join(out_dir, f"weights_rank{dist_utils.get_rank()}.pt"))
    # The oracle scores AP 100 only if rank 0 gathered the predictions of both shards.
    oracle = evaluate_coco(OracleModel(json_path, val_set.contiguous_to_category_id), val_set)
    if dist_utils.get_rank() == 0:
        with open(os.path.join(out_dir, "oracle.json"), "w") as f:
            json.dump(oracle, f)


def ddp_worker(rank: int, world_size: int, port: int, *args) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        run(*args)
    finally:
        dist_utils.destroy_distributed()


def first_losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [r["total_loss"] for r in map(json.loads, f) if "total_loss" in r]


def test_two_process_gloo_matches_single_process(tmp_path):
    json_path = make_tiny_coco(str(tmp_path / "coco"), num_images=6, size=64)
    image_dir = str(tmp_path / "coco" / "images")
    single, ddp = str(tmp_path / "single"), str(tmp_path / "ddp")
    run(single, json_path, image_dir, 1)
    # accumulate_steps=1 with 2 processes: one image per process and step (the same 2 images).
    mp.spawn(ddp_worker, args=(2, free_port(), ddp, json_path, image_dir, 1), nprocs=2, join=True)

    rank0 = torch.load(os.path.join(ddp, "weights_rank0.pt"))
    rank1 = torch.load(os.path.join(ddp, "weights_rank1.pt"))
    reference = torch.load(os.path.join(single, "weights_rank0.pt"))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], reference[name], rtol=1e-5, atol=1e-6, msg=name)
    ddp_losses, single_losses = first_losses(ddp), first_losses(single)
    assert len(ddp_losses) == 3
    torch.testing.assert_close(torch.tensor(ddp_losses[0]), torch.tensor(single_losses[0]), rtol=1e-6, atol=1e-7)
    # evaluation: each rank ran half of the images, rank 0 gathered them -> the same AP
    with open(os.path.join(ddp, "metrics.json")) as f, open(os.path.join(single, "metrics.json")) as g:
        ddp_metrics, single_metrics = json.load(f), json.load(g)
    for task in ("bbox", "segm"):
        assert abs(ddp_metrics[task]["AP"] - single_metrics[task]["AP"]) < 1e-3
        with open(os.path.join(ddp, "oracle.json")) as f:
            assert json.load(f)[task]["AP"] == 100.0
