"""pointsup.weights: every supported format loads to the right tensors, and torchvision's weights
give torchvision's detections. No test downloads anything.

The detectron2 checkpoints here are built from pointsup models with `to_detectron2` (the
inverse mapping); checkpoints written by detectron2 itself are not available offline.
"""

import pickle

import numpy as np
import pytest
import torch
import torchvision

from pointsup.checkpoint import get_rng_state, load_model_weights, save_checkpoint
from pointsup.config import Config, config_to_dict, load_config
from pointsup.models import build_model
from pointsup.models.backbone import ResNet
from pointsup.weights import WeightsLoadError, load_weights, read_weights_file, to_detectron2

REPO = __file__.rsplit("/tests/", 1)[0]


def tiny_cfg(head: str = "mask_rcnn", conv_dim: int = 16) -> Config:
    cfg = Config()
    cfg.model.backbone.depth = 18
    cfg.model.backbone.norm = "FrozenBN"
    cfg.model.backbone.fpn_channels = 32
    cfg.model.roi_heads.fc_dim = 32
    cfg.model.mask_head.name = head
    cfg.model.mask_head.conv_dim = conv_dim  # < fpn_channels: PointRend's reduce_channel_dim_conv exists
    cfg.model.mask_head.coarse_fc_dim = 32
    cfg.model.mask_head.point_head_dim = 16
    cfg.model.mask_head.positional_encoding_dim = 16
    return cfg


