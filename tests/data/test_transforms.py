import os

import numpy as np
import pytest
import torch
from PIL import Image

from pointsup.config import ConfigError, DataConfig, load_config
from pointsup.data.coco import CocoInstanceDataset
from pointsup.data.transforms import (
    Compose,
    PointAugmentation,
    RandomCrop,
    RandomHorizontalFlip,
    ResizeShortestEdge,
    build_test_transforms,
    build_train_transforms,
    crop,
    hflip,
    resize,
    resize_image,
    resized_shape,
)
from pointsup.structures import InstanceTargets


@pytest.fixture(scope="module")
def samples(synthetic_paths, synthetic_points_json):
    ds = CocoInstanceDataset(synthetic_points_json, synthetic_paths["image_dir"], skip_empty=True)
    out = [ds[i] for i in range(8)]
    assert all(s.targets.has_masks and s.targets.has_points for s in out)
    return out


def _mask_value_at_points(targets: InstanceTargets) -> torch.Tensor:
    """(M, P) bool: mask value of the pixel containing each point."""
    H, W = targets.image_size
    cols = targets.point_coords[..., 0].floor().long().clamp(0, W - 1)
    rows = targets.point_coords[..., 1].floor().long().clamp(0, H - 1)
    m = torch.arange(len(targets))[:, None].expand_as(rows)
    return targets.masks[m, rows, cols]


def _interior_only(targets: InstanceTargets) -> InstanceTargets:
    """Ignore points whose pixel has a 3x3 neighbourhood with both mask values.

    Resizing moves a point at most one source pixel relative to the nearest-neighbour mask
    (for scale factors >= 0.5), so interior points must keep their label exactly.
    """
    H, W = targets.image_size
    masks = targets.masks.float()[:, None]  # (M, 1, H, W)
    padded = torch.nn.functional.pad(masks, (1, 1, 1, 1), mode="replicate")
    lo = -torch.nn.functional.max_pool2d(-padded, 3, stride=1)[:, 0] > 0.5  # all object
    hi = torch.nn.functional.max_pool2d(padded, 3, stride=1)[:, 0] > 0.5  # any object
    cols = targets.point_coords[..., 0].floor().long().clamp(0, W - 1)
    rows = targets.point_coords[..., 1].floor().long().clamp(0, H - 1)
    m = torch.arange(len(targets))[:, None].expand_as(rows)
    uniform = lo[m, rows, cols] | ~hi[m, rows, cols]
    labels = torch.where(uniform, targets.point_labels, torch.full_like(targets.point_labels, -1.0))
    return InstanceTargets(targets.boxes, targets.classes, targets.image_size, targets.masks, targets.point_coords, labels)


def _check_points_inside_boxes(targets: InstanceTargets) -> None:
    valid = targets.point_labels >= 0
    x, y = targets.point_coords[..., 0], targets.point_coords[..., 1]
    b = targets.boxes[:, None, :]
    inside = (x >= b[..., 0] - 1e-4) & (x <= b[..., 2] + 1e-4) & (y >= b[..., 1] - 1e-4) & (y <= b[..., 3] + 1e-4)
    assert inside[valid].all()


def test_labels_match_untransformed_mask(samples):
    for s in samples:
        valid = s.targets.point_labels >= 0
        assert torch.equal(_mask_value_at_points(s.targets)[valid], s.targets.point_labels[valid] == 1)


@pytest.mark.parametrize(
    "name,transform,exact",
    [
        ("flip", RandomHorizontalFlip(1.0), True),
        ("crop", RandomCrop((0.6, 0.7)), True),
        ("resize", ResizeShortestEdge([48, 80, 112, 150], 200), False),
        ("resize_pil", ResizeShortestEdge([48, 80, 112, 150], 200, backend="pil"), False),
        ("all", Compose([RandomCrop((0.7, 0.7)), ResizeShortestEdge([48, 96, 144], 256), RandomHorizontalFlip(0.5)]), False),
    ],
)
def test_point_labels_stay_on_transformed_mask(samples, name, transform, exact):
    torch.manual_seed(0)
    agree, total = 0, 0
    for _ in range(12):
        for s in samples:
            image, t = transform(s.image, s.targets)
            assert tuple(image.shape[-2:]) == t.image_size == tuple(t.masks.shape[-2:])
            _check_points_inside_boxes(t)
            valid = t.point_labels >= 0
            on_mask = _mask_value_at_points(t)
            agree += int((on_mask == (t.point_labels == 1))[valid].sum())
            total += int(valid.sum())
            if exact:
                assert torch.equal(on_mask[valid], t.point_labels[valid] == 1), name
    assert total > 500
    assert agree / total > (0.999 if exact else 0.95), (name, agree / total)


