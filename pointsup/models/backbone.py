"""ResNet / ResNeXt backbones (He et al., 2016; Xie et al., 2017) and the ResNet-FPN builder.

Shape letters: N images, H x W the (padded) input size. Stage outputs:

    "c2" (N, C2, H/4,  W/4)    layer1
    "c3" (N, C3, H/8,  W/8)    layer2
    "c4" (N, C4, H/16, W/16)   layer3
    "c5" (N, C5, H/32, W/32)   layer4

Module names are exactly torchvision's (`torchvision.models.resnet`), so a torchvision ImageNet
state dict maps onto `ResNet` by the identity on keys (only `fc.*` is dropped):

    stem         conv1, bn1 (7x7 conv stride 2, norm, ReLU, 3x3 max-pool stride 2)
    stages       layer1 .. layer4 (= detectron2's res2 .. res5), blocks layerK.<i>
    block        conv1/bn1, conv2/bn2[, conv3/bn3], downsample.0 (1x1 conv) / downsample.1 (norm)

`bnK` holds whichever norm is configured (FrozenBN, BN, SyncBN, GN); the name is kept for the
key mapping. FrozenBatchNorm2d has no `num_batches_tracked`; the loader ignores that key.

torchvision's ImageNet weights expect RGB inputs normalised with the ImageNet mean/std (the
pointsup defaults `model.pixel_mean` / `pixel_std`) and the stride in the 3x3 conv
(`stride_in_1x1=False`). MSRA/detectron2 weights (BGR, stride in the 1x1) are not supported
by `load_torchvision_resnet` (`pointsup.weights.load_weights` maps them onto a whole model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from pointsup.config import BackboneConfig
from pointsup.models.fpn import FPN
from pointsup.models.norm import conv_norm, convert_frozen_batchnorm, get_norm
from pointsup.weights import load_weights


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = norm == ""
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = get_norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.bn2 = get_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else conv_norm(self.downsample[0], self.downsample[1], x)
        out = self.relu(conv_norm(self.conv1, self.bn1, x))
        out = conv_norm(self.conv2, self.bn2, out)
        out += identity  # in place: see Bottleneck
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (grouped for ResNeXt) -> 1x1 expand (ResNet-50/101, ResNeXt).

    bottleneck_channels: width of the 3x3 conv (ResNet-50 layer1: 64; ResNeXt 32x8d: 32 * 8).
    stride_in_1x1: put the stride in the first 1x1 conv (original MSRA / detectron2 weights)
    instead of the 3x3 conv (torchvision's "ResNet v1.5", slightly more accurate).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm: str,
        bottleneck_channels: int,
        groups: int = 1,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        bias = norm == ""
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, 1, stride=stride_1x1, bias=bias)
        self.bn1 = get_norm(norm, bottleneck_channels)
        self.conv2 = nn.Conv2d(
            bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, padding=1, groups=groups, bias=bias
        )
        self.bn2 = get_norm(norm, bottleneck_channels)
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, 1, bias=bias)
        self.bn3 = get_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        # conv_norm(conv, bn, x) = bn(conv(x)), with a FrozenBN folded into the conv (norm.py).
        identity = x if self.downsample is None else conv_norm(self.downsample[0], self.downsample[1], x)
        out = self.relu(conv_norm(self.conv1, self.bn1, x))
        out = self.relu(conv_norm(self.conv2, self.bn2, out))
        out = conv_norm(self.conv3, self.bn3, out)
        # In place: `out + identity` allocates a new map per block (16 MB in res2 at 512 px);
        # one profile put such an add at ~16 ms (R50-FPN inference, 1 thread), though the
        # end-to-end gain was within noise (docs/PERFORMANCE.md). Bit-identical, less memory;
        # no backward needs the sum's input.
        out += identity
        return self.relu(out)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Sequential | None:
    """Projection shortcut (1x1 conv + norm) when the shape changes, else None (identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=norm == "")
    return nn.Sequential(conv, get_norm(norm, out_channels))


