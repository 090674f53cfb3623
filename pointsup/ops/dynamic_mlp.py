"""Dynamic MLPs: a different small MLP per instance, whose weights are an input.

Two models generate a network per instance with another network, then run it on that
instance's points:

  Implicit PointRend (paper sec. 4): the parameter head generates each RoI's point head,
      run on its box-relative points (positional encoding + p2 features);
  CondInst: the controller generates each location's mask FCN (1x1 convs), run on every
      pixel of the stride-8 mask features (relative coordinates + features).

A 1x1 conv and a linear layer applied per point are the same matrix product, so both run
here as one batched matmul per layer over all instances (equivalent to a grouped conv with
groups = R, or to a loop of F.linear over instances).

Shape letters (`pointsup.structures`): R instances (RoIs, or CondInst's sampled locations),
P points (or pixels) of each instance, G generated parameters per instance; layer l maps
in_l -> out_l channels.

Parameter layout (AdelaiDet's `parse_dynamic_params`, the Implicit PointRend reference's
`_parse_params`): for layers of shapes (out_l, in_l),

    params[r] = [W_0, W_1, ..., W_{L-1}, b_0, b_1, ..., b_{L-1}]   (all weights, then all biases)

with W_l flattened row-major from (out_l, in_l), exactly `nn.Linear.weight`, and b_l (out_l,).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

LayerShapes = list[tuple[int, int]]  # (out_l, in_l) per layer


def num_dynamic_params(layer_shapes: LayerShapes) -> int:
    """G: weights and biases of all layers."""
    return sum(o * i + o for o, i in layer_shapes)


def standard_init_params(layer_shapes: LayerShapes) -> Tensor:
    """(G,) one ordinary MLP in the layout above: weights drawn like detectron2's
    c2_xavier_fill (uniform, variance 1 / fan_in), biases 0. A generator's output bias set
    to this makes every instance start from a working shared MLP (see its callers)."""
    weights = [nn.init.kaiming_uniform_(torch.empty(o, i), a=1).flatten() for o, i in layer_shapes]
    biases = [torch.zeros(o) for o, _ in layer_shapes]
    return torch.cat(weights + biases)


def split_dynamic_params(params: Tensor, layer_shapes: LayerShapes) -> tuple[list[Tensor], list[Tensor]]:
    """params (R, G) in the layout above -> weights [(R, out_l, in_l)] and biases [(R, out_l)]."""
    R, G = params.shape
    if G != num_dynamic_params(layer_shapes):
        raise ValueError(f"expected {num_dynamic_params(layer_shapes)} parameters per instance, got {G}")
    L = len(layer_shapes)
    chunks = params.split([o * i for o, i in layer_shapes] + [o for o, _ in layer_shapes], dim=1)
    weights = [w.reshape(R, o, i) for w, (o, i) in zip(chunks[:L], layer_shapes)]
    return weights, list(chunks[L:])


def dynamic_mlp(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
    """Each instance's MLP on its points, channel-first: x (R, in_0, P) -> (R, out_{L-1}, P).

    Layer l: x <- W_l x + b_l with W_l (R, out_l, in_l), b_l (R, out_l); ReLU between layers,
    none after the last (its outputs are logits).
    """
    for l, (w, b) in enumerate(zip(weights, biases)):
        x = torch.baddbmm(b.unsqueeze(2), w, x)  # (R, out_l, P)
        if l < len(weights) - 1:
            x = x.relu_()  # in place on the fresh matmul output: saves one (R, out_l, P) copy
    return x