@pytest.mark.parametrize("short_sizes", [[48], [96], [150]])
def test_interior_points_exactly_on_mask_after_resize_flip_crop(samples, short_sizes):
    transform = Compose([RandomCrop((0.8, 0.8)), ResizeShortestEdge(short_sizes, 256), RandomHorizontalFlip(0.5)])
    torch.manual_seed(1)
    checked = 0
    for _ in range(6):
        for s in samples:
            _, t = transform(s.image, _interior_only(s.targets))
            valid = t.point_labels >= 0
            assert torch.equal(_mask_value_at_points(t)[valid], t.point_labels[valid] == 1)
            checked += int((t.point_labels == 1).sum())
    assert checked > 100


def test_resize_exact_2x(samples):
    s = samples[0]
    H, W = s.targets.image_size
    image, t = resize(s.image, s.targets, (2 * H, 2 * W))
    assert image.shape == (3, 2 * H, 2 * W)
    assert torch.allclose(t.boxes, 2 * s.targets.boxes)
    assert torch.allclose(t.point_coords, 2 * s.targets.point_coords)
    assert torch.equal(t.masks, s.targets.masks.repeat_interleave(2, 1).repeat_interleave(2, 2))


def test_resize_shortest_edge_sizes():
    image = torch.rand(3, 40, 100) * 255
    t = InstanceTargets.empty((40, 100), with_masks=True, num_points=3)
    out, tt = ResizeShortestEdge([80], 1000)(image, t)
    assert out.shape == (3, 80, 200) and tt.image_size == (80, 200) and tt.masks.shape == (0, 80, 200)
    out, _ = ResizeShortestEdge([80], 150)(image, t)  # long side capped
    assert out.shape == (3, 60, 150)


def test_flip_twice_is_identity_and_box_formula(samples):
    s = samples[1]
    W = s.targets.image_size[1]
    image, t = hflip(s.image, s.targets)
    assert torch.allclose(t.boxes[:, 0], W - s.targets.boxes[:, 2])
    assert torch.allclose(t.point_coords[..., 0], W - s.targets.point_coords[..., 0])
    image2, t2 = hflip(image, t)
    assert torch.equal(image2, s.image) and torch.equal(t2.masks, s.targets.masks)
    assert torch.allclose(t2.boxes, s.targets.boxes) and torch.allclose(t2.point_coords, s.targets.point_coords)


def test_crop_drops_empty_boxes_and_ignores_outside_points():
    H, W = 20, 30
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[0, 2:8, 2:10] = True
    masks[1, 12:18, 20:28] = True
    targets = InstanceTargets(
        boxes=torch.tensor([[2.0, 2.0, 10.0, 8.0], [20.0, 12.0, 28.0, 18.0]]),
        classes=torch.tensor([0, 1]),
        image_size=(H, W),
        masks=masks,
        point_coords=torch.tensor([[[3.0, 3.0], [9.5, 7.5], [2.5, 2.5]], [[21.0, 13.0], [27.0, 17.0], [25.0, 15.0]]]),
        point_labels=torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
    )
    image, t = crop(torch.zeros(3, H, W), targets, top=0, left=5, height=10, width=10)  # keeps only instance 0
    assert image.shape == (3, 10, 10) and t.image_size == (10, 10) and len(t) == 1
    assert t.classes.tolist() == [0] and t.masks.shape == (1, 10, 10)
    assert torch.allclose(t.boxes, torch.tensor([[0.0, 2.0, 5.0, 8.0]]))
    assert t.point_labels.tolist() == [[-1.0, 1.0, -1.0]]  # x=3 and x=2.5 fall left of the crop
    assert torch.allclose(t.point_coords[0, 1], torch.tensor([4.5, 7.5]))


def test_point_augmentation_keeps_k_of_n_valid_points():
    torch.manual_seed(0)
    coords = torch.rand(3, 10, 2) * 50
    labels = (torch.rand(3, 10) > 0.5).float()
    labels[1, 6:] = -1  # 6 valid points
    labels[2, 1:] = -1  # 1 valid point
    targets = InstanceTargets(torch.tensor([[0.0, 0, 50, 50]] * 3), torch.zeros(3, dtype=torch.long), (50, 50),
                              point_coords=coords, point_labels=labels)
    seen = set()
    for num_keep, expected_k, expected_counts in [(None, 5, [5, 3, 1]), (4, 4, [4, 4, 1]), (12, 12, [10, 6, 1])]:
        for _ in range(5):
            _, t = PointAugmentation(num_keep)(None, targets)
            assert t.point_coords.shape == (3, expected_k, 2) and t.point_labels.shape == (3, expected_k)
            assert ((t.point_labels >= 0).sum(1)).tolist() == expected_counts
            for m in range(3):
                kept = t.point_labels[m] >= 0
                orig = {(tuple(c.tolist()), float(l)) for c, l in zip(coords[m], labels[m]) if l >= 0}
                got = [(tuple(c.tolist()), float(l)) for c, l in zip(t.point_coords[m][kept], t.point_labels[m][kept])]
                assert set(got) <= orig and len(set(got)) == len(got)  # a subset, no duplicates
            seen.add(tuple(t.point_coords[0, :4, 0].tolist()))
    assert len(seen) > 3  # different draws keep different points
    empty = InstanceTargets.empty((8, 8), num_points=10)
    _, t = PointAugmentation()(None, empty)
    assert t.point_coords.shape == (0, 0, 2)


