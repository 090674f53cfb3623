"""Normalisation layers for the backbone and FPN, chosen by a config string.

    "FrozenBN"  BatchNorm with fixed statistics and affine terms (buffers, not parameters).
                detectron2's default for ImageNet-initialised backbones: detection batches
                are too small (2 images per GPU) to estimate BN statistics well.
    "BN"        torch.nn.BatchNorm2d, statistics of the local batch.
    "SyncBN"    torch.nn.SyncBatchNorm: statistics over all processes. It only synchronises
                when torch.distributed is initialised (i.e. under DDP on GPUs); otherwise it
                behaves exactly like "BN".
    "GN"        GroupNorm with 32 groups (num_channels must be divisible by 32).
    ""          no normalisation (nn.Identity); the conv before it should then have a bias.
"""

from __future__ import annotations

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

NORMS = ("FrozenBN", "BN", "SyncBN", "GN", "")


def get_norm(name: str, num_channels: int) -> nn.Module:
    """A normalisation layer over `num_channels` channels of (N, C, H, W) inputs."""
    if name == "FrozenBN":
        return FrozenBatchNorm2d(num_channels, eps=1e-5)
    if name == "BN":
        return nn.BatchNorm2d(num_channels)
    if name == "SyncBN":
        return nn.SyncBatchNorm(num_channels)
    if name == "GN":
        return nn.GroupNorm(32, num_channels)
    if name == "":
        return nn.Identity()
    raise ValueError(f"unknown norm {name!r}; expected one of {NORMS}")


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d / SyncBatchNorm inside `module` by a FrozenBatchNorm2d.

    The current running statistics and affine terms are copied, so a model in eval mode
    computes the same output before and after. Returns the converted module (a new object
    when `module` itself is a BatchNorm; otherwise `module`, changed in place).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        tensors = [*module.parameters(), *module.buffers()]
        return frozen.to(tensors[0].device) if tensors else frozen
    for name, child in module.named_children():
        new_child = convert_frozen_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
