"""Feature Pyramid Network (Lin et al., 2017) on top of ResNet stages C2..C5.

Shape letters: N images, C channels; level l has stride 2**l, so a (N, 3, H, W) input
gives (N, C, H / 2**l, W / 2**l) maps (rounded up by the convs' padding).

    top_block="maxpool"  (R-CNN family)   C2..C5 -> P2..P5, P6 = max_pool(P5, kernel 1, stride 2)
    top_block="p6p7"     (FCOS / CondInst) C3..C5 -> P3..P5, P6 = conv3x3/2(P5), P7 = conv3x3/2(relu(P6))

Module names follow detectron2's FPN loosely: `lateral_convs[i]` / `output_convs[i]` are
(conv, norm) pairs listed from the finest input level to the coarsest.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pointsup.models.norm import conv_norm, get_norm


def c2_xavier_fill(conv: nn.Conv2d) -> None:
    """Caffe2's "XavierFill" as used by detectron2's FPN: kaiming-uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> nn.Sequential:
    # A conv followed by a norm does not need a bias (the norm has its own shift).
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm == "")
    c2_xavier_fill(conv)
    return nn.Sequential(conv, get_norm(norm, out_channels))


class FPN(nn.Module):
    """Top-down pyramid with lateral connections.

    in_channels: {"c3": 512, "c4": 1024, ...} (the level is the number after "c"), or a list
        of channel counts from finest to coarsest whose last entry is C5.
    out_channels: channels of every output map (256 in the paper).
    norm: norm after each FPN conv ("" or "GN").
    top_block: "maxpool" (adds P6 by subsampling P5) or "p6p7" (adds P6, P7 by strided convs).

    Attributes: out_channels (int), strides {"p2": 4, ...} of the outputs.
    """

    def __init__(
        self,
        in_channels: dict[str, int] | list[int],
        out_channels: int = 256,
        norm: str = "",
        top_block: str = "maxpool",
    ) -> None:
        super().__init__()
        if isinstance(in_channels, (list, tuple)):
            first = 6 - len(in_channels)  # the list ends at C5
            in_channels = {f"c{first + i}": c for i, c in enumerate(in_channels)}
        if top_block not in ("maxpool", "p6p7"):
            raise ValueError(f"top_block must be 'maxpool' or 'p6p7', got {top_block!r}")
        self.in_features = sorted(in_channels, key=lambda name: int(name[1:]))  # finest first
        self.lateral_convs = nn.ModuleList(_conv_norm(in_channels[n], out_channels, 1, norm) for n in self.in_features)
        self.output_convs = nn.ModuleList(_conv_norm(out_channels, out_channels, 3, norm) for _ in self.in_features)

        self.top_block = top_block
        if top_block == "p6p7":
            self.p6 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
            self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
            c2_xavier_fill(self.p6)
            c2_xavier_fill(self.p7)

        levels = [int(name[1:]) for name in self.in_features]
        levels += [levels[-1] + 1] if top_block == "maxpool" else [levels[-1] + 1, levels[-1] + 2]
        self.out_channels = out_channels
        self.strides = {f"p{level}": 2**level for level in levels}

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """features {"c2": (N, C2, H/4, W/4), ...} -> {"p2": (N, out_channels, H/4, W/4), ...}."""
        outputs: list[Tensor] = []
        top_down = None  # the merged map of the level above, before its 3x3 output conv
        for i in reversed(range(len(self.in_features))):
            lateral = conv_norm(*self.lateral_convs[i], features[self.in_features[i]])
            if top_down is not None:
                # Nearest 2x upsampling; `size=` (not scale_factor=2) so sizes not divisible
                # by the coarsest stride still line up with the lateral map.
                lateral += F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")  # in place: no new map
            top_down = lateral
            outputs.insert(0, conv_norm(*self.output_convs[i], lateral))

        if self.top_block == "maxpool":
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        else:
            p6 = self.p6(outputs[-1])
            outputs += [p6, self.p7(F.relu(p6))]
        return dict(zip(self.strides, outputs))