def test_build_transforms_from_config(samples):
    cfg = DataConfig(min_size_train=[96, 112], max_size_train=300, random_crop=True, crop_size=[0.5, 0.5],
                     point_aug=True, point_aug_num=0)
    train = build_train_transforms(cfg)
    kinds = [type(t).__name__ for t in train.transforms]
    assert kinds == ["RandomCrop", "ResizeShortestEdge", "RandomHorizontalFlip", "PointAugmentation"]
    image, t = train(samples[0].image, samples[0].targets)
    assert min(image.shape[-2:]) in (96, 112) and t.point_labels.shape[1] == 5
    image, t = build_test_transforms(DataConfig(min_size_test=80, max_size_test=300))(samples[0].image, samples[0].targets)
    assert image.shape[-2:] == (80, 80) and t.point_labels.shape[1] == 10


def _pil_bilinear(image_u8_hwc: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """The oracle: PIL's bilinear resize of the uint8 image, as detectron2's ResizeTransform."""
    resized = Image.fromarray(image_u8_hwc).resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float()


@pytest.mark.parametrize("size", [(24, 35), (80, 117), (13, 50), (37, 53), (60, 20)])
def test_pil_backend_gives_pils_pixels_exactly(size):
    # Shrinking, enlarging, non-integer and mixed factors from a 37 x 53 image.
    u8 = np.random.default_rng(0).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    image = torch.from_numpy(u8).permute(2, 0, 1).float()  # (3, H, W) RGB as the data sets load it
    expected = _pil_bilinear(u8, size)
    assert torch.equal(resize_image(image, size, backend="pil"), expected)
    t = InstanceTargets.empty((37, 53))
    out, _ = resize(image, t, size, backend="pil")
    assert torch.equal(out, expected)
    if size != (37, 53):  # the default backend is a different, float resampling
        assert not torch.equal(resize_image(image, size), expected)
    with pytest.raises(ValueError, match="resize backend"):
        resize_image(image, size, backend="PIL")


def test_pil_backend_through_config_transforms(samples):
    # The transforms that train, evaluate, predict and self-training build from data.*:
    # the test resize is PIL's resize at detectron2's output size.
    u8 = np.random.default_rng(1).integers(0, 256, size=(48, 90, 3), dtype=np.uint8)
    image = torch.from_numpy(u8).permute(2, 0, 1).float()
    cfg = DataConfig(min_size_test=80, max_size_test=133, min_size_train=[64], max_size_train=133,
                     random_flip=False, resize_backend="pil")
    out, t = build_test_transforms(cfg)(image, InstanceTargets.empty((48, 90)))
    assert out.shape[-2:] == (71, 133) == t.image_size  # long side capped: 90 * 80 / 48 > 133
    assert torch.equal(out, _pil_bilinear(u8, (71, 133)))
    out, t = build_train_transforms(cfg)(image, InstanceTargets.empty((48, 90)))
    assert torch.equal(out, _pil_bilinear(u8, (64, 120)))
    assert all(r.backend == "pil" for r in build_train_transforms(cfg).transforms if isinstance(r, ResizeShortestEdge))
    assert load_config(None, ["data.resize_backend=pil"]).data.resize_backend == "pil"
    with pytest.raises(ConfigError, match="data.resize_backend"):
        load_config(None, ["data.resize_backend=PIL"])


def test_pil_backend_moves_boxes_masks_points_with_the_image(samples):
    # Geometry does not depend on the backend: the targets are the same as with "torch" ...
    s = samples[2]
    H, W = s.targets.image_size
    size = resized_shape(H, W, 90, 200)
    image_torch, t_torch = resize(s.image, s.targets, size)
    image_pil, t_pil = resize(s.image, s.targets, size, backend="pil")
    assert t_pil.image_size == t_torch.image_size == size
    for name in ("boxes", "masks", "point_coords", "point_labels", "classes"):
        assert torch.equal(getattr(t_pil, name), getattr(t_torch, name)), name
    # ... and the image content moves with them: a white object on black, resized by PIL, is
    # above half intensity exactly on the resized mask, except where its edge blurs (a pixel
    # whose 3 x 3 neighbourhood in the resized mask is mixed).
    mask = s.targets.masks[0]  # (H, W)
    object_image = mask.float()[None].expand(3, -1, -1) * 255
    resized_object, t = resize(object_image, s.targets, size, backend="pil")
    resized_mask = t.masks[0].float()[None, None]
    any_obj = torch.nn.functional.max_pool2d(resized_mask, 3, stride=1, padding=1)[0, 0] > 0.5
    all_obj = -torch.nn.functional.max_pool2d(-resized_mask, 3, stride=1, padding=1)[0, 0] > 0.5
    interior = all_obj | ~any_obj  # (H', W') pixels away from the edge
    bright = resized_object[0] > 127.5
    assert torch.equal(bright[interior], t.masks[0][interior])
    assert interior.float().mean() > 0.8
    # The resized box still encloses the bright pixels.
    ys, xs = torch.nonzero(bright, as_tuple=True)
    x0, y0, x1, y1 = t.boxes[0].tolist()
    assert xs.min() >= int(x0) - 1 and xs.max() <= x1 and ys.min() >= int(y0) - 1 and ys.max() <= y1


def test_resized_shape_rounds_half_sides_as_detectron2():
    # detectron2 sets the short side first and then rescales both when the long side is too
    # long; at sides of exactly .5 the float arithmetic decides (values from detectron2's
    # ResizeShortestEdge.get_output_shape).
    assert resized_shape(11, 22, 800, 1333) == (666, 1333)
    assert resized_shape(22, 11, 800, 1333) == (1333, 666)
    assert resized_shape(320, 640, 800, 1333) == (667, 1333)
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(512, 512, 800, 1333) == (800, 800)


def test_resize_masks_matches_float_nearest_exact():
    """Oracle: the byte gather picks the same pixels as F.interpolate(nearest-exact) on floats,
    for up- and downscaling, odd sizes and a cropped (non-contiguous) mask."""
    import torch.nn.functional as F

    from pointsup.data.transforms import resize_masks

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 41, 57, generator=g) > 0.5
    for src in (masks, masks[:, 3:36, 5:50]):
        for size in ((80, 111), (20, 29), (41, 57), (97, 13), (1, 1)):
            expected = F.interpolate(src[None].float(), size=size, mode="nearest-exact")[0] > 0.5
            assert torch.equal(resize_masks(src, size), expected)
    assert resize_masks(torch.zeros(0, 5, 6, dtype=torch.bool), (10, 12)).shape == (0, 10, 12)


