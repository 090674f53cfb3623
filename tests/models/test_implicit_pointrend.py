"""Implicit PointRend: parameter layout, positional encoding, head training/inference."""

import pytest
import torch
from torch import nn

from pointsup.config import Config, MaskHeadConfig
from pointsup.models.implicit_pointrend import (
    FourierPositionalEncoding,
    ImplicitPointHead,
    build_implicit_pointrend_head,
    dynamic_mlp,
)

from .test_pointrend import check_point_head_train_and_eval, check_point_head_without_rois, make_batch

K, C, STRIDE = 3, 16, 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


def small_cfg(supervision: str) -> MaskHeadConfig:
    return MaskHeadConfig(
        name="implicit_pointrend", supervision=supervision, conv_dim=16, coarse_fc_dim=64,
        point_head_dim=32, train_num_points=49, positional_encoding_dim=32,
    )


def sequential_from_params(head: ImplicitPointHead, params_r: torch.Tensor) -> nn.Sequential:
    """An ordinary nn.Sequential MLP whose Linear layers are loaded from one RoI's vector,
    following the documented layout: all weights (row-major (out, in)), then all biases."""
    layers, offset = [], 0
    linears = [nn.Linear(i, o) for o, i in head.layer_shapes]
    for lin in linears:
        n = lin.weight.numel()
        lin.weight.data.copy_(params_r[offset : offset + n].view_as(lin.weight))
        offset += n
    for lin in linears:
        n = lin.bias.numel()
        lin.bias.data.copy_(params_r[offset : offset + n])
        offset += n
    assert offset == params_r.numel()
    for lin in linears:
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # no ReLU after the output layer


