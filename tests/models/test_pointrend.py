"""PointRend head, adaptive subdivision, point losses and the shared target helpers."""

import glob
import os

import pytest
import torch
import torch.nn.functional as F

from pointsup.config import Config, MaskHeadConfig
from pointsup.losses.point_losses import params_l2_loss, point_bce_loss
from pointsup.models.pointrend import build_pointrend_head
from pointsup.models.subdivision import subdivision_inference
from pointsup.ops.point_features import grid_coords, point_sample
from pointsup.structures import InstanceTargets
from pointsup.supervision import roi_mask_grid_targets as gt_mask_grid_targets
from pointsup.supervision import roi_mask_point_labels as gt_point_labels_from_masks
from pointsup.supervision import roi_point_targets as gt_point_targets

K, C, STRIDE = 3, 16, 4
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


def small_cfg(supervision: str) -> MaskHeadConfig:
    return MaskHeadConfig(
        name="pointrend", supervision=supervision, conv_dim=16, coarse_fc_dim=64, point_head_dim=32,
        train_num_points=49, positional_encoding_dim=32,
    )


def make_batch():
    """Two 64 x 64 images: the first with 2 objects and 3 proposals, the second empty."""
    H = W = 64
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[0, 10:30, 10:40] = True
    masks[1, 30:60, 5:50] = True
    point_coords = torch.rand(2, 10, 2) * 64
    point_labels = (torch.rand(2, 10) > 0.5).float()
    targets = [
        InstanceTargets(
            boxes=torch.tensor([[10.0, 10, 40, 30], [5, 30, 50, 60]]), classes=torch.tensor([0, 2]),
            image_size=(H, W), masks=masks, point_coords=point_coords, point_labels=point_labels,
        ),
        InstanceTargets.empty((H, W), with_masks=True, num_points=10),
    ]
    boxes = [torch.tensor([[8.0, 9, 41, 33], [12, 12, 38, 28], [4, 28, 52, 61]]), torch.zeros(0, 4)]
    classes = [torch.tensor([0, 0, 2]), torch.zeros(0, dtype=torch.long)]
    matched = [torch.tensor([0, 0, 1]), torch.zeros(0, dtype=torch.long)]
    features = {"p2": torch.randn(2, C, H // STRIDE, W // STRIDE)}
    return features, boxes, classes, targets, matched


def empty_rois(n: int = 2):
    return [torch.zeros(0, 4)] * n, [torch.zeros(0, dtype=torch.long)] * n, [torch.zeros(0, dtype=torch.long)] * n


# --- adaptive subdivision ---------------------------------------------------------------


def disc_predict_fn(centre=(0.43, 0.57), radius=0.31):
    calls = []

    def predict_fn(coords_box):  # (R, P, 2) -> (R, P): a hard +-10 step at the circle
        calls.append(coords_box.shape[1])
        inside = (coords_box - torch.tensor(centre)).norm(dim=-1) < radius
        return torch.where(inside, 10.0, -10.0)

    return predict_fn, calls


def test_subdivision_beats_upsampled_grid_on_analytic_disc():
    predict_fn, calls = disc_predict_fn()
    R = 2
    logits = subdivision_inference(predict_fn, R, init_resolution=28, steps=3, num_points=784)
    assert logits.shape == (R, 224, 224)
    # 28^2 grid, then 784 re-predicted points per step (not 224^2).
    assert calls == [784, 784, 784, 784]
    truth = predict_fn(grid_coords(R, 224)).view(R, 224, 224) > 0
    coarse = predict_fn(grid_coords(R, 28)).view(R, 1, 28, 28)
    upsampled = F.interpolate(coarse, size=224, mode="bilinear", align_corners=False)[:, 0] > 0
    err_subdivision = (logits > 0).ne(truth).float().mean()
    err_upsampled = upsampled.ne(truth).float().mean()
    assert err_subdivision < 0.25 * err_upsampled
    assert err_subdivision < 1e-3


def test_subdivision_empty_and_small_grids():
    predict_fn, calls = disc_predict_fn()
    assert subdivision_inference(predict_fn, 0, 28, 3, 784).shape == (0, 224, 224)
    assert calls == []
    # More points than cells at the first step: every cell is re-predicted -> exact.
    logits = subdivision_inference(predict_fn, 1, init_resolution=4, steps=1, num_points=1000)
    torch.testing.assert_close(logits.view(1, -1), predict_fn(grid_coords(1, 8)))


# --- losses ------------------------------------------------------------------------------


def test_point_bce_normalises_by_all_points_and_ignores_minus_one():
    logits = torch.randn(3, 5, requires_grad=True)
    labels = torch.tensor([[1.0, 0, -1, 1, 0], [-1, -1, -1, -1, -1], [0.5, 1, 0, 0, 1]])
    loss = point_bce_loss(logits, labels)
    valid = labels != -1
    per_point = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0), reduction="none")
    torch.testing.assert_close(loss, per_point[valid].sum() / labels.numel())
    loss.backward()
    assert torch.all(logits.grad[1] == 0)  # an all-ignored RoI gets no gradient


