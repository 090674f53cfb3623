"""Detectors. `build_model(cfg, num_classes)` picks one from `cfg.model.meta_architecture`."""

from __future__ import annotations

from torch import nn

from pointsup.config import Config


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """"rcnn": Mask R-CNN / PointRend / Implicit PointRend (by cfg.model.mask_head.name);
    "condinst": CondInst (or BoxInst). Imports are lazy so one model's bugs or missing
    optional pieces never break another."""
    arch = cfg.model.meta_architecture
    if arch == "rcnn":
        from .rcnn import build_rcnn

        return build_rcnn(cfg, num_classes)
    if arch == "condinst":
        from .condinst import build_condinst

        return build_condinst(cfg, num_classes)
    raise ValueError(f"unknown model.meta_architecture {arch!r} (expected 'rcnn' or 'condinst')")