def test_dynamic_mlp_equals_sequential_mlp_built_from_the_same_params():
    head = ImplicitPointHead(feature_channels=6, num_classes=4, hidden_dim=8, num_hidden=3, encoding_dim=10)
    R, P = 3, 5
    params = torch.randn(R, head.num_params)
    fine = torch.randn(R, 6, P)
    coords = torch.rand(R, P, 2)
    logits = head(params, fine, coords)  # (R, K, P)
    assert logits.shape == (R, 4, P)
    x = torch.cat([head.encoding(coords), fine.transpose(1, 2)], dim=2)  # input = [encoding, features]
    for r in range(R):
        expected = sequential_from_params(head, params[r])(x[r])  # (P, K)
        torch.testing.assert_close(logits[r], expected.T, atol=1e-5, rtol=1e-5)
    # One class's MLP (last layer cut to that class's row) gives that class's logits.
    classes = torch.tensor([2, 0, 3])
    class_params = head.select_classes(params, classes)
    assert class_params.shape == (R, head.num_params_for(1))
    one = head(class_params, fine, coords)
    assert one.shape == (R, 1, P)
    torch.testing.assert_close(one[:, 0], logits[torch.arange(R), classes], atol=1e-5, rtol=1e-5)
    one_class_head = ImplicitPointHead(feature_channels=6, num_classes=1, hidden_dim=8, num_hidden=3, encoding_dim=10)
    for r in range(R):  # ...and is exactly the documented layout with K = 1
        expected = sequential_from_params(one_class_head, class_params[r])(x[r])  # (P, 1)
        torch.testing.assert_close(one[r], expected.T, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        head(params[:, :-1], fine, coords)


def test_dynamic_mlp_relu_only_between_layers():
    x = torch.randn(2, 3, 4)  # (R, channels, P)
    w = [torch.eye(3).expand(2, 3, 3), -torch.eye(3).expand(2, 3, 3)]
    b = [torch.zeros(2, 3), torch.zeros(2, 3)]
    torch.testing.assert_close(dynamic_mlp(x, w, b), -x.relu())


def test_parameter_count_matches_reference_for_coco():
    # Reference number: 283,472 generated parameters per RoI for K = 80, p2 of 256 channels,
    # a 256-d encoding and 3 hidden layers of 256.
    head = ImplicitPointHead(feature_channels=256, num_classes=80, hidden_dim=256, num_hidden=3, encoding_dim=256)
    print("Implicit PointRend generated parameters per RoI (K=80):", head.num_params)
    assert head.num_params == 512 * 256 + 256 + 2 * (256 * 256 + 256) + 256 * 80 + 80 == 283_472
    assert head.layer_shapes == [(256, 512), (256, 256), (256, 256), (80, 256)]
    mlp = sequential_from_params(head, torch.zeros(head.num_params))
    assert sum(p.numel() for p in mlp.parameters()) == 283_472


def test_positional_encoding_fixed_saved_and_distinct():
    enc = FourierPositionalEncoding(dim=256, scale=1.0)
    coords = torch.rand(2, 7, 2)
    a = enc(coords)
    assert a.shape == (2, 7, 256)
    torch.testing.assert_close(enc(coords), a)  # no randomness per call
    # sin^2 + cos^2 = 1 for each of the 128 frequencies.
    torch.testing.assert_close(a[..., :128] ** 2 + a[..., 128:] ** 2, torch.ones(2, 7, 128))
    state = enc.state_dict()
    assert "gaussian_matrix" in state and state["gaussian_matrix"].shape == (2, 128)
    other = FourierPositionalEncoding(dim=256)  # a different random matrix...
    assert not torch.allclose(other(coords), a)
    other.load_state_dict(state)  # ...until the checkpoint restores it
    torch.testing.assert_close(other(coords), a)
    # Different points -> different encodings (pairwise distinct over a grid).
    grid = torch.stack(torch.meshgrid(torch.linspace(0, 1, 9), torch.linspace(0, 1, 9), indexing="ij"), -1).view(1, -1, 2)
    e = enc(grid)[0]
    dist = torch.cdist(e, e) + torch.eye(81) * 1e3
    assert dist.min() > 0.1
    # The head's encoding is part of the model's state dict.
    head = build_implicit_pointrend_head(small_cfg("points"), K, C, {"p2": STRIDE})
    assert "point_head.encoding.gaussian_matrix" in head.state_dict()


@pytest.mark.parametrize("supervision", ["masks", "points"])
def test_implicit_pointrend_train_and_eval(supervision):
    batch = make_batch()
    features, boxes, classes, _, _ = batch
    head = build_implicit_pointrend_head(small_cfg(supervision), K, C, {"p2": STRIDE})
    masks = check_point_head_train_and_eval(head, batch, {"loss_mask_point", "loss_params_l2"})
    with torch.no_grad():
        head.render_chunk_size = 1  # rendering fewer RoIs at a time must not change the result
        render_chunked = head(features, boxes, classes)
    torch.testing.assert_close(render_chunked[0], masks[0])


@pytest.mark.parametrize("supervision", ["masks", "points"])
def test_implicit_pointrend_under_bf16_autocast(supervision):
    """solver.amp=bf16: the point head trains and renders under autocast (an in-place matmul
    on an autocast output once failed with "Input dtypes must be the same") and stays close
    to its fp32 result."""
    batch = make_batch()
    features, boxes, classes, targets, matched = batch
    head = build_implicit_pointrend_head(small_cfg(supervision), K, C, {"p2": STRIDE})
    head.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = head(features, boxes, classes, targets, matched)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    head.eval()
    with torch.no_grad():
        fp32 = head(features, boxes, classes)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = head(features, boxes, classes)
    assert (bf16[0].float() - fp32[0]).abs().max() < 0.1  # mask probabilities: bf16 rounding only


@pytest.mark.parametrize("supervision", ["masks", "points"])
def test_implicit_pointrend_no_rois_train_and_eval(supervision):
    check_point_head_without_rois(build_implicit_pointrend_head(small_cfg(supervision), K, C, {"p2": STRIDE}))


def test_implicit_pointrend_fits_points_with_sgd():
    # The trainer's optimizer (SGD, lr 0.02). With the reference's near-zero generated MLPs
    # (init_params_as_mlp=False) this stalls at the label prior after learning output biases.
    # 60 steps: with unit-length parameter-head features (params_feature_norm) the generated
    # MLP trains at ~lr instead of ~lr * |h|^2, so it needs ~45 steps here instead of ~15.
    features, boxes, classes, targets, matched = make_batch()
    head = build_implicit_pointrend_head(small_cfg("points"), K, C, {"p2": STRIDE}).train()
    opt = torch.optim.SGD(head.parameters(), lr=0.02, momentum=0.9)
    first = None
    for _ in range(60):
        loss = head(features, boxes, classes, targets, matched)["loss_mask_point"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_generated_mlp_starts_as_a_standard_mlp():
    head = build_implicit_pointrend_head(small_cfg("points"), K, C, {"p2": STRIDE})
    bias = head.parameter_head.prediction.bias
    weights, biases = head.point_head.split_params(bias[None])
    for w, (o, i) in zip(weights, head.point_head.layer_shapes):
        assert w.shape == (1, o, i)
        assert 0.5 < w.std().item() * i**0.5 < 1.5  # variance ~ 1 / fan_in
    assert all((b == 0).all() for b in biases)


def test_implicit_pointrend_in_build_rcnn_train_step_and_inference():
    from pointsup.models.rcnn import build_rcnn

    cfg = Config()
    cfg.model.mask_head = small_cfg("masks")
    cfg.model.backbone.fpn_channels = 16
    cfg.model.roi_heads.batch_size_per_image = 32
    cfg.model.rpn.post_nms_topk_train = 64
    cfg.model.rpn.post_nms_topk_test = 32
    cfg.model.roi_heads.detections_per_image = 5
    cfg.model.roi_heads.score_thresh_test = 0.0
    model = build_rcnn(cfg, num_classes=K)
    _, _, _, targets, _ = make_batch()
    images = torch.rand(2, 3, 64, 64) * 255
    model.train()
    losses = model(images, [(64, 64)] * 2, targets)
    assert {"loss_mask_point", "loss_params_l2"} <= set(losses)
    assert losses["loss_mask_point"] > 0
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images, [(64, 64)] * 2)
    assert len(out) == 2 and out[0]["pred_masks"].shape == (5, 64, 64)


@pytest.mark.parametrize("feature_norm", [True, False])
def test_generated_params_step_is_bounded_by_feature_norm(feature_norm):
    """One SGD step on the parameter head's output layer moves RoI r's generated parameters
    by -lr * sum_s g_s (h_s . h_r + 1): with raw features that grows as |h|^2 (the cause of
    Implicit PointRend's divergence); with params_feature_norm it does not depend on |h|."""
    from pointsup.models.pointrend import ConvFCHead

    def param_step(input_scale: float) -> float:
        torch.manual_seed(0)
        head = ConvFCHead(in_channels=8, in_resolution=4, conv_dim=8, fc_dim=16, num_fc=1, out_dim=32,
                          normalize_features=feature_norm)
        roi_features = torch.rand(6, 8, 4, 4) * input_scale
        for p in list(head.convs.parameters()) + list(head.fcs.parameters()):
            p.requires_grad_(False)  # only the output layer steps, as in the formula
        before = head(roi_features)
        before.sum().backward()  # g_s = 1 for every output
        with torch.no_grad():
            for p in head.prediction.parameters():
                p -= 0.01 * p.grad
            return (head(roi_features) - before).abs().max().item()

    small, large = param_step(1.0), param_step(100.0)
    if feature_norm:
        assert large == pytest.approx(small, rel=1e-3)
        assert large <= 0.01 * 6 * 2 * 1.0001  # |h_s . h_r + 1| <= 2 for the 6 RoIs
    else:
        assert large > 1000 * small  # |h|^2 grew 10^4 times


def test_builder_passes_chunk_sizes_and_init_params_as_mlp_from_the_config():
    import inspect

    from pointsup.models.implicit_pointrend import ImplicitPointRendMaskHead

    defaults = inspect.signature(ImplicitPointRendMaskHead).parameters
    cfg = small_cfg("points")
    head = build_implicit_pointrend_head(cfg, K, C, {"p2": STRIDE})  # config defaults = the head's defaults
    assert head.inference_chunk_size == cfg.params_chunk_size == defaults["inference_chunk_size"].default
    assert head.render_chunk_size == cfg.render_chunk_size == defaults["render_chunk_size"].default
    assert cfg.init_params_as_mlp == defaults["init_params_as_mlp"].default
    assert head.parameter_head.prediction.bias.abs().sum() > 0  # one standard MLP in the bias
    cfg.params_chunk_size, cfg.render_chunk_size, cfg.init_params_as_mlp = 3, 2, False
    head = build_implicit_pointrend_head(cfg, K, C, {"p2": STRIDE})
    assert (head.inference_chunk_size, head.render_chunk_size) == (3, 2)
    assert (head.parameter_head.prediction.bias == 0).all()  # the reference's start