@pytest.mark.parametrize("size", [(24, 35), (80, 117), (13, 50), (60, 20)])
def test_torch_uint8_backend_is_within_one_gray_level_of_the_float_resize(size):
    u8 = torch.from_numpy(np.random.default_rng(2).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)).permute(2, 0, 1)
    out = resize_image(u8, size, backend="torch_uint8")
    assert out.dtype == torch.uint8 and out.shape == (3, *size)
    reference = resize_image(u8.float(), size, backend="torch")  # float arithmetic, float result
    assert reference.dtype == torch.float32
    assert (out.float() - reference).abs().max() <= 1.0  # rounded to 8 bits, nothing else
    assert torch.equal(resize_image(u8.float(), size, backend="torch_uint8"), out)  # integer floats: same pixels


@pytest.mark.parametrize("backend", ["torch", "pil"])
def test_an_8_bit_input_gives_the_float_inputs_pixels(backend):
    # The data set and the Predictor now hand 8-bit images to the transforms; the result must
    # be what the float image gave before (the backends' own dtype aside).
    u8 = torch.from_numpy(np.random.default_rng(3).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)).permute(2, 0, 1)
    from_u8 = resize_image(u8, (50, 70), backend=backend)
    from_float = resize_image(u8.float(), (50, 70), backend=backend)
    assert from_u8.dtype == from_float.dtype == (torch.float32 if backend == "torch" else torch.uint8)
    assert torch.equal(from_u8, from_float)


@pytest.mark.parametrize("backend", ["torch", "pil", "torch_uint8"])
def test_dataset_images_are_float_whatever_the_backend(synthetic_paths, synthetic_points_json, backend):
    cfg = DataConfig(min_size_train=[96], max_size_train=200, resize_backend=backend, point_aug=True)
    torch.manual_seed(0)
    dataset = CocoInstanceDataset(synthetic_points_json, synthetic_paths["image_dir"], transforms=build_train_transforms(cfg),
                                  use_masks=False)
    sample = dataset[0]
    assert sample.image.dtype == torch.float32 and min(sample.image.shape[-2:]) == 96
    # The same pipeline as before the 8-bit path: the float image through the same transforms.
    raw = CocoInstanceDataset(synthetic_points_json, synthetic_paths["image_dir"], use_masks=False)[0]
    torch.manual_seed(0)
    image, targets = build_train_transforms(cfg)(raw.image, raw.targets)
    assert torch.equal(sample.image, image.float()) and torch.equal(sample.targets.point_coords, targets.point_coords)