def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every entry of the state dict (FrozenBN buffers too) set to seeded random values."""
    g = torch.Generator().manual_seed(seed)
    state = {k: (torch.rand(v.shape, generator=g) + 0.5).to(v.dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return model


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------------------
# torchvision
# ----------------------------------------------------------------------------------------


def test_torchvision_maskrcnn_gives_torchvision_detections(tmp_path):
    torch.manual_seed(0)
    H, W = 224, 280  # W pads to 288 (padding is 0 after normalisation in torchvision)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=H, max_size=W, box_detections_per_img=12
    )
    with torch.no_grad():  # make the random model's detections meaningful
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.1, 0.1)
        tv.rpn.head.bbox_pred.weight.normal_(0, 0.01)
        tv.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.05)
        tv.roi_heads.box_predictor.cls_score.bias.normal_(0, 1.0)  # some classes above score_thresh
        tv.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 0.01)
        tv.roi_heads.mask_predictor.mask_fcn_logits.weight.normal_(0, 0.05)
    tv.eval()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)

    cfg = load_config(f"{REPO}/configs/torchvision/maskrcnn_resnet50_fpn_v1.yaml")
    cfg.model.roi_heads.detections_per_image = 12
    model = build_model(cfg, num_classes=90).eval()
    report = load_weights(model, str(path), verbose=False)
    assert report.source == "torchvision" and not report.notices and not report.not_in_file

    # Grab the box-relative mask grids before pasting, on both sides.
    grids, proposals = {}, {}
    tv.rpn.register_forward_hook(lambda m, i, o: proposals.__setitem__("tv", o[0][0]))
    model.rpn.register_forward_hook(lambda m, i, o: proposals.__setitem__("ps", o[0][0]))
    tv.roi_heads.register_forward_hook(lambda m, i, o: grids.__setitem__("tv", o[0][0]["masks"][:, 0]))
    model.roi_heads.register_forward_hook(lambda m, i, o: grids.__setitem__("ps", o[0][0]["pred_mask_probs"]))
    image = torch.rand(3, H, W) * 255
    with torch.no_grad():
        expected = tv([image / 255])[0]  # torchvision: RGB in [0, 1], no resize at this size
        got = model(torch.nn.functional.pad(image, (0, 8))[None], [(H, W)])[0]  # padded to /32 as collate does

    # The same proposals, including those of the P6 anchors (as sets: torchvision ranks by
    # sigmoid(logit), pointsup by logit, so near-ties may swap places).
    assert proposals["ps"].shape == proposals["tv"].shape
    dist = (proposals["ps"][:, None] - proposals["tv"][None]).abs().amax(dim=-1)  # (R, R)
    assert dist.min(dim=1).values.max() < 1e-3 and dist.min(dim=0).values.max() < 1e-3
    assert len(expected["boxes"]) >= 5, "the random torchvision model should detect something"
    assert len(got["pred_boxes"]) == len(expected["boxes"])
    torch.testing.assert_close(got["pred_boxes"], expected["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(got["pred_scores"], expected["scores"], atol=1e-5, rtol=0)
    assert torch.equal(got["pred_classes"] + 1, expected["labels"])  # torchvision label 0 = background
    torch.testing.assert_close(grids["ps"], grids["tv"], atol=1e-5, rtol=0)
    expected_masks = expected["masks"][:, 0] > 0.5
    inter = (got["pred_masks"] & expected_masks).flatten(1).sum(1)
    union = (got["pred_masks"] | expected_masks).flatten(1).sum(1)
    assert (union > 0).all()
    assert (inter.float() / union).min() > 0.99


def test_anchor_options_reproduce_torchvision_anchors():
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    from pointsup.models.anchors import AnchorGenerator

    sizes, ratios, strides = [32, 64, 128, 256, 512], [0.5, 1.0, 2.0], [4, 8, 16, 32, 64]
    grids = [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)]  # an 800 x 1088 batch: P6 stride 61 x 64
    tv = TVAnchorGenerator(tuple((s,) for s in sizes), (tuple(ratios),) * 5)
    expected = tv(ImageList(torch.zeros(1, 3, 800, 1088), [(800, 1080)]), [torch.zeros(1, 1, h, w) for h, w in grids])[0]
    ours = AnchorGenerator(sizes, ratios, strides, round_cell_anchors=True, stride_from_grid=True)(grids)
    assert torch.equal(torch.cat(ours), expected)
    detectron2_style = AnchorGenerator(sizes, ratios, strides)(grids)
    assert not torch.equal(torch.cat(detectron2_style), expected)


def test_torchvision_imagenet_resnet_loads_into_the_backbone(tmp_path):
    resnet_tv = torchvision.models.resnet18()
    torch.save(resnet_tv.state_dict(), tmp_path / "r18.pth")
    model = build_model(tiny_cfg(), num_classes=3)
    report = load_weights(model, str(tmp_path / "r18.pth"), verbose=False)
    assert report.source == "torchvision_resnet"
    assert "fc.weight" in report.ignored and any(k.startswith("rpn.") for k in report.not_in_file)
    own = model.backbone.bottom_up.state_dict()
    for k, v in resnet_tv.state_dict().items():
        if not k.startswith("fc.") and k in own:
            assert torch.equal(own[k], v), k


# ----------------------------------------------------------------------------------------
# detectron2 layout
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("head,conv_dim", [("mask_rcnn", 16), ("pointrend", 16), ("pointrend", 64), ("implicit_pointrend", 16)])
@pytest.mark.parametrize("container", ["pth", "pkl"])
def test_detectron2_layout_loads_to_the_identical_model(tmp_path, head, conv_dim, container):
    cfg = tiny_cfg(head, conv_dim)
    source = randomized(build_model(cfg, num_classes=3), seed=1)
    d2_state = to_detectron2(source.state_dict())
    assert "backbone.bottom_up.res2.0.conv1.norm.running_var" in d2_state
    assert "proposal_generator.rpn_head.objectness_logits.weight" in d2_state
    if head == "implicit_pointrend":
        assert "roi_heads.mask_head.point_head.positional_encoding_gaussian_matrix" in d2_state
    if head == "pointrend":
        assert ("roi_heads.mask_head.coarse_head.reduce_channel_dim_conv.weight" in d2_state) == (conv_dim < 32)
    if container == "pth":
        path = tmp_path / "model_final.pth"
        torch.save({"model": d2_state, "iteration": 10}, path)
    else:  # model-zoo style: numpy arrays and an author, written by pickle
        path = tmp_path / "model_final.pkl"
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in d2_state.items()}, "__author__": "test"}, f)

    target = build_model(cfg, num_classes=3)
    report = load_weights(target, str(path), verbose=False)
    assert report.source == "detectron2"
    assert_same_state(target, source)
    assert any("BGR" in n for n in report.notices)  # MSRA conventions vs the RGB default config


def test_pointrend_pre_2020_layout(tmp_path):
    """Old PointRend checkpoints: roi_heads.mask_coarse_head.coarse_mask_fc1, roi_heads.mask_point_head."""
    cfg = tiny_cfg("pointrend")
    source = randomized(build_model(cfg, num_classes=3), seed=2)
    old = {}
    for k, v in to_detectron2(source.state_dict()).items():
        k = k.replace("roi_heads.mask_head.coarse_head.fc", "roi_heads.mask_coarse_head.coarse_mask_fc")
        k = k.replace("roi_heads.mask_head.coarse_head.", "roi_heads.mask_coarse_head.")
        old[k.replace("roi_heads.mask_head.point_head.", "roi_heads.mask_point_head.")] = v
    torch.save({"model": old}, tmp_path / "old.pth")
    target = build_model(cfg, num_classes=3)
    load_weights(target, str(tmp_path / "old.pth"), verbose=False)
    assert_same_state(target, source)


def test_missing_unexpected_and_mismatched_keys_are_named(tmp_path):
    cfg = tiny_cfg("pointrend")
    d2_state = to_detectron2(build_model(cfg, num_classes=3).state_dict())

    missing = dict(d2_state)
    del missing["roi_heads.box_head.fc1.weight"]
    missing["roi_heads.keypoint_head.conv_fcn1.weight"] = torch.zeros(1)
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(WeightsLoadError) as err:
        load_weights(build_model(cfg, num_classes=3), str(tmp_path / "missing.pth"), verbose=False)
    assert "roi_heads.box_head.fcs.0.weight" in str(err.value)  # missing, by the model's name
    assert "roi_heads.keypoint_head.conv_fcn1.weight" in str(err.value)  # unexpected, by the file's name

    # A checkpoint with 3 classes into a model with 5: refused, or skipped and reported.
    torch.save({"model": d2_state}, tmp_path / "k3.pth")
    with pytest.raises(WeightsLoadError, match=r"roi_heads\.box_predictor\.cls_score\.weight.*\(4, 32\).*\(6, 32\)"):
        load_weights(build_model(cfg, num_classes=5), str(tmp_path / "k3.pth"), verbose=False)
    model = build_model(cfg, num_classes=5)
    before = model.roi_heads.box_predictor.cls_score.weight.clone()
    report = load_weights(model, str(tmp_path / "k3.pth"), skip_mismatched_shapes=True, verbose=False)
    skipped = " ".join(report.skipped_shapes)
    for key in ("box_predictor.cls_score.weight", "box_predictor.bbox_pred.weight", "coarse_head.prediction.weight", "point_head.predictor.weight"):
        assert key in skipped
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, before)
    assert torch.equal(model.backbone.bottom_up.conv1.weight, d2_state["backbone.bottom_up.stem.conv1.weight"])


# ----------------------------------------------------------------------------------------
# MSRA / Caffe2 pickles
# ----------------------------------------------------------------------------------------


def caffe2_blobs(resnet: ResNet) -> dict[str, np.ndarray]:
    """An MSRA-style blob dict written independently of pointsup.weights' mapping."""
    blobs = {"conv1_w": resnet.conv1.weight, "res_conv1_bn_s": resnet.bn1.weight, "res_conv1_bn_b": resnet.bn1.bias}
    for stage in range(1, 5):
        for j, block in enumerate(getattr(resnet, f"layer{stage}")):
            name = f"res{stage + 1}_{j}_"
            for conv, norm, branch in (("conv1", "bn1", "branch2a"), ("conv2", "bn2", "branch2b"), ("conv3", "bn3", "branch2c")):
                blobs[name + branch + "_w"] = getattr(block, conv).weight
                blobs[name + branch + "_bn_s"] = getattr(block, norm).weight
                blobs[name + branch + "_bn_b"] = getattr(block, norm).bias
            if block.downsample is not None:
                blobs[name + "branch1_w"] = block.downsample[0].weight
                blobs[name + "branch1_bn_s"] = block.downsample[1].weight
                blobs[name + "branch1_bn_b"] = block.downsample[1].bias
    blobs["fc1000_w"], blobs["fc1000_b"] = torch.zeros(1000, 2048), torch.zeros(1000)
    return {k: v.detach().numpy().astype(np.float32) for k, v in blobs.items()}


