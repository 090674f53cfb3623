"""The shared dynamic MLP (`pointsup/ops/dynamic_mlp.py`) against plain per-instance loops,
and both heads that run it: Implicit PointRend's point head and CondInst's mask head."""

import pytest
import torch
import torch.nn.functional as F

from pointsup.models.condinst import DynamicMaskHead
from pointsup.models.implicit_pointrend import ImplicitPointHead
from pointsup.ops.dynamic_mlp import dynamic_mlp, num_dynamic_params, split_dynamic_params

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


def layers_of_instance(params_r: torch.Tensor, layer_shapes: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One instance's (weight (out, in), bias (out,)) per layer, read from its vector by
    walking the documented layout by hand: all weights row-major, then all biases."""
    offset, weights, biases = 0, [], []
    for o, i in layer_shapes:
        weights.append(params_r[offset : offset + o * i].view(o, i))
        offset += o * i
    for o, _ in layer_shapes:
        biases.append(params_r[offset : offset + o])
        offset += o
    assert offset == params_r.numel()
    return list(zip(weights, biases))


def linear_loop(x_points: torch.Tensor, params: torch.Tensor, layer_shapes) -> torch.Tensor:
    """Implicit PointRend's computation, one RoI at a time: x_points (R, P, in) -> (R, P, out)."""
    outputs = []
    for r in range(params.shape[0]):
        h = x_points[r]
        layers = layers_of_instance(params[r], layer_shapes)
        for l, (w, b) in enumerate(layers):
            h = F.linear(h, w, b)
            h = F.relu(h) if l < len(layers) - 1 else h
        outputs.append(h)
    return torch.stack(outputs)


def conv1x1_loop(x_map: torch.Tensor, params: torch.Tensor, layer_shapes) -> torch.Tensor:
    """CondInst's computation, one instance at a time: x_map (R, in, H, W) -> (R, out, H, W)."""
    outputs = []
    for r in range(params.shape[0]):
        h = x_map[r : r + 1]
        layers = layers_of_instance(params[r], layer_shapes)
        for l, (w, b) in enumerate(layers):
            h = F.conv2d(h, w[:, :, None, None], b)
            h = F.relu(h) if l < len(layers) - 1 else h
        outputs.append(h[0])
    return torch.stack(outputs)


def test_split_dynamic_params_follows_the_layout():
    shapes = [(3, 4), (2, 3)]
    assert num_dynamic_params(shapes) == 3 * 4 + 2 * 3 + 3 + 2
    params = torch.arange(2 * 23, dtype=torch.float32).view(2, 23)
    weights, biases = split_dynamic_params(params, shapes)
    assert [w.shape for w in weights] == [(2, 3, 4), (2, 2, 3)] and [b.shape for b in biases] == [(2, 3), (2, 2)]
    for r in range(2):
        for (w, b), w_r, b_r in zip(layers_of_instance(params[r], shapes), weights, biases):
            assert torch.equal(w_r[r], w) and torch.equal(b_r[r], b)
    with pytest.raises(ValueError):
        split_dynamic_params(params[:, :-1], shapes)


def test_dynamic_mlp_equals_per_instance_linear_layers_with_gradients():
    shapes = [(8, 12), (8, 8), (8, 8), (4, 8)]  # Implicit PointRend-like: E + C = 12 -> 3 x 8 -> K = 4
    R, P = 5, 7
    params = torch.randn(R, num_dynamic_params(shapes), requires_grad=True)
    x = torch.randn(R, P, 12, requires_grad=True)
    out = dynamic_mlp(x.transpose(1, 2), *split_dynamic_params(params, shapes))  # (R, K, P)
    expected = linear_loop(x, params, shapes).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # The in-place ReLU must not change the gradients either.
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), [params, x])
    expected_grads = torch.autograd.grad((expected * g).sum(), [params, x])
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dynamic_mlp_equals_per_instance_1x1_convs():
    shapes = [(8, 10), (8, 8), (1, 8)]  # CondInst: 2 + 8 -> 8 -> 8 -> 1
    R, H, W = 4, 5, 6
    params = torch.randn(R, num_dynamic_params(shapes))
    x_map = torch.randn(R, 10, H, W)
    out = dynamic_mlp(x_map.flatten(2), *split_dynamic_params(params, shapes)).view(R, 1, H, W)
    torch.testing.assert_close(out, conv1x1_loop(x_map, params, shapes), atol=1e-5, rtol=1e-5)


def test_implicit_point_head_is_the_per_instance_linear_mlp():
    head = ImplicitPointHead(feature_channels=6, num_classes=4, hidden_dim=8, num_hidden=3, encoding_dim=10)
    R, P = 3, 9
    params, fine, coords_box = torch.randn(R, head.num_params), torch.randn(R, 6, P), torch.rand(R, P, 2)
    x_points = torch.cat([head.encoding(coords_box), fine.transpose(1, 2)], dim=2)  # (R, P, E + C)
    expected = linear_loop(x_points, params, head.layer_shapes)  # (R, P, K)
    torch.testing.assert_close(head(params, fine, coords_box), expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_condinst_dynamic_mask_head_is_the_per_instance_conv_stack():
    head = DynamicMaskHead(in_channels=8, channels=8, num_layers=3)
    R, H, W = 3, 4, 7
    params, inputs = torch.randn(R, head.num_params), torch.randn(R, 10, H, W)
    expected = conv1x1_loop(inputs, params, head.layer_shapes)  # (R, 1, H, W)
    torch.testing.assert_close(head.run_dynamic_convs(inputs, params), expected, atol=1e-5, rtol=1e-5)