def test_point_loss_at_grid_centres_equals_dense_mask_loss():
    # Invariant of the frames: sampling a 7 x 7 prediction at its cell centres reads the cells.
    logits = torch.randn(4, 1, 7, 7)
    gt = (torch.rand(4, 7, 7) > 0.5).float()
    point_logits = point_sample(logits, grid_coords(4, 7))[:, 0]  # (R, 49)
    dense = F.binary_cross_entropy_with_logits(logits[:, 0], gt)
    torch.testing.assert_close(point_bce_loss(point_logits, gt.flatten(1)), dense)


def test_losses_on_empty_inputs_are_graph_connected_zeros():
    logits = torch.zeros(0, 7, requires_grad=True)
    loss = point_bce_loss(logits, torch.zeros(0, 7))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None
    params = torch.zeros(0, 11, requires_grad=True)
    assert params_l2_loss(params, 1e-5).item() == 0.0
    x = torch.full((2, 3), 2.0)
    torch.testing.assert_close(params_l2_loss(x, 0.5), torch.tensor(2.0))


# --- targets -----------------------------------------------------------------------------


def test_gt_point_targets_ignore_points_outside_the_proposal_and_pad():
    boxes = [torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[0.0, 0, 20, 20]])]
    t0 = InstanceTargets(
        boxes=torch.tensor([[0.0, 0, 10, 10]]), classes=torch.tensor([1]), image_size=(32, 32),
        point_coords=torch.tensor([[[5.0, 5.0], [15.0, 5.0], [2.0, 8.0]]]), point_labels=torch.tensor([[1.0, 1.0, -1.0]]),
    )
    t1 = InstanceTargets(
        boxes=torch.tensor([[0.0, 0, 20, 20]]), classes=torch.tensor([0]), image_size=(32, 32),
        point_coords=torch.tensor([[[5.0, 10.0]]]), point_labels=torch.tensor([[0.0]]),
    )
    coords_box, labels = gt_point_targets(boxes, [t0, t1], [torch.tensor([0]), torch.tensor([0])])
    assert coords_box.shape == (2, 3, 2) and labels.shape == (2, 3)
    torch.testing.assert_close(coords_box[0, 0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(labels, torch.tensor([[1.0, -1.0, -1.0], [0.0, -1.0, -1.0]]))
    torch.testing.assert_close(coords_box[1, 0], torch.tensor([0.25, 0.5]))


def test_gt_mask_targets_from_roi_align_and_points():
    _, boxes, _, targets, matched = make_batch()
    grid = gt_mask_grid_targets(boxes, targets, matched, 7)  # (R, 7, 7)
    assert grid.shape == (3, 7, 7) and grid.dtype == torch.bool
    assert grid[1].all()  # proposal 1 lies inside its object's mask
    assert 0 < grid[0].float().mean() < 1
    # Point labels agree with the mask at the box-grid cell centres.
    labels = gt_point_labels_from_masks(boxes, targets, matched, grid_coords(3, 7))
    assert labels.shape == (3, 49)
    assert (labels[1] == 1).all()


# --- the head ----------------------------------------------------------------------------


def check_point_head_train_and_eval(head, batch, loss_names: set[str]) -> list[torch.Tensor]:
    """The mask-head contract of a point head (PointRend or Implicit PointRend) in training
    mode on `batch` (from make_batch), then in eval; returns the eval masks per image."""
    features, boxes, classes, targets, matched = batch
    head.train()
    losses = head(features, boxes, classes, targets, matched)
    assert set(losses) == loss_names
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())

    head.eval()
    with torch.no_grad():
        masks = head(features, boxes, classes)
        head.inference_chunk_size = 1  # rendering detections in chunks must not change the result
        chunked = head(features, boxes, classes)
    assert [m.shape for m in masks] == [(3, 224, 224), (0, 224, 224)]
    assert masks[0].min() >= 0 and masks[0].max() <= 1
    torch.testing.assert_close(chunked[0], masks[0])
    return masks


def check_point_head_without_rois(head) -> None:
    """No RoI in any image: zero losses with every parameter in the graph (DDP), empty masks."""
    features, _, _, targets, _ = make_batch()
    boxes, classes, matched = empty_rois()
    head.train()
    losses = head(features, boxes, classes, [targets[1], targets[1]], matched)
    assert all(v.item() == 0.0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in head.parameters())  # every param in the graph (DDP)
    head.eval()
    assert [m.shape for m in head(features, boxes, classes)] == [(0, 224, 224)] * 2


@pytest.mark.parametrize("supervision", ["masks", "points"])
def test_pointrend_train_and_eval(supervision):
    head = build_pointrend_head(small_cfg(supervision), K, C, {"p2": STRIDE})
    check_point_head_train_and_eval(head, make_batch(), {"loss_mask", "loss_mask_point"})


@pytest.mark.parametrize("supervision", ["masks", "points"])
def test_pointrend_no_rois_train_and_eval(supervision):
    check_point_head_without_rois(build_pointrend_head(small_cfg(supervision), K, C, {"p2": STRIDE}))


def test_pointrend_fits_one_mask():
    # Fixed features, one object: a few Adam steps must drive the point loss down.
    features, boxes, classes, targets, matched = make_batch()
    head = build_pointrend_head(small_cfg("masks"), K, C, {"p2": STRIDE}).train()
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        losses = head(features, boxes, classes, targets, matched)
        loss = sum(losses.values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_pointrend_in_build_rcnn_train_step_and_inference():
    from pointsup.models.rcnn import build_rcnn

    cfg = Config()
    cfg.model.mask_head = small_cfg("points")
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
    assert {"loss_mask", "loss_mask_point"} <= set(losses)
    assert losses["loss_mask_point"] > 0  # GT boxes join the proposals, so image 0 has fg RoIs
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images, [(64, 64)] * 2)
    assert len(out) == 2 and out[0]["pred_masks"].shape == (5, 64, 64)


@pytest.mark.parametrize(
    "path",
    sorted(
        glob.glob(os.path.join(REPO, "configs", "*", "pointrend_*.yaml"))
        + glob.glob(os.path.join(REPO, "configs", "*", "implicit_pointrend_*.yaml"))
    ),
    ids=os.path.basename,
)
def test_pointrend_configs_load_and_build(path):
    from pointsup.config import load_config
    from pointsup.models.implicit_pointrend import ImplicitPointHead, build_implicit_pointrend_head

    cfg = load_config(path)
    m = cfg.model.mask_head
    name = os.path.basename(path)
    assert m.name == ("implicit_pointrend" if name.startswith("implicit") else "pointrend")
    assert m.supervision == ("points" if "_P10" in name else "masks")
    assert cfg.data.point_aug == ("point_aug" in name)
    C = cfg.model.backbone.fpn_channels
    if "coco" in path:
        # Don't allocate the 290M-weight COCO parameter head here; check the layout size only.
        assert ImplicitPointHead(C, 80, m.point_head_dim, m.point_head_num_fc, m.positional_encoding_dim).num_params == 283_472
        return
    build = build_implicit_pointrend_head if m.name == "implicit_pointrend" else build_pointrend_head
    head = build(m, 5, C, {"p2": 4})
    assert sum(p.numel() for p in head.parameters()) < 10_000_000  # CPU-sized


def test_builder_passes_render_chunk_size_from_the_config():
    import inspect

    from pointsup.models.pointrend import PointRendMaskHead

    cfg = small_cfg("points")
    head = build_pointrend_head(cfg, K, C, {"p2": STRIDE})
    default = inspect.signature(PointRendMaskHead).parameters["inference_chunk_size"].default
    assert head.inference_chunk_size == cfg.render_chunk_size == default  # config default = today's value
    cfg.render_chunk_size = 3
    assert build_pointrend_head(cfg, K, C, {"p2": STRIDE}).inference_chunk_size == 3