def test_msra_pickle_loads_with_its_conventions(tmp_path):
    torch.manual_seed(0)
    source = ResNet(50, norm="FrozenBN", freeze_at=0, stride_in_1x1=True)
    with torch.no_grad():  # AffineChannel: random scale and shift, statistics 0 / 1
        for m in source.modules():
            if hasattr(m, "running_var"):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    with open(tmp_path / "R-50.pkl", "wb") as f:
        pickle.dump(caffe2_blobs(source), f, protocol=2)

    target = ResNet(50, norm="FrozenBN", freeze_at=0, stride_in_1x1=False)
    report = load_weights(target, str(tmp_path / "R-50.pkl"), verbose=False)
    assert report.source == "caffe2" and "fc1000_w" in report.ignored
    assert_same_state(target, source)
    notices = " ".join(report.notices)
    assert "stride_in_1x1: true" in notices and "AffineChannel" in notices

    # The BGR / std-1 convention as config: the model flips RGB to BGR and divides by 1.
    cfg = tiny_cfg()
    cfg.model.backbone.depth, cfg.model.backbone.stride_in_1x1 = 50, True
    cfg.model.input_format = "BGR"
    cfg.model.pixel_mean, cfg.model.pixel_std = [103.53, 116.28, 123.675], [1.0, 1.0, 1.0]
    model = build_model(cfg, num_classes=3)
    report = load_weights(model, str(tmp_path / "R-50.pkl"), verbose=False)
    assert [n for n in report.notices if "AffineChannel" not in n] == []  # nothing left to fix
    assert any(k.startswith("roi_heads.") for k in report.not_in_file)
    assert_same_state(model.backbone.bottom_up, source)
    rgb = torch.rand(1, 3, 32, 32) * 255
    bgr_centred = rgb.flip(1) - torch.tensor([103.53, 116.28, 123.675]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(rgb, [(32, 32)]), bgr_centred)


def test_pickles_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": {"x": Evil()}, "__author__": "x"}, f)
    with pytest.raises(WeightsLoadError, match=r"refusing to load .*evil.pkl.*builtins.print"):
        read_weights_file(str(tmp_path / "evil.pkl"))


# ----------------------------------------------------------------------------------------
# pointsup's own checkpoints
# ----------------------------------------------------------------------------------------


def test_pointsup_training_checkpoint_loads(tmp_path):
    cfg = tiny_cfg("implicit_pointrend")
    source = randomized(build_model(cfg, num_classes=3), seed=3)
    state = {"model": source.state_dict(), "optimizer": {}, "scaler": {}, "iteration": 7,
             "config": config_to_dict(cfg), "rng": [get_rng_state()]}
    path = save_checkpoint(str(tmp_path), "model_0000007.pth", state)
    target = build_model(cfg, num_classes=3)
    report = load_weights(target, path, verbose=False)
    assert report.source == "pointsup" and not report.notices
    assert_same_state(target, source)

    other = build_model(cfg, num_classes=3)
    load_model_weights(other, path)  # the trainer's cfg.model.weights path
    assert_same_state(other, source)