# depth -> (block type, number of blocks in layer1..layer4)
_ARCHS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet / ResNeXt trunk returning C2..C5.

    depth: 18, 34 (BasicBlock), 50, 101, 152 (Bottleneck).
    groups, width_per_group: ResNeXt cardinality and per-group width of the first stage's
        3x3 convs (ResNeXt-101 32x8d: groups=32, width_per_group=8; plain ResNet: 1, 64).
    norm: "FrozenBN", "BN", "SyncBN", "GN" or "" (see `pointsup.models.norm`).
    freeze_at: detectron2's convention. 0 trains everything, 1 freezes the stem, 2 the stem
        and layer1 (res2), ..., 5 the whole trunk. Frozen stages get requires_grad=False and
        their BatchNorms become FrozenBatchNorm2d, so model.train() cannot change them.
    stride_in_1x1: see `Bottleneck` (ignored by BasicBlock). False for torchvision weights.
    zero_init_residual: start each block's last norm at weight 0, so every residual branch
        begins as the identity (Goyal et al., 2017). Off by default, as in torchvision.

    forward(x (N, 3, H, W) normalised RGB) -> {"c2", "c3", "c4", "c5"} at strides 4..32.
    Attribute out_channels: {"c2": 256, ..., "c5": 2048} (64 .. 512 for depth 18/34).
    """

    def __init__(
        self,
        depth: int,
        groups: int = 1,
        width_per_group: int = 64,
        norm: str = "FrozenBN",
        freeze_at: int = 2,
        stride_in_1x1: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth not in _ARCHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_ARCHS)}, got {depth}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        block, num_blocks = _ARCHS[depth]
        if block is BasicBlock and (groups != 1 or width_per_group != 64):
            raise ValueError("ResNet-18/34 (BasicBlock) only support groups=1, width_per_group=64")

        # Stem: 4x downsampling before layer1.
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=norm == "")
        self.bn1 = get_norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_channels = 64
        self.out_channels: dict[str, int] = {}
        for i, n in enumerate(num_blocks):
            base = 64 * 2**i  # torchvision's `planes`
            out_channels = base * block.expansion
            extra = {}
            if block is Bottleneck:
                bottleneck_channels = int(base * width_per_group / 64) * groups  # as torchvision
                extra = dict(bottleneck_channels=bottleneck_channels, groups=groups, stride_in_1x1=stride_in_1x1)
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1  # layer1 is already at stride 4 (max-pool)
                blocks.append(block(in_channels, out_channels, stride, norm, **extra))
                in_channels = out_channels
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels[f"c{i + 2}"] = out_channels

        self._init_weights(zero_init_residual)
        self.freeze(freeze_at)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, FrozenBatchNorm2d)):
                nn.init.ones_(m.weight)  # a buffer for FrozenBN, a parameter otherwise
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last_norm = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if last_norm is not None and not isinstance(last_norm, nn.Identity):
                    nn.init.zeros_(last_norm.weight)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (freeze_at >= 1) and layer1..layer{freeze_at - 1}; never unfreezes."""
        stages = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
        for names in stages[:freeze_at]:
            for name in names:
                module = convert_frozen_batchnorm(getattr(self, name))
                setattr(self, name, module)
                for p in module.parameters():
                    p.requires_grad_(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x (N, 3, H, W) normalised RGB -> {"c2": (N, C2, H/4, W/4), ..., "c5": (N, C5, H/32, W/32)}."""
        x = self.maxpool(self.relu(conv_norm(self.conv1, self.bn1, x)))  # (N, 64, H/4, W/4)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return {"c2": c2, "c3": c3, "c4": c4, "c5": c5}


def load_torchvision_resnet(model: ResNet, path: str) -> None:
    """Load a torchvision ImageNet ResNet/ResNeXt state dict (a local .pth file) into `model`.

    Keys map one to one (see the module docstring); `fc.*` is dropped and `num_batches_tracked`
    is ignored (FrozenBatchNorm2d has none). The file is read and checked by
    `pointsup.weights.load_weights`, the one loader of weight files: a ValueError
    (`WeightsLoadError`) names every missing or unexpected key and every shape mismatch, e.g.
    when depth/groups/width do not match the file.
    Inputs must then be RGB normalised with the ImageNet mean/std, and stride_in_1x1=False.
    """
    load_weights(model, path, source="torchvision_resnet", verbose=False)


class ResNetFPN(nn.Module):
    """ResNet trunk + FPN: normalised images (N, 3, H, W) -> {"p2": (N, C, H/4, W/4), ...}.

    Attributes: out_channels (int, the FPN width), strides {"p2": 4, ..., "p6": 64}
    (or {"p3": 8, ..., "p7": 128} with the "p6p7" top block).
    """

    def __init__(self, bottom_up: ResNet, fpn: FPN) -> None:
        super().__init__()
        self.bottom_up = bottom_up
        self.fpn = fpn
        self.out_channels = fpn.out_channels
        self.strides = dict(fpn.strides)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.device.type == "cpu":
            # oneDNN's convolutions are faster on channels-last (N, H, W, C) memory on CPU
            # (measured in docs/PERFORMANCE.md); the values and shapes are the same, and every
            # later conv keeps the layout.
            images = images.contiguous(memory_format=torch.channels_last)
        return self.fpn(self.bottom_up(images))


def build_backbone(cfg: BackboneConfig, top_block: str = "maxpool") -> ResNetFPN:
    """ResNet-FPN from the config; loads `cfg.weights` (torchvision state dict) when given.

    top_block "maxpool" -> P2..P6 (R-CNN family); "p6p7" -> P3..P7 from C3..C5 (CondInst).
    """
    resnet = ResNet(
        depth=cfg.depth,
        groups=cfg.groups,
        width_per_group=cfg.width_per_group,
        norm=cfg.norm,
        freeze_at=cfg.freeze_at,
        stride_in_1x1=cfg.stride_in_1x1,
    )
    if cfg.weights:
        load_torchvision_resnet(resnet, cfg.weights)
    in_features = ["c2", "c3", "c4", "c5"] if top_block == "maxpool" else ["c3", "c4", "c5"]
    fpn = FPN(
        {name: resnet.out_channels[name] for name in in_features},
        out_channels=cfg.fpn_channels,
        norm=cfg.fpn_norm,
        top_block=top_block,
    )
    return ResNetFPN(resnet, fpn)
