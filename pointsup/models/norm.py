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

`conv_norm(conv, norm, x)` computes norm(conv(x)). A FrozenBatchNorm2d is an affine map per
channel, so it is folded into the conv instead (one pass over the activations fewer, in
forward and backward): the parameters and the state dict stay as they are, only the
arithmetic changes (equal up to float rounding). Its convolution runs through `conv2d`, which
puts float32 CPU convs that record no gradient on oneDNN (see there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
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


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    """norm(conv(x)); a FrozenBatchNorm2d `norm` is folded into the conv's weight and bias.

    FrozenBN computes y * scale + shift per channel (scale = weight / sqrt(running_var + eps),
    shift = bias - running_mean * scale), so conv followed by it is one conv with weight
    W * scale and bias b * scale + shift.

    A conv that is being trained is not folded: autograd would keep the folded weight of
    every such conv for the backward pass, one more copy of the trainable weights (R50-FPN
    Mask R-CNN training step at 512 px: peak memory 1.05x torchvision's folded, 0.95x not;
    step time the same within noise; docs/PERFORMANCE.md).
    """
    if conv.padding_mode != "zeros":
        return norm(conv(x))
    if not isinstance(norm, FrozenBatchNorm2d) or _needs_grad((conv.weight, conv.bias)):
        return norm(conv2d(x, conv.weight, conv.bias, conv))
    weight, bias = folded_conv_weights(conv, norm)
    return conv2d(x, weight, bias, conv)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, conv: nn.Conv2d) -> Tensor:
    """F.conv2d(x, weight, bias) with `conv`'s stride, padding, dilation and groups.

    When no gradient is recorded (inference, frozen stages), a float32 CPU conv always runs
    oneDNN's convolution. PyTorch's own choice sends a 1x1, stride-1 conv of a batch under
    16 to its generic im2col kernel when it runs on one thread, which for channels-last
    activations (the backbone's layout on CPU) also copies them to the plain layout and
    back: ResNet-50's trunk at 512 px on one thread took 1.7x the time (docs/PERFORMANCE.md).
    With two or more threads PyTorch picks oneDNN itself, so this only changes the
    one-thread case, and there only by float rounding. Convs being trained keep PyTorch's
    choice: on oneDNN the training step was 3% faster but its peak memory 4% higher.
    """
    if _runs_on_onednn(x, weight, conv) and not _needs_grad((x, weight, bias)):
        return torch.mkldnn_convolution(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _runs_on_onednn(x: Tensor, weight: Tensor, conv: nn.Conv2d) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.dim() == 4
        and isinstance(conv.padding, tuple)  # not "same" / "valid"
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")  # autocast casts F.conv2d's inputs, not this op's
        and not _tracing_or_compiling()
    )


def _needs_grad(tensors: tuple[Tensor | None, ...]) -> bool:
    """Autograd records an op on these tensors (grad mode on and one of them trainable)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def folded_conv_weights(conv: nn.Conv2d, norm: FrozenBatchNorm2d) -> tuple[Tensor, Tensor]:
    """The (weight (C_out, C_in/groups, k, k), bias (C_out,)) of conv followed by `norm`.

    When no gradient is needed (no_grad / inference, or a frozen conv) the result is cached
    on the conv and reused while none of the tensors it was computed from has changed:
    in-place updates (optimizer steps, load_state_dict) bump a tensor's `_version`, and
    `.to()` / `.half()` give new storage. Tracing and compiling never use the cache.
    """
    sources = (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
    if _needs_grad(sources) or not _cacheable(sources):
        return _fold(conv, norm)
    key = tuple((t.data_ptr(), t._version, t.dtype, t.device) if t is not None else None for t in sources)
    cached = conv.__dict__.get("_folded_frozen_bn")
    if cached is None or cached[0] != key:
        # Plain tensors even inside torch.inference_mode, so a later autograd run can use them.
        with torch.inference_mode(False), torch.no_grad():
            cached = (key, *_fold(conv, norm))
        conv.__dict__["_folded_frozen_bn"] = cached  # a plain attribute: not in the state dict
    return cached[1], cached[2]


def _fold(conv: nn.Conv2d, norm: FrozenBatchNorm2d) -> tuple[Tensor, Tensor]:
    # The same arithmetic as FrozenBatchNorm2d.forward (torchvision), applied to the weights.
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # (C_out,)
    shift = norm.bias - norm.running_mean * scale
    weight = conv.weight * scale.to(conv.weight.dtype).view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return weight, bias.to(conv.weight.dtype)


def _cacheable(tensors: tuple[Tensor | None, ...]) -> bool:
    """Real tensors outside tracing / compiling (fake or functional tensors have no storage)."""
    if _tracing_or_compiling():
        return False
    return all(t is None or type(t) in (Tensor, nn.Parameter) for t in tensors)


def _tracing_or_compiling() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling() or torch.compiler.is_exporting()
