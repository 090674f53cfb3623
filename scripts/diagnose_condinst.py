"""Why point-supervised CondInst did not learn: the controller's effective LR factor.

CondInst's controller (a 3x3 conv on the box tower) generates the mask head of location q
as params_q = W h_q + b, h_q the 3x3 patch of tower features. One SGD step moves them by
-lr * sum_s g_s (h_s . h_q + 1): the generated mask heads train at about lr * (1 + |h|^2).

This script fits one fixed batch of the built-in data (4 images, no point augmentation, so
the target does not change) for `--steps` SGD steps at the config's LR, once per
controller-LR multiplier, and prints the mean |h|^2 of the controller's input patches and
the point loss along the way:

    python scripts/diagnose_condinst.py --set model.condinst.controller_feature_norm=false
    python scripts/diagnose_condinst.py                     # the default: feature_norm=true

Measured (2b15100, one thread): with AdelaiDet's controller (false) |h|^2 is 120-280 and
the point loss oscillates (0.62 over the last 5 of 60 steps, a spike to 1.7) at the config
LR, but falls to 0.17 with the controller's LR divided by 100; with the default (true), to 0.12.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from pointsup import train
from pointsup.config import load_config
from pointsup.data.collate import collate
from pointsup.models import build_model


def fit_one_batch(cfg, batch, num_classes: int, controller_lr_scale: float, steps: int, seed: int) -> tuple[list[float], list[float]]:
    """SGD (momentum 0.9) on one batch -> (point loss per step, mean |h|^2 per step)."""
    torch.manual_seed(seed)
    model = build_model(cfg, num_classes).train()
    patch_sq: list[float] = []
    model.controller.register_forward_pre_hook(
        lambda module, inputs: patch_sq.append(F.unfold(inputs[0].detach(), 3, padding=1).pow(2).sum(1).mean().item()))
    controller = {id(p) for p in model.controller.parameters()}
    lr = train.scaled_base_lr(cfg.solver)
    optimizer = torch.optim.SGD([
        {"params": [p for p in model.parameters() if id(p) not in controller], "lr": lr},
        {"params": list(model.controller.parameters()), "lr": lr * controller_lr_scale},
    ], momentum=0.9)
    point_loss = []
    for _ in range(steps):
        losses = model(batch.images, batch.image_sizes, batch.targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        point_loss.append(losses["loss_mask"].item())
    return point_loss, patch_sq


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/synthetic/condinst_P10.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--controller-lr-scales", type=float, nargs="+", default=[1.0, 0.01])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set + ["data.point_aug=false"])
    if cfg.model.meta_architecture != "condinst" or cfg.model.mask_head.supervision != "points":
        raise SystemExit(f"{args.config}: needs a point-supervised CondInst config")
    train_set, _ = train.build_datasets(cfg)
    batch = collate([train_set[i] for i in range(4)], size_divisibility=32)
    print(f"controller_feature_norm={cfg.model.condinst.controller_feature_norm} lr={train.scaled_base_lr(cfg.solver)}")
    for scale in args.controller_lr_scales:
        point_loss, patch_sq = fit_one_batch(cfg, batch, train_set.num_classes, scale, args.steps, args.seed)
        print(f"controller LR x{scale}: |h|^2 first {patch_sq[0]:.0f}, last {patch_sq[-1]:.0f}; point loss every 5 steps: "
              + " ".join(f"{v:.3f}" for v in point_loss[::5])
              + f"; max {max(point_loss):.3f}, mean of the last 5 {sum(point_loss[-5:]) / 5:.3f}")


if __name__ == "__main__":
    main()
