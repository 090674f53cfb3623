"""Implicit PointRend mask head (paper sec. 4 and appendix D; Fig. 7, right).

Shape letters: N images, R RoIs (all images concatenated), K classes, C feature channels
(p2), P points per RoI, E positional-encoding channels, D generated parameters per RoI.

Instead of a coarse mask, a *parameter head* (the architecture of PointRend's coarse
head) generates for every RoI the weights of its own small MLP, the point head. The point
head maps one point to K mask logits:

    RoI features (R, C, 14, 14) from p2 -> parameter head -> params (R, D)
    point (x, y) box-relative -> Fourier encoding (E = 256) -+
    p2 features at the point (C = 256) ----------------------+-> [E + C] -> MLP_r -> K logits

The mask of object r is implicit in params[r]: the MLP can be queried at any point, so
training with point labels needs no interpolation (sec. 4), and inference renders it by
adaptive subdivision like PointRend. The loss is one point BCE plus an l2 on params.

Generated parameter layout (the reference's `ImplicitPointHead._parse_params`), for
L = num_hidden + 1 linear layers with (out_l, in_l) = (256, E + C), (256, 256), (256, 256),
(K, 256):

    params[r] = [W_0, W_1, ..., W_{L-1}, b_0, b_1, ..., b_{L-1}]     (all weights, then all biases)

where W_l is flattened row-major from shape (out_l, in_l), i.e. exactly `nn.Linear.weight`,
and b_l has shape (out_l,). The MLP input is [encoding (E), p2 features (C)] in that order.
For E = C = 256, 3 hidden layers of 256 and K = 80:

    512*256 + 256 + 256*256 + 256 + 256*256 + 256 + 256*80 + 80 = 283,472 parameters per RoI.

Initialisation: the parameter head's last layer has weights of std 0.001 (as the reference)
but its bias holds one standard MLP in this layout (the reference uses bias 0), so training
starts from a shared working point head instead of a product of near-zero layers.

Cost to keep in mind: the parameter head's last layer is Linear(1024, 283,472), about
290M weights (1.16 GB in float32), as in the reference. The generated params take
R x D x 4 bytes: 145 MB for 128 foreground proposals in training, and at inference
`inference_chunk_size` detections are rendered at a time to bound memory.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import MaskHeadConfig
from ..losses.point_losses import params_l2_loss, point_bce_loss
from ..ops.point_features import point_sample_fine_grained_features
from ..structures import InstanceTargets
from .pointrend import (
    SUPERVISIONS,
    ConvFCHead,
    gt_point_labels_from_masks,
    gt_point_targets,
    pool_roi_features,
    render_masks_in_chunks,
    square_side,
)
from .subdivision import subdivision_inference


class FourierPositionalEncoding(nn.Module):
    """Random Fourier features of box-relative points (Tancik et al. 2020, paper ref. [51]).

    gamma(p) = [sin(2 pi B q), cos(2 pi B q)] with q = 2 p - 1 in [-1, 1]^2 (relative to
    the box centre) and B a fixed (2, E/2) Gaussian matrix with std `scale`. B is a buffer:
    never trained, but saved in the state dict so a checkpoint restores the same encoding.
    """

    def __init__(self, dim: int = 256, scale: float = 1.0):
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f"positional encoding dim must be even, got {dim}")
        self.dim = dim
        self.register_buffer("gaussian_matrix", scale * torch.randn(2, dim // 2), persistent=True)

    def forward(self, coords_box: Tensor) -> Tensor:
        """(R, P, 2) box-relative -> (R, P, E)."""
        q = 2.0 * coords_box - 1.0  # centre the box at 0
        proj = 2.0 * math.pi * (q.to(self.gaussian_matrix.dtype) @ self.gaussian_matrix)  # (R, P, E/2)
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


class ImplicitPointHead(nn.Module):
    """The per-instance MLP point head. It learns nothing itself: its weights come from
    the parameter head (layout in the module docstring); it owns only the fixed encoding.
    """

    def __init__(
        self,
        feature_channels: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_hidden: int = 3,
        encoding_dim: int = 256,
        encoding_scale: float = 1.0,
    ):
        super().__init__()
        if num_hidden < 1:
            raise ValueError(f"num_hidden must be >= 1, got {num_hidden}")
        self.encoding = FourierPositionalEncoding(encoding_dim, encoding_scale)
        self.in_dim = encoding_dim + feature_channels
        self.num_classes = num_classes
        dims = [self.in_dim] + [hidden_dim] * num_hidden + [num_classes]
        self.layer_shapes = [(dims[l + 1], dims[l]) for l in range(len(dims) - 1)]  # (out_l, in_l)
        self.num_params = sum(o * i + o for o, i in self.layer_shapes)

    def standard_init_params(self) -> Tensor:
        """(D,) one ordinary MLP in the parameter layout: weights drawn like detectron2's
        c2_xavier_fill (uniform, variance 1 / fan_in), biases 0."""
        weights = [nn.init.kaiming_uniform_(torch.empty(o, i), a=1).flatten() for o, i in self.layer_shapes]
        biases = [torch.zeros(o) for o, _ in self.layer_shapes]
        return torch.cat(weights + biases)

    def split_params(self, params: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """params (R, D) -> weights [(R, out_l, in_l)], biases [(R, out_l)], per the layout."""
        R, D = params.shape
        if D != self.num_params:
            raise ValueError(f"expected {self.num_params} parameters per RoI, got {D}")
        sizes = [o * i for o, i in self.layer_shapes] + [o for o, _ in self.layer_shapes]
        chunks = params.split(sizes, dim=1)
        L = len(self.layer_shapes)
        weights = [w.reshape(R, o, i) for w, (o, i) in zip(chunks[:L], self.layer_shapes)]
        biases = list(chunks[L:])
        return weights, biases

    def forward(self, params: Tensor, fine_features: Tensor, coords_box: Tensor, classes: Tensor | None = None) -> Tensor:
        """Evaluate each RoI's MLP at its points.

        params (R, D), fine_features (R, C, P) p2 features, coords_box (R, P, 2).
        classes: (R,) to evaluate only that class's output (the last layer is cut to one
        row first, saving K - 1 outputs), or None for all K.
        returns (R, K, P) logits, or (R, 1, P) when classes are given.
        """
        x = torch.cat([self.encoding(coords_box).to(fine_features.dtype), fine_features.transpose(1, 2)], dim=2)  # (R, P, E+C)
        weights, biases = self.split_params(params.to(x.dtype))
        if classes is not None and self.num_classes > 1:
            rows = torch.arange(len(classes), device=classes.device)
            weights[-1] = weights[-1][rows, classes].unsqueeze(1)  # (R, 1, hidden)
            biases[-1] = biases[-1][rows, classes].unsqueeze(1)  # (R, 1)
        return dynamic_mlp(x, weights, biases).transpose(1, 2)


def dynamic_mlp(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
    """A different MLP per RoI as batched matmuls: x (R, P, in) -> (R, P, out).

    Layer l: x <- x @ W_l^T + b_l (ReLU on all but the last), W_l (R, out, in), b_l (R, out).
    """
    for l, (w, b) in enumerate(zip(weights, biases)):
        x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))  # (R, P, out_l)
        if l < len(weights) - 1:
            x = x.relu()
    return x


class ImplicitPointRendMaskHead(nn.Module):
    """Parameter head + implicit point head; the mask-head contract of docs/DESIGN.md.

    Training returns {"loss_mask_point": point BCE, "loss_params_l2": l2 on params};
    eval returns per image (R_i, 224, 224) mask probabilities of the given classes.
    """

    def __init__(
        self,
        parameter_head: ConvFCHead,
        point_head: ImplicitPointHead,
        in_feature: str = "p2",
        stride: int = 4,
        pooler_resolution: int = 14,
        supervision: str = "masks",
        train_num_points: int = 14 * 14,
        params_l2_weight: float = 1e-5,
        subdivision_steps: int = 3,
        subdivision_num_points: int = 28 * 28,
        inference_chunk_size: int = 32,
        init_params_as_mlp: bool = True,
    ):
        super().__init__()
        if supervision not in SUPERVISIONS:
            raise ValueError(f"supervision must be one of {SUPERVISIONS}, got {supervision!r}")
        if init_params_as_mlp:
            # Deviation from the reference, which starts every generated parameter near 0
            # (prediction weight std 0.001, bias 0): a product of 4 near-zero layers passes
            # almost no gradient, and on short schedules with SGD the head then only learns
            # its output bias. Starting the bias at one properly initialised MLP makes every
            # RoI begin with a working shared MLP; the small weights learn the per-instance part.
            with torch.no_grad():
                parameter_head.prediction.bias.copy_(point_head.standard_init_params())
        self.parameter_head = parameter_head
        self.point_head = point_head
        self.in_feature = in_feature
        self.stride = stride
        self.pooler_resolution = pooler_resolution
        self.supervision = supervision
        self.train_num_points = train_num_points
        self.params_l2_weight = params_l2_weight
        self.subdivision_steps = subdivision_steps
        self.subdivision_num_points = subdivision_num_points
        self.subdivision_init_resolution = square_side(subdivision_num_points)
        self.inference_chunk_size = inference_chunk_size

    def forward(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        classes: list[Tensor],
        targets: list[InstanceTargets] | None = None,
        matched_idxs: list[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[Tensor]:
        fine = features[self.in_feature]  # (N, C, H/stride, W/stride)
        if not self.training:
            return render_masks_in_chunks(self.predict_masks, fine, boxes, classes, self.inference_chunk_size)
        if targets is None or matched_idxs is None:
            raise ValueError("training needs targets and matched_idxs")

        params = self.generate_params(fine, boxes)  # (R, D)
        if self.supervision == "masks":
            # Sec. 4: uniform points suffice; no importance sampling needed.
            R = params.shape[0]
            coords_box = torch.rand(R, self.train_num_points, 2, device=fine.device)  # (R, P, 2)
            with torch.no_grad():
                gt_labels = gt_point_labels_from_masks(boxes, targets, matched_idxs, coords_box)  # (R, P)
        else:
            coords_box, gt_labels = gt_point_targets(boxes, targets, matched_idxs)  # (R, P, 2), (R, P)

        point_logits = self.point_logits(fine, boxes, params, coords_box, torch.cat(classes))  # (R, P)
        return {
            "loss_mask_point": point_bce_loss(point_logits, gt_labels),
            "loss_params_l2": params_l2_loss(params, self.params_l2_weight),
        }

    def generate_params(self, fine: Tensor, boxes: list[Tensor]) -> Tensor:
        """(R, D) point-head parameters from 14 x 14 p2 RoI features."""
        roi_features = pool_roi_features(fine, self.stride, boxes, self.pooler_resolution)  # (R, C, 14, 14)
        return self.parameter_head(roi_features)

    def point_logits(self, fine: Tensor, boxes: list[Tensor], params: Tensor, coords_box: Tensor, classes: Tensor) -> Tensor:
        """Each RoI's MLP at its box-relative points (R, P, 2) -> (R, P) logits of its class."""
        fine_features = point_sample_fine_grained_features(fine, self.stride, boxes, coords_box)  # (R, C, P)
        return self.point_head(params, fine_features, coords_box, classes)[:, 0]

    def predict_masks(self, fine: Tensor, boxes: Tensor, classes: Tensor) -> Tensor:
        """One image's detections: fine (1, C, h, w), boxes (R, 4), classes (R,) -> (R, 224, 224) probs."""
        params = self.generate_params(fine, [boxes])  # (R, D)
        mask_logits = subdivision_inference(
            lambda coords_box: self.point_logits(fine, [boxes], params, coords_box, classes),
            len(boxes), self.subdivision_init_resolution, self.subdivision_steps,
            self.subdivision_num_points, device=fine.device,
        )
        return mask_logits.sigmoid()


