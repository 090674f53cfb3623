"""CondInst: dynamic mask head, mask/point/BoxInst losses, the detector contract, training."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pointsup.config import Config
from pointsup.losses.condinst_losses import (
    color_similarity,
    dice_loss,
    pairwise_loss,
    point_loss,
    projection_loss,
    rgb_to_lab,
)
from pointsup.models.condinst import (
    CondInst,
    Controller,
    DynamicMaskHead,
    MaskBranch,
    box_masks_at_stride,
    build_condinst,
    masks_at_stride,
    upsample_aligned,
)
from pointsup.models.fcos import FCOS, FCOSHead
from pointsup.structures import InstanceTargets

STRIDES = [8, 16, 32, 64, 128]
SIZE_RANGES = [0, 64, 128, 256, 512, 1e8]


class TinyBackbone(nn.Module):
    """Stand-in for the ResNet-FPN: a few strided convs giving p3..p7."""

    def __init__(self, channels: int = 16):
        super().__init__()
        C = channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, C, 3, 2, 1), nn.ReLU(), nn.Conv2d(C, C, 3, 2, 1), nn.ReLU(), nn.Conv2d(C, C, 3, 2, 1)
        )
        self.down = nn.ModuleList(nn.Conv2d(C, C, 3, 2, 1) for _ in range(4))
        self.out_channels = C
        self.strides = {f"p{i}": 2**i for i in range(3, 8)}

    def forward(self, x):
        features = {"p3": self.stem(x)}
        for i, down in enumerate(self.down):
            features[f"p{i + 4}"] = down(F.relu(features[f"p{i + 3}"]))
        return features


def tiny_condinst(supervision="points", boxinst=False, C=16, num_classes=3, boxinst_inside_box=False) -> CondInst:
    fcos = FCOS(FCOSHead(C, num_classes, 5, num_convs=2), STRIDES, SIZE_RANGES)
    return CondInst(
        TinyBackbone(C),
        fcos,
        MaskBranch(C, 3, channels=16, out_channels=8, num_convs=2),
        DynamicMaskHead(8, 8, 3),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
        supervision=supervision,
        boxinst=boxinst,
        pairwise_warmup_iters=2,
        boxinst_inside_box=boxinst_inside_box,
    )


def toy_batch(num_points=10, with_masks=True, seed=0):
    """Two 64 x 64 images: bright rectangles / discs on a dark background, plus an empty image."""
    g = torch.Generator().manual_seed(seed)
    H = W = 64
    images = torch.full((3, 3, H, W), 30.0)
    targets = []
    specs = [[(8, 8, 36, 30, "rect"), (34, 28, 60, 60, "disc")], [(4, 30, 30, 60, "disc"), (30, 4, 62, 26, "rect")], []]
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    for n, objects in enumerate(specs):
        masks, boxes = [], []
        for x0, y0, x1, y1, shape in objects:
            if shape == "rect":
                m = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
            else:
                cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, min(x1 - x0, y1 - y0) / 2
                m = (xs - cx) ** 2 + (ys - cy) ** 2 < r * r
            images[n][:, m] = torch.tensor([220.0, 90.0, 40.0])[:, None] if shape == "rect" else 200.0
            masks.append(m)
            boxes.append([x0, y0, x1, y1])
        M = len(objects)
        masks_t = torch.stack(masks) if M else torch.zeros(0, H, W, dtype=torch.bool)
        boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(M, 4)
        # P points uniformly in each box, labelled by the mask (the paper's P_N simulation).
        wh = (boxes_t[:, 2:] - boxes_t[:, :2])[:, None]
        coords = boxes_t[:, None, :2] + torch.rand(M, num_points, 2, generator=g) * wh
        ij = coords.long().clamp(0, H - 1)
        labels = masks_t[torch.arange(M)[:, None], ij[..., 1], ij[..., 0]].float() if M else torch.zeros(0, num_points)
        classes = torch.tensor([0 if s[4] == "rect" else 1 for s in objects], dtype=torch.int64)
        targets.append(
            InstanceTargets(boxes_t, classes, (H, W), masks_t if with_masks else None, coords, labels)
        )
    return images, [(H, W)] * 3, targets


# ---------------------------------------------------------------- dynamic mask head


def test_dynamic_head_has_169_params_and_equals_conv_stack():
    head = DynamicMaskHead(in_channels=8, channels=8, num_layers=3)
    assert head.num_params == (10 * 8 + 8 * 8 + 8 * 1) + (8 + 8 + 1) == 169
    assert DynamicMaskHead(in_channels=16).num_params == (18 * 8 + 8 * 8 + 8) + 17  # BoxInst's 16 channels
    R, H, W = 3, 5, 7
    inputs = torch.randn(R, 10, H, W)
    params = torch.randn(R, 169)
    out = head.run_dynamic_convs(inputs, params)
    assert out.shape == (R, 1, H, W)
    for r in range(R):
        # Oracle: nn.Conv2d 1x1 layers loaded from AdelaiDet's layout (weights, then biases).
        convs = [nn.Conv2d(10, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 1, 1)]
        offset = 0
        for conv in convs:
            n = conv.weight.numel()
            conv.weight.data = params[r, offset : offset + n].reshape(conv.weight.shape)
            offset += n
        for conv in convs:
            n = conv.bias.numel()
            conv.bias.data = params[r, offset : offset + n].clone()
            offset += n
        assert offset == 169
        stack = nn.Sequential(convs[0], nn.ReLU(), convs[1], nn.ReLU(), convs[2])
        expected = stack(inputs[r : r + 1])
        assert torch.allclose(out[r : r + 1], expected, atol=1e-5)


def test_relative_coords_are_normalised_by_size_of_interest():
    head = DynamicMaskHead(sizes_of_interest=[64, 128, 256, 512, 1024])
    locations = torch.tensor([[12.0, 20.0], [12.0, 20.0]])  # the centre of stride-8 cell (row 2, col 1)
    coords = head.relative_coords(locations, torch.tensor([0, 2]), (4, 5), stride=8)  # (2, 2, 4, 5)
    assert coords.shape == (2, 2, 4, 5)
    assert torch.equal(coords[:, :, 2, 1], torch.zeros(2, 2)), "zero at the instance's own location"
    # Cell (row 0, col 4) has centre (36, 4): offset (12 - 36, 20 - 4) = (-24, 16).
    assert torch.allclose(coords[0, :, 0, 4], torch.tensor([-24.0, 16.0]) / 64)
    assert torch.allclose(coords[1, :, 0, 4], torch.tensor([-24.0, 16.0]) / 256)


def test_upsample_aligned_keeps_cell_centres():
    # A map whose value is the x of each stride-8 cell centre must become the x of each
    # stride-4 cell centre after upsampling (away from the clamped border).
    x8 = ((torch.arange(6) + 0.5) * 8).view(1, 1, 1, 6).expand(1, 1, 6, 6)
    x4 = upsample_aligned(x8, 2)
    expected = ((torch.arange(12) + 0.5) * 4).view(1, 1, 1, 12).expand(1, 1, 12, 12)
    assert torch.allclose(x4[..., 1:-1], expected[..., 1:-1])


def test_mask_branch_output_stride():
    branch = MaskBranch(16, 3, channels=16, out_channels=8, num_convs=1)
    feats = [torch.randn(1, 16, 8 // 2**i, 12 // 2**i) for i in range(3)]
    assert branch(feats).shape == (1, 8, 8, 12)


# ---------------------------------------------------------------- losses


def test_dice_loss_perfect_and_empty():
    gt = (torch.rand(4, 16, 16) > 0.5).float()
    assert dice_loss(gt.clone(), gt) < 1e-4
    assert dice_loss(1 - gt, gt) > 0.99
    empty = torch.zeros(0, 16, 16, requires_grad=True)
    loss = dice_loss(empty, torch.zeros(0, 16, 16))
    assert torch.isfinite(loss) and loss == 0
    loss.backward()
    assert empty.grad is not None


def test_point_loss_large_logits_matching_labels_is_zero():
    S, H4, W4, P = 3, 8, 10, 12
    coords = torch.rand(S, P, 2) * torch.tensor([W4 * 4.0, H4 * 4.0])
    # One label per instance and logits of +/-20 everywhere on its map.
    labels = torch.tensor([[1.0] * P, [0.0] * P, [1.0] * (P - 2) + [-1.0, -1.0]])
    logits = torch.stack([torch.full((1, H4, W4), 20.0), torch.full((1, H4, W4), -20.0), torch.full((1, H4, W4), 20.0)])
    # Ignored points carry the "wrong" answer: they must not count.
    loss = point_loss(logits.requires_grad_(True), coords, labels, mask_stride=4)
    assert loss < 1e-6
    flipped = point_loss(-logits, coords, labels.clamp(min=0), mask_stride=4)
    assert flipped > 10


def test_point_loss_at_cell_centres_equals_dense_bce():
    S, H4, W4 = 2, 6, 8
    logits = torch.randn(S, 1, H4, W4)
    gt = (torch.rand(S, H4, W4) > 0.5).float()
    ys, xs = torch.meshgrid((torch.arange(H4) + 0.5) * 4, (torch.arange(W4) + 0.5) * 4, indexing="ij")
    coords = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).expand(S, -1, -1)  # image pixels
    dense = F.binary_cross_entropy_with_logits(logits[:, 0], gt)
    assert torch.allclose(point_loss(logits, coords, gt.reshape(S, -1), mask_stride=4), dense, atol=1e-6)


def test_point_loss_empty_cases_are_finite_with_gradient():
    logits = torch.randn(0, 1, 8, 8, requires_grad=True)
    loss = point_loss(logits, torch.zeros(0, 5, 2), torch.zeros(0, 5), mask_stride=4)
    assert torch.isfinite(loss) and loss == 0
    loss.backward()
    all_ignored = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss = point_loss(all_ignored, torch.rand(2, 5, 2) * 32, torch.full((2, 5), -1.0), mask_stride=4)
    assert loss == 0
    loss.backward()
    assert all_ignored.grad is not None


def test_boxinst_losses():
    box_masks = box_masks_at_stride(torch.tensor([[8.0, 4.0, 24.0, 20.0]]), (8, 8), 4)
    assert box_masks.sum() == 4 * 4
    assert projection_loss(box_masks.clone(), box_masks) < 1e-4
    # A disc inside the box has the same projections as the box: also ~0.
    disc = box_masks.clone()
    disc[0, 0, 1, 2] = 0  # a corner of the 4 x 4 block does not change either projection
    assert projection_loss(disc, box_masks) < 1e-4
    assert projection_loss(torch.zeros_like(box_masks), box_masks) > 1.9
    images = torch.rand(1, 3, 8, 8) * 255
    sim = color_similarity(rgb_to_lab(images), torch.ones(1, 1, 8, 8), 3, 2)
    assert sim.shape == (1, 8, 8, 8) and (sim <= 1).all() and (sim >= 0).all()
    logits = torch.randn(1, 1, 8, 8, requires_grad=True)
    loss = pairwise_loss(logits, (sim >= 0.3).float() * box_masks, 3, 2)
    assert torch.isfinite(loss)
    loss.backward()
    # Confident and uniform predictions agree with every neighbour: ~0.
    assert pairwise_loss(torch.full((1, 1, 8, 8), 20.0), torch.ones(1, 8, 8, 8), 3, 2) < 1e-6


def test_projection_inside_box_rejects_border_strips_and_keeps_the_object():
    """The known collapse of plain BoxInst: a top-row strip over the box's columns plus a
    left-column strip over its rows has nearly the box's projections (it adds only row 0
    and column 0), although no pixel is on the object. The inside-box variant averages the
    term with the same term on the cropped mask, where the strips cost the full loss; a mask
    that spills outside the box stays penalised; masks on the object cost nothing."""
    box_masks = box_masks_at_stride(torch.tensor([[32.0, 24.0, 80.0, 64.0]]), (20, 24), 4)  # cells y 6..15, x 8..19
    assert box_masks[0, 0, 6:16, 8:20].all() and box_masks.sum() == 10 * 12
    strips = torch.zeros_like(box_masks)
    strips[0, 0, 0, 8:20] = 1.0  # top row, the box's columns
    strips[0, 0, 6:16, 0] = 1.0  # left column, the box's rows
    plain = projection_loss(strips, box_masks)
    assert plain < 0.1
    assert projection_loss(strips, box_masks, inside_box=True) > 0.5 * (plain + 1.9)
    everywhere = torch.ones_like(box_masks)  # right inside the box, wrong outside it
    assert projection_loss(everywhere, box_masks, inside_box=True) > 0.5 * projection_loss(everywhere, box_masks) > 0.1
    on_object = box_masks.clone()
    on_object[0, 0, 6, 8] = on_object[0, 0, 15, 19] = 0  # two corners cut: same projections
    for mask in (box_masks, on_object):
        assert projection_loss(mask, box_masks) < 1e-4
        assert projection_loss(mask, box_masks, inside_box=True) < 1e-4
    # Gradient reaches pixels outside the box (through the uncropped half) and inside it.
    probs = torch.full_like(box_masks, 0.5).requires_grad_()
    projection_loss(probs, box_masks, inside_box=True).backward()
    assert (probs.grad[box_masks == 0] != 0).any() and (probs.grad[box_masks == 1] != 0).any()


def test_boxinst_inside_box_crops_predicted_masks_to_their_boxes():
    images, sizes, _ = toy_batch()
    for inside_box in (False, True):
        model = tiny_condinst("points", boxinst=True, boxinst_inside_box=inside_box).eval()
        model.fcos.score_thresh = 0.0
        with torch.no_grad():
            model.mask_head.run_dynamic_convs = lambda inputs, params: torch.full_like(inputs[:, :1], 5.0)
            r = model(images[:1], sizes[:1])[0]
        inside = box_masks_at_stride(r["pred_boxes"], (64, 64), 1)[:, 0] > 0
        assert len(r["pred_boxes"]) > 0
        # Plain BoxInst keeps its whole-image masks (all on here); the variant crops them.
        assert bool((r["pred_masks"] & ~inside).any()) == (not inside_box)
        assert (r["pred_masks"] == inside).all() if inside_box else r["pred_masks"].all()


def test_rgb_to_lab_reference_colours():
    rgb = torch.tensor([[255.0, 255.0, 255.0], [0.0, 0.0, 0.0], [255.0, 0.0, 0.0]]).T.reshape(1, 3, 3, 1)
    lab = rgb_to_lab(rgb)[0, :, :, 0].T
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.05)
    assert torch.allclose(lab[1], torch.zeros(3), atol=0.05)
    assert torch.allclose(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=0.1)  # skimage's red


def test_masks_at_stride_is_coverage():
    masks = torch.zeros(1, 8, 6, dtype=torch.bool)
    masks[0, :2, :4] = True
    small = masks_at_stride(masks, (8, 8), 4)  # padded to 8 x 8 first
    assert small.shape == (1, 2, 2)
    assert torch.allclose(small[0], torch.tensor([[0.5, 0.0], [0.0, 0.0]]))


# ---------------------------------------------------------------- the detector


def _assert_every_param_has_grad(model):
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters outside the graph: {missing}"


def test_train_step_all_supervisions_and_empty_batch():
    images, sizes, targets = toy_batch()
    for supervision, boxinst, expected in (
        ("points", False, {"loss_mask"}),
        ("masks", False, {"loss_mask"}),
        ("points", True, {"loss_prj", "loss_pairwise"}),
    ):
        model = tiny_condinst(supervision, boxinst).train()
        losses = model(images, sizes, targets)
        assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"} | expected
        assert all(torch.isfinite(v) for v in losses.values())
        assert losses[sorted(expected)[0]] > 0
        sum(losses.values()).backward()
        _assert_every_param_has_grad(model)
    # Only empty images: finite losses and still every parameter in the graph.
    model = tiny_condinst("points").train()
    empty = [InstanceTargets.empty((64, 64), num_points=10) for _ in range(2)]
    losses = model(images[:2], sizes[:2], empty)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    _assert_every_param_has_grad(model)


def test_point_only_data_never_needs_masks():
    images, sizes, targets = toy_batch(with_masks=False)
    model = tiny_condinst("points").train()
    losses = model(images, sizes, targets)
    assert torch.isfinite(sum(losses.values()))
    masks_model = tiny_condinst("masks").train()
    try:
        masks_model(images, sizes, targets)
    except ValueError as e:
        assert "masks" in str(e)
    else:
        raise AssertionError("supervision='masks' without masks must fail clearly")


def test_inference_contract_and_footnote2_box_crop():
    images, sizes, _ = toy_batch()
    model = tiny_condinst("points").eval()
    model.fcos.score_thresh = 0.0  # an untrained model: take whatever it finds
    with torch.no_grad():
        # Make every mask logit positive so the box crop is what shapes the masks.
        model.mask_head.run_dynamic_convs = lambda inputs, params: torch.full_like(inputs[:, :1], 5.0)
        results = model(images, sizes, output_sizes=[(128, 128), (64, 64), (32, 48)])
    for r, (H, W) in zip(results, [(128, 128), (64, 64), (32, 48)]):
        D = len(r["pred_boxes"])
        assert 0 < D <= 100
        assert r["pred_boxes"].shape == (D, 4) and r["pred_scores"].shape == (D,)
        assert r["pred_classes"].dtype == torch.int64 and r["pred_masks"].shape == (D, H, W)
        assert r["pred_masks"].dtype == torch.bool
        # Footnote 2: nothing outside the predicted box.
        inside = box_masks_at_stride(r["pred_boxes"], (H, W), 1)[:, 0] > 0
        assert not (r["pred_masks"] & ~inside).any()
        assert r["pred_boxes"][:, 2].max() <= W + 1e-4 and r["pred_boxes"][:, 3].max() <= H + 1e-4
    # No detections: empty tensors with the right shapes.
    model = tiny_condinst("points").eval()
    model.fcos.score_thresh = 1.1
    with torch.no_grad():
        results = model(images[:1], sizes[:1])
    r = results[0]
    assert r["pred_boxes"].shape == (0, 4) and r["pred_scores"].shape == (0,)
    assert r["pred_classes"].shape == (0,) and r["pred_masks"].shape == (0, 64, 64)


def test_build_condinst_with_real_backbone():
    cfg = Config()
    cfg.model.meta_architecture = "condinst"
    cfg.model.backbone.fpn_channels = 32
    cfg.model.condinst.mask_branch_channels = 16
    cfg.model.condinst.boxinst = False
    model = build_condinst(cfg, num_classes=2)
    assert model.controller.out_channels == 169
    assert torch.allclose(model.mask_head.sizes_of_interest, torch.tensor([64.0, 128, 256, 512, 1024]))
    images, sizes, targets = toy_batch()
    model.train()
    losses = model(images[:2], sizes[:2], [t for t in targets[:2]])
    assert torch.isfinite(sum(losses.values()))
    model.eval()
    with torch.no_grad():
        out = model(images[:1], sizes[:1])
    assert out[0]["pred_masks"].shape[1:] == (64, 64)


def test_short_point_supervised_training_lowers_the_loss():
    """Overfit two toy images with 10 points per object and no masks at all."""
    torch.manual_seed(0)
    images, sizes, targets = toy_batch(num_points=10, with_masks=False)
    images, sizes, targets = images[:2], sizes[:2], targets[:2]
    model = tiny_condinst("points").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        losses = model(images, sizes, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()} | {"total": total.item()})
    first = history[0]
    last = {k: sum(row[k] for row in history[-3:]) / 3 for k in first}
    assert last["total"] < 0.5 * first["total"], (first, last)
    assert last["loss_mask"] < 0.5 * first["loss_mask"], (first, last)


def test_short_boxinst_training_lowers_the_projection_loss():
    """BoxInst learns from boxes alone (the pairwise term warms up over 50 iterations)."""
    torch.manual_seed(0)
    images, sizes, targets = toy_batch(with_masks=False)
    model = tiny_condinst("points", boxinst=True).train()
    model.pairwise_warmup_iters = 50
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(20):
        losses = model(images[:2], sizes[:2], targets[:2])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append(losses["loss_prj"].item())
    assert 0 < model.iteration.item() == 20
    assert sum(history[-3:]) / 3 < 0.5 * history[0], history


@pytest.mark.parametrize("feature_norm", [False, True])
def test_controller_step_is_bounded_by_feature_norm(feature_norm):
    """One SGD step on the controller moves location q's generated parameters by
    -lr * sum_s g_s (h_s . h_q + 1), h the 3 x 3 feature patches: with raw features that
    grows as |h|^2 (why point-supervised CondInst did not learn); with feature_norm it does
    not depend on the features' scale."""
    shapes = DynamicMaskHead(8, 8, 3).layer_shapes

    def param_step(input_scale: float) -> float:
        torch.manual_seed(0)
        controller = Controller(4, shapes, feature_norm=feature_norm)
        tower = torch.rand(1, 4, 5, 5) * input_scale
        before = controller(tower)
        before.sum().backward()  # g_s = 1 for every output
        with torch.no_grad():
            for p in controller.parameters():
                p -= 0.01 * p.grad
            return (controller(tower) - before).abs().max().item()

    small, large = param_step(1.0), param_step(100.0)
    if feature_norm:
        assert large == pytest.approx(small, rel=1e-3)
        assert large <= 0.01 * 25 * 2 * 1.0001  # |h_s . h_q + 1| <= 2 for the 25 locations
    else:
        assert large > 1000 * small  # |h|^2 grew 10^4 times


def test_controller_feature_norm_starts_from_one_shared_mask_head_and_is_the_default():
    from pointsup.ops.dynamic_mlp import num_dynamic_params

    shapes = DynamicMaskHead(8, 8, 3).layer_shapes
    plain, normed = Controller(16, shapes), Controller(16, shapes, feature_norm=True)
    assert plain.bias.abs().sum() == 0 and normed.bias.abs().sum() > 0
    assert normed.weight.shape == plain.weight.shape == (num_dynamic_params(shapes), 16, 3, 3)  # AdelaiDet's keys
    tower = torch.randn(2, 16, 6, 7)
    torch.testing.assert_close(  # unit-length patches: scaling the features changes nothing
        normed(tower * 50.0), normed(tower), rtol=1e-4, atol=1e-5)
    assert Config().model.condinst.controller_feature_norm
