"""Input preparation (`pointsup/models/inputs.py`): every meta-architecture honours
model.input_format and model.pad_after_normalize through the one shared function."""

import pytest
import torch

from pointsup.config import Config
from pointsup.models import build_model
from pointsup.models.inputs import normalize_images, pixel_stat

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py

MODEL_NAMES = ["mask_rcnn", "pointrend", "implicit_pointrend", "condinst"]
NUM_CLASSES = 2
# Deliberately different per channel, so a model that ignores the channel order shows it.
MEAN = [90.0, 110.0, 130.0]
STD = [40.0, 50.0, 60.0]


def tiny_config(name: str, input_format: str, pad_after_normalize: bool = False) -> Config:
    """Small ResNet-18 models on 64 x 64 images; score threshold 0 so untrained models detect."""
    cfg = Config()
    cfg.model.backbone.fpn_channels = 16
    cfg.model.input_format = input_format
    cfg.model.pixel_mean, cfg.model.pixel_std = list(MEAN), list(STD)
    cfg.model.pad_after_normalize = pad_after_normalize
    if name == "condinst":
        cfg.model.meta_architecture = "condinst"
        cfg.model.condinst.mask_branch_channels = 16
        cfg.model.condinst.score_thresh_test = 0.0
        cfg.model.condinst.detections_per_image = 5
        return cfg
    mh = cfg.model.mask_head
    mh.name, mh.conv_dim, mh.num_conv = name, 16, 2
    mh.coarse_fc_dim, mh.point_head_dim, mh.positional_encoding_dim = 64, 32, 32
    cfg.model.rpn.post_nms_topk_test = 32
    cfg.model.roi_heads.fc_dim = 32
    cfg.model.roi_heads.score_thresh_test = 0.0
    cfg.model.roi_heads.detections_per_image = 5
    return cfg


def padded_batch() -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(2, 3, 64, 64) RGB 0..255, the second image 40 x 48 padded with 0 as collate does."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=g) * 255
    images[0, :, 16:48, 8:40] = torch.tensor([230.0, 60.0, 20.0])[:, None, None]  # a saturated red box
    images[1, :, 40:] = 0
    images[1, :, :, 48:] = 0
    return images, [(64, 64), (40, 48)]


def same_detections(a: list[dict], b: list[dict]) -> bool:
    return all(
        ra.keys() == rb.keys() and all(ra[k].shape == rb[k].shape and torch.allclose(ra[k].float(), rb[k].float()) for k in ra)
        for ra, rb in zip(a, b)
    )


def test_normalize_images_flips_to_bgr_then_normalises_and_pads_with_zero():
    images, sizes = padded_batch()
    mean_bgr, std_bgr = pixel_stat(MEAN), pixel_stat(STD)
    x = normalize_images(images, sizes, mean_bgr, std_bgr, "BGR", pad_after_normalize=True)
    for c_bgr, c_rgb in enumerate([2, 1, 0]):  # BGR channel 0 is the blue (RGB channel 2)
        expected = (images[0, c_rgb] - MEAN[c_bgr]) / STD[c_bgr]
        torch.testing.assert_close(x[0, c_bgr], expected)
    assert (x[1, :, 40:] == 0).all() and (x[1, :, :, 48:] == 0).all()
    kept = normalize_images(images, sizes, mean_bgr, std_bgr, "BGR", pad_after_normalize=False)
    torch.testing.assert_close(kept[1, :, 40:], (-mean_bgr / std_bgr)[0].expand(3, 24, 64))  # -mean/std
    rgb = normalize_images(images, sizes, mean_bgr, std_bgr, "RGB")
    torch.testing.assert_close(rgb, (images - mean_bgr) / std_bgr)
    with pytest.raises(ValueError):
        normalize_images(images, sizes, mean_bgr, std_bgr, "YUV")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_normalises_with_the_shared_function(name):
    model = build_model(tiny_config(name, "BGR", pad_after_normalize=True), NUM_CLASSES).eval()
    assert model.input_format == "BGR" and model.pad_after_normalize  # the builder passes both
    images, sizes = padded_batch()
    expected = normalize_images(images, sizes, pixel_stat(MEAN), pixel_stat(STD), "BGR", True)
    torch.testing.assert_close(model.normalize(images, sizes), expected, rtol=0, atol=0)
    seen = []
    normalize = model.normalize
    model.normalize = lambda imgs, szs: seen.append(szs) or normalize(imgs, szs)  # forward must call it
    with torch.no_grad():
        model(images, sizes)
    assert seen == [sizes]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bgr_model_equals_rgb_model_on_channel_flipped_image(name):
    """A BGR model with (BGR-order) mean/std M on image I sees exactly what an RGB model
    with the same weights and mean/std M sees on I with its channels reversed."""
    images, sizes = padded_batch()
    rgb_model = build_model(tiny_config(name, "RGB", pad_after_normalize=True), NUM_CLASSES).eval()
    bgr_model = build_model(tiny_config(name, "BGR", pad_after_normalize=True), NUM_CLASSES).eval()
    bgr_model.load_state_dict(rgb_model.state_dict())
    with torch.no_grad():
        expected = rgb_model(images.flip(1), sizes)
        got = bgr_model(images, sizes)
        unflipped = rgb_model(images, sizes)
    assert sum(len(r["pred_scores"]) for r in got) > 0
    assert same_detections(got, expected)
    assert not same_detections(got, unflipped)  # ...and the channel order does matter