def build_implicit_pointrend_head(
    cfg: MaskHeadConfig, num_classes: int, in_channels: int, strides: dict[str, int]
) -> ImplicitPointRendMaskHead:
    point_head = ImplicitPointHead(
        feature_channels=in_channels,
        num_classes=num_classes,
        hidden_dim=cfg.point_head_dim,
        num_hidden=cfg.point_head_num_fc,
        encoding_dim=cfg.positional_encoding_dim,
        encoding_scale=cfg.positional_encoding_scale,
    )
    # Sec. 4.3: "the same architecture as the coarse mask head of PointRend".
    parameter_head = ConvFCHead(
        in_channels=in_channels,
        in_resolution=cfg.pooler_resolution,
        conv_dim=cfg.conv_dim,
        fc_dim=cfg.coarse_fc_dim,
        num_fc=cfg.coarse_num_fc,
        out_dim=point_head.num_params,
    )
    return ImplicitPointRendMaskHead(
        parameter_head,
        point_head,
        in_feature=cfg.in_feature,
        stride=strides[cfg.in_feature],
        pooler_resolution=cfg.pooler_resolution,
        supervision=cfg.supervision,
        train_num_points=cfg.train_num_points,
        params_l2_weight=cfg.params_l2_weight,
        subdivision_steps=cfg.subdivision_steps,
        subdivision_num_points=cfg.subdivision_num_points,
    )
