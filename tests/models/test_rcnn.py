"""End-to-end Mask R-CNN: empty images, point-only data, eval outputs, and a tiny overfit run."""

import time

import pytest
import torch
from torch import nn

from pointsup.config import Config
from pointsup.models.rcnn import build_rcnn
from pointsup.structures import InstanceTargets

H = W = 64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


class TinyBackbone(nn.Module):
    """Stand-in for the ResNet-FPN: strided convs to p2..p5, max-pool p6 (same contract)."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU())
        self.downs = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU()) for _ in range(3))
        self.out_channels = channels
        self.strides = {f"p{i}": 2**i for i in range(2, 7)}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(images)
        features = {"p2": x}
        for i, down in enumerate(self.downs):
            x = down(x)
            features[f"p{i + 3}"] = x
        features["p6"] = nn.functional.max_pool2d(x, 1, 2)
        return features


def tiny_config(supervision: str = "points") -> Config:
    cfg = Config()
    cfg.model.rpn.anchor_sizes = [16, 32, 64, 128, 256]
    cfg.model.rpn.batch_size_per_image = 64
    cfg.model.rpn.pre_nms_topk_train = cfg.model.rpn.pre_nms_topk_test = 200
    cfg.model.rpn.post_nms_topk_train = cfg.model.rpn.post_nms_topk_test = 50
    cfg.model.roi_heads.batch_size_per_image = 64
    cfg.model.roi_heads.fc_dim = 64
    cfg.model.roi_heads.detections_per_image = 10
    cfg.model.mask_head.conv_dim = 16
    cfg.model.mask_head.num_conv = 2
    cfg.model.mask_head.supervision = supervision
    return cfg


def tiny_model(supervision: str = "points", num_classes: int = 2) -> nn.Module:
    return build_rcnn(tiny_config(supervision), num_classes, backbone=TinyBackbone())


def synthetic_images(num_points: int = 24, seed: int = 0):
    """3 images of 64 x 64 with a disc (class 0) and/or a diamond (class 1) each.

    Points are drawn uniformly in each GT box and labelled from the mask (paper sec. 3.1).
    """
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    layouts = [[(0, 20, 22, 12), (1, 44, 42, 14)], [(1, 24, 40, 16)], [(0, 40, 20, 14), (0, 18, 46, 10)]]
    images, targets = [], []
    for objects in layouts:
        image = torch.full((3, H, W), 40.0) + 20 * torch.rand(3, H, W, generator=g)
        boxes, classes, masks = [], [], []
        for cls, cx, cy, r in objects:
            if cls == 0:
                mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2
            else:
                mask = (xs - cx).abs() + (ys - cy).abs() <= r
            colour = [220.0, 60.0, 60.0] if cls == 0 else [60.0, 200.0, 220.0]
            image[:, mask] = torch.tensor(colour)[:, None]
            boxes.append([cx - r, cy - r, cx + r, cy + r])
            classes.append(cls)
            masks.append(mask)
        boxes = torch.tensor(boxes)
        masks = torch.stack(masks)
        coords = boxes[:, None, :2] + torch.rand(len(boxes), num_points, 2, generator=g) * (boxes[:, None, 2:] - boxes[:, None, :2])
        col, row = coords[..., 0].long().clamp(0, W - 1), coords[..., 1].long().clamp(0, H - 1)
        labels = masks[torch.arange(len(boxes))[:, None], row, col].float()
        images.append(image)
        targets.append(InstanceTargets(boxes, torch.tensor(classes), (H, W), masks, coords, labels))
    return torch.stack(images), targets


def test_image_without_objects_trains_every_parameter():
    model = tiny_model().train()
    images, targets = synthetic_images()
    empty = InstanceTargets.empty((H, W), num_points=24)
    losses = model(images[:1], [(H, W)], [empty])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() == 0.0
    assert losses["loss_rpn_loc"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_point_only_data_trains_without_masks():
    model = tiny_model("points").train()
    images, targets = synthetic_images()
    point_only = [InstanceTargets(t.boxes, t.classes, t.image_size, None, t.point_coords, t.point_labels) for t in targets]
    losses = model(images, [(H, W)] * 3, point_only)
    assert losses["loss_mask"] > 0
    sum(losses.values()).backward()


def test_mask_supervision_and_missing_annotations():
    images, targets = synthetic_images()
    losses = tiny_model("masks").train()(images, [(H, W)] * 3, targets)
    assert losses["loss_mask"] > 0
    sum(losses.values()).backward()
    no_masks = [InstanceTargets(t.boxes, t.classes, t.image_size) for t in targets]
    with pytest.raises(ValueError, match="masks"):
        tiny_model("masks").train()(images, [(H, W)] * 3, no_masks)


def test_eval_outputs_and_output_sizes():
    model = tiny_model().eval()
    images, _ = synthetic_images()
    with torch.no_grad():
        outputs = model(images[:2], [(H, W), (48, 56)], output_sizes=[(128, 128), (48, 56)])
    assert len(outputs) == 2
    for out, (h, w) in zip(outputs, [(128, 128), (48, 56)]):
        D = len(out["pred_scores"])
        assert out["pred_boxes"].shape == (D, 4) and out["pred_classes"].dtype == torch.int64
        assert out["pred_masks"].shape == (D, h, w) and out["pred_masks"].dtype == torch.bool
        assert (out["pred_boxes"][:, 2] <= w).all() and (out["pred_boxes"][:, 3] <= h).all()


def test_zero_detections():
    model = tiny_model().eval()
    model.roi_heads.score_thresh = 1.1  # nothing can pass
    images, _ = synthetic_images()
    with torch.no_grad():
        (out,) = model(images[:1], [(H, W)], output_sizes=[(100, 90)])
    assert out["pred_boxes"].shape == (0, 4) and out["pred_scores"].shape == (0,)
    assert out["pred_classes"].shape == (0,) and out["pred_masks"].shape == (0, 100, 90)


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a & b).sum() / (a | b).sum().clamp(min=1)).item()


def test_tiny_model_overfits_point_supervision():
    torch.manual_seed(0)
    model = tiny_model("points").train()
    images, targets = synthetic_images()
    sizes = [(H, W)] * len(images)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    start, history = time.time(), []
    for _ in range(ITERS):
        losses = model(images, sizes, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    print(f"{ITERS} iters in {time.time() - start:.1f}s; first {history[0]} last {history[-1]}")
    first = sum(history[0].values())
    last = sum(sum(h.values()) for h in history[-10:]) / 10
    assert last < 0.3 * first
    assert sum(h["loss_mask"] for h in history[-10:]) / 10 < 0.5 * history[0]["loss_mask"]

    model.eval()
    with torch.no_grad():
        outputs = model(images, sizes)
    for out, t in zip(outputs, targets):
        for gt_mask, gt_class in zip(t.masks, t.classes):
            same_class = out["pred_classes"] == gt_class
            ious = [_mask_iou(m, gt_mask) for m in out["pred_masks"][same_class]]
            # The best-scoring detection of the object's class that overlaps it.
            overlapping = [iou for iou in ious if iou > 0.1]
            print(f"class {gt_class.item()}: best overlapping detection mask IoU {overlapping[:1]}")
            assert overlapping and overlapping[0] > 0.5, f"mask IoUs {ious}"


ITERS = 150


def test_build_rcnn_with_the_configured_backbone():
    pytest.importorskip("pointsup.models.backbone")
    cfg = tiny_config()
    cfg.model.backbone.fpn_channels = 16
    model = build_rcnn(cfg, num_classes=2).train()
    images, targets = synthetic_images()
    losses = model(images[:2], [(H, W)] * 2, targets[:2])
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        outputs = model(images[:1], [(H, W)])
    assert outputs[0]["pred_masks"].shape[1:] == (H, W)


def test_unknown_mask_head_is_rejected():
    cfg = tiny_config()
    cfg.model.mask_head.name = "nope"
    with pytest.raises(ValueError, match="mask_head.name"):
        build_rcnn(cfg, 2, backbone=TinyBackbone())
