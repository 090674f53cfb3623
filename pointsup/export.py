"""Export a trained R-CNN-family model to ONNX:

    python -m pointsup.export --weights W [--config C] --format onnx --output model.onnx

Shape letters (`pointsup.structures`): H x W the input image, A anchors of a level,
R proposals, K classes, D detections, M the side of a box-relative mask grid, P points.

What the ONNX model computes
----------------------------
Input ``image``: one (3, H, W) float32 image, RGB, pixel values 0..255 -- exactly what the
PyTorch model receives after pointsup's test transforms (`pointsup.data.transforms.
build_test_transforms`, i.e. resized so that the short side is `data.min_size_test`, the
long side at most `data.max_size_test`). Resizing stays outside the graph: resize before,
and scale the boxes back after (`pointsup.models.postprocess.rescale_boxes`). H and W are
free; the graph pads to a multiple of 32 itself and normalises the pixels
(`model.pixel_mean` / `pixel_std`, the BGR flip of `model.input_format: BGR`).

Outputs, all in the frame of the input image:

    boxes       (D, 4) float32  x0, y0, x1, y1 in input-image pixels
    scores      (D,)   float32  in [0, 1]
    classes     (D,)   int64    contiguous class index 0..K-1
    mask_probs  (D, 1, M, M) float32  mask probabilities on a grid covering each box
                (M = 28 for Mask R-CNN, 224 after PointRend's adaptive subdivision)

D may be 0. The masks are not pasted into the image inside the graph (pasting is per-box
work of data-dependent size); paste them as the PyTorch model does, with
`pointsup.models.postprocess.PASTE_FUNCTIONS[cfg.model.mask_paste]` (by default
`paste_masks_in_image(mask_probs[:, 0], boxes, (H, W), threshold=0.5)`), or with a paste of
your own: each grid covers its box exactly, cell (i, j) centred at ((j + 0.5) / M, (i + 0.5) / M)
of the box. The score threshold, NMS and detections-per-image limit of the config
(`model.roi_heads.*_test`) are constants of the graph: set them with `--set` when exporting.

Which models export
--------------------
  Mask R-CNN           yes.
  PointRend            yes. Adaptive subdivision (`pointsup.models.subdivision`) looks like a
                       data-dependent loop but is not: it has a fixed number of steps and a
                       fixed number of points per step, so it unrolls into the graph (three
                       TopK + ScatterElements rounds); only the number of RoIs is dynamic.
  Implicit PointRend   yes, with two caveats. The parameter head is a Linear(fc, G) layer
                       with G generated weights per detection (283,472 at the COCO sizes
                       with K = 80), so the .onnx file is as large as the model: 1.07 GB
                       measured for that configuration (protobuf's limit is 2 GB; the
                       synthetic configs give ~75 MB). And the point head is restated here
                       with out-of-place ops (see `implicit_pointrend_mask_logits`).
  CondInst             no: not an R-CNN (`model.meta_architecture: condinst`); the command
                       refuses it with that reason.

Masks of PointRend / Implicit PointRend can differ slightly from PyTorch's where two grid
cells are equally uncertain: TopK may then refine a different one of them.

How (and why this way)
----------------------
The model's own `forward` is not traced: it takes a list of image sizes, loops over images
and detections in Python and skips empty levels (`if idx.numel() == 0`), all of which a
tracer freezes to the example input. Instead `ExportableRCNN` below calls the model's
submodules (backbone + FPN, RPN head, anchor generator, box head and predictor, mask head
layers) and re-states the few inference steps around them (top-k, NMS, thresholds,
multi-level RoIAlign, subdivision) with tensor operations only: every size comes from a
tensor's shape, every selection is a mask or an index tensor, so the graph stays valid for
any image size and any number of detections, including none. Export-only code therefore
lives here and not in the models (the style guide: no ONNX branches in model code).

The exporter is `torch.onnx.export(dynamo=False)` (the TorchScript tracer) with dynamic
axes, the path torchvision's own detection models export by: torchvision registers ONNX
translations of its `nms` and `roi_align` for it (`NonMaxSuppression`, and `RoiAlign` with
half-pixel alignment from opset 16). The `torch.export` path (dynamo=True) failed on the
model itself (data-dependent sizes of nonzero / NMS) and is not used. A wrong freeze would show up as a graph that only works at the traced size; the tests
(tests/test_export.py) run the ONNX model with onnxruntime on other sizes, with many
detections and with none.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms, roi_align

from pointsup.models.implicit_pointrend import ImplicitPointRendMaskHead
from pointsup.models.inputs import normalize_images
from pointsup.models.mask_head import MaskRCNNHead
from pointsup.models.pointrend import PointRendMaskHead
from pointsup.ops.dynamic_mlp import dynamic_mlp, split_dynamic_params
from pointsup.ops.point_features import (
    coords_box_to_img,
    grid_coords,
    point_sample,
    uncertainty,
)
from pointsup.ops.roi_pooler import ROIPooler, assign_boxes_to_levels

WHY_NOT_EXPORTABLE = {
    "condinst": "CondInst is not an R-CNN (FCOS detections, dynamic mask FCN over the whole image) and has no "
    "export wrapper; only the R-CNN family (Mask R-CNN, PointRend, Implicit PointRend) exports",
}
SIZE_DIVISIBILITY = 32  # as `pointsup.data.collate`: the FPN needs sizes divisible by the coarsest stride
DEFAULT_OPSET = 17  # RoiAlign with half-pixel alignment (aligned=True) needs opset >= 16
INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["boxes", "scores", "classes", "mask_probs"]
DYNAMIC_AXES = {
    "image": {1: "height", 2: "width"},
    "boxes": {0: "detections"},
    "scores": {0: "detections"},
    "classes": {0: "detections"},
    "mask_probs": {0: "detections"},
}


class ExportError(ValueError):
    """The model (or the environment) cannot produce an ONNX file; the message says why."""


# ----------------------------------------------------------------------------------------
# Tensor-only versions of the inference steps around the model's submodules
# ----------------------------------------------------------------------------------------


def image_size_xyxy(image: Tensor) -> Tensor:
    """(3, H, W) -> (4,) float [W, H, W, H], the clipping bounds of xyxy boxes.

    Read with `_shape_as_tensor`, so that a tracer records the shape instead of freezing
    the example's numbers (torchvision's ONNX code reads sizes the same way).
    """
    hw = torch._shape_as_tensor(image)[1:].to(torch.float32)  # (2,) H, W
    return hw.flip(0).repeat(2)


def clip_boxes(boxes_xyxy: Tensor, size_xyxy: Tensor) -> Tensor:
    """(..., 4) boxes clamped to [0, W] x [0, H]; size_xyxy (4,) from `image_size_xyxy`."""
    return torch.min(boxes_xyxy.clamp(min=0), size_xyxy.to(boxes_xyxy.dtype))


def per_class_nms(boxes_xyxy: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, max_coord: Tensor) -> Tensor:
    """NMS within each class: indices into the (R,) inputs, by decreasing score.

    Each class is moved to its own region of the plane (offset class * (max_coord + 1)), so
    one NMS over all boxes never suppresses across classes; with boxes clipped to the image
    `max_coord` = max(H, W) bounds every coordinate (torchvision's `batched_nms` takes
    boxes.max() instead, which is undefined on zero boxes).
    """
    offsets = classes.to(boxes_xyxy.dtype) * (max_coord + 1)  # (R,)
    return nms(boxes_xyxy + offsets[:, None], scores, iou_threshold)


def multilevel_roi_align(pooler: ROIPooler, features: list[Tensor], boxes_xyxy: Tensor) -> Tensor:
    """`ROIPooler.forward` for one image without skipping empty levels: (R, 4) -> (R, C, S, S).

    Each level pools every box and each box keeps its own level's result (`torch.where`),
    so no branch depends on how many boxes a level gets (R may be 0).
    """
    rois = torch.cat([torch.zeros_like(boxes_xyxy[:, :1]), boxes_xyxy], dim=1)  # (R, 5) batch index 0
    S = pooler.output_size
    if len(features) == 1:
        return roi_align(features[0], rois, S, pooler.scales[0], pooler.sampling_ratio, aligned=pooler.aligned)
    level_idx = assign_boxes_to_levels(
        boxes_xyxy, pooler.min_level, pooler.max_level, pooler.canonical_box_size, pooler.canonical_level,
        pooler.level_mapper,
    )  # (R,)
    out = None
    for level, (feature, scale) in enumerate(zip(features, pooler.scales)):
        pooled = roi_align(feature, rois, S, scale, pooler.sampling_ratio, aligned=pooler.aligned)  # (R, C, S, S)
        out = pooled if out is None else torch.where((level_idx == level)[:, None, None, None], pooled, out)
    return out


def sample_features_at_points(features: Tensor, stride: int, boxes_xyxy: Tensor, coords_box: Tensor) -> Tensor:
    """`point_sample_fine_grained_features` for one image, with R read from the tensors.

    features (1, C, H_f, W_f), boxes_xyxy (R, 4), coords_box (R, P, 2) -> (R, C, P).
    """
    C, H_f, W_f = features.shape[1:]
    P = coords_box.shape[1]
    coords_img = coords_box_to_img(coords_box, boxes_xyxy.to(coords_box.dtype))  # (R, P, 2)
    extent_img = torch._shape_as_tensor(features)[2:].flip(0).to(coords_box.dtype) * stride  # (2,) W_f, H_f in pixels
    coords_map = (coords_img / extent_img).reshape(1, -1, 2)  # (1, R*P, 2) image-normalised
    sampled = point_sample(features, coords_map)  # (1, C, R*P)
    return sampled.reshape(C, -1, P).transpose(0, 1)  # (R, C, P)


def most_uncertain_cells(mask_logits: Tensor, num_points: int) -> tuple[Tensor, Tensor]:
    """`get_uncertain_point_coords_on_grid(uncertainty(mask_logits), num_points)`, valid for R = 0.

    mask_logits (R, 1, S, S) -> point_indices (R, P) row-major, coords_box (R, P, 2) cell centres.
    The library's version reshapes with view(R, S*S); onnxruntime turns that into a
    reshape to (copy, -1), which it cannot resolve on an empty tensor. Flatten can.
    """
    S = mask_logits.shape[-1]  # fixed by the subdivision step, not by the input
    point_indices = uncertainty(mask_logits).flatten(1).topk(min(num_points, S * S), dim=1).indices  # (R, P)
    cols = (point_indices % S).to(torch.float32)
    rows = torch.div(point_indices, S, rounding_mode="floor").to(torch.float32)
    return point_indices, torch.stack([(cols + 0.5) / S, (rows + 0.5) / S], dim=-1)


def subdivide(predict_fn, num_rois_like: Tensor, init_resolution: int, steps: int, num_points: int) -> Tensor:
    """`pointsup.models.subdivision.subdivision_inference` with R taken from a tensor.

    predict_fn: coords_box (R, P, 2) -> logits (R, P); num_rois_like: any (R, ...) tensor.
    returns (R, S, S) logits, S = init_resolution * 2**steps. The loop has a fixed number
    of steps and points, so it unrolls into the graph.
    """
    S = init_resolution
    grid = grid_coords(1, S, device=num_rois_like.device)  # (1, S*S, 2)
    coords_box = grid.expand(num_rois_like.shape[0], -1, -1)  # (R, S*S, 2)
    mask_logits = predict_fn(coords_box).reshape(-1, 1, S, S)
    for _ in range(steps):
        mask_logits = F.interpolate(mask_logits, scale_factor=2, mode="bilinear", align_corners=False)
        S *= 2
        point_indices, coords_box = most_uncertain_cells(mask_logits, num_points)  # (R, P), (R, P, 2)
        point_logits = predict_fn(coords_box).to(mask_logits.dtype)  # (R, P)
        mask_logits = mask_logits.flatten(1).scatter(1, point_indices, point_logits).reshape(-1, 1, S, S)
    return mask_logits[:, 0]


# ----------------------------------------------------------------------------------------
# The exported module
# ----------------------------------------------------------------------------------------


class ExportableRCNN(nn.Module):
    """A `GeneralizedRCNN` in eval mode as one traceable function of one image.

    forward(image (3, H, W) RGB 0..255) -> boxes (D, 4), scores (D,), classes (D,),
    mask_probs (D, 1, M, M); see the module docstring. Shares the model's parameters.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        mask_head = getattr(getattr(model, "roi_heads", None), "mask_head", None)
        if not isinstance(mask_head, (MaskRCNNHead, PointRendMaskHead, ImplicitPointRendMaskHead)):
            raise ExportError(f"{type(model).__name__} cannot be exported to ONNX: only the R-CNN family "
                              f"(Mask R-CNN, PointRend, Implicit PointRend) can")
        self.model = model.eval()

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        size_xyxy = image_size_xyxy(image)  # (4,) W, H, W, H
        features = self.model.backbone(self.normalized_padded(image))
        proposals = self.proposals(features, size_xyxy)  # (R, 4)
        boxes, scores, classes = self.detections(features, proposals, size_xyxy)  # (D, 4), (D,), (D,)
        return boxes, scores, classes, self.mask_probs(features, boxes, classes)

    def normalized_padded(self, image: Tensor) -> Tensor:
        """(3, H, W) RGB 0..255 -> (1, 3, H', W') normalised, padded below/right to /32, as
        `collate` + `GeneralizedRCNN.normalize` do (padding 0 before or after normalising)."""
        m = self.model
        H, W = image.shape[-2:]
        pad = (0, (-W) % SIZE_DIVISIBILITY, 0, (-H) % SIZE_DIVISIBILITY)
        if m.pad_after_normalize:
            x = normalize_images(image[None], [], m.pixel_mean, m.pixel_std, m.input_format)
            return F.pad(x, pad)
        return normalize_images(F.pad(image[None], pad), [], m.pixel_mean, m.pixel_std, m.input_format)

    def proposals(self, features: dict[str, Tensor], size_xyxy: Tensor) -> Tensor:
        """`RPN.predict_proposals` (test settings) for one image -> (R, 4) xyxy, by score."""
        rpn = self.model.rpn
        features_per_level = [features[f] for f in rpn.in_features]
        anchors_per_level = rpn.anchor_generator([x.shape[-2:] for x in features_per_level])  # (A_l, 4) each
        logits_per_level, deltas_per_level = rpn.head(features_per_level)  # (1, A_l), (1, A_l, 4)
        pre_topk, post_topk = rpn.pre_nms_topk[1], rpn.post_nms_topk[1]
        boxes_all, scores_all, levels_all = [], [], []
        for level, (anchors, logits, deltas) in enumerate(zip(anchors_per_level, logits_per_level, deltas_per_level)):
            # k = min(pre_topk, A_l) as a tensor: A_l changes with the image size.
            k = torch._shape_as_tensor(logits)[1].clamp(max=pre_topk)
            top_logits, top_idx = logits[0].topk(k)  # (k,)
            boxes = rpn.box2box.apply_deltas(deltas[0][top_idx], anchors[top_idx])  # (k, 4)
            boxes_all.append(boxes)
            scores_all.append(top_logits)
            levels_all.append(torch.full_like(top_idx, level))
        boxes = clip_boxes(torch.cat(boxes_all), size_xyxy)  # (sum_k, 4)
        scores, levels = torch.cat(scores_all).float(), torch.cat(levels_all)
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = (wh > rpn.min_box_size).all(dim=1) & torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = per_class_nms(boxes, scores, levels, rpn.nms_thresh, size_xyxy.max())[:post_topk]
        return boxes[keep]

    def detections(self, features: dict[str, Tensor], proposals: Tensor, size_xyxy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`ROIHeads.predict_boxes` + the empty-box filter of `rescale_detections`, one image."""
        heads = self.model.roi_heads
        K = heads.num_classes
        roi_features = multilevel_roi_align(heads.box_pooler, [features[f] for f in heads.in_features], proposals)
        class_logits, box_deltas = heads.box_predictor(heads.box_head(roi_features))  # (R, K + 1), (R, 4K)
        scores = F.softmax(class_logits.float(), dim=-1)[:, :K]  # (R, K), background dropped
        boxes = clip_boxes(heads.box2box.apply_deltas(box_deltas, proposals).reshape(-1, K, 4), size_xyxy)  # (R, K, 4)
        keep = (scores > heads.score_thresh) & torch.isfinite(boxes).all(dim=-1)  # (R, K)
        if heads.min_box_size > 0:
            keep &= ((boxes[..., 2:] - boxes[..., :2]) >= heads.min_box_size).all(dim=-1)
        roi_idx, class_idx = torch.nonzero(keep).unbind(1)
        boxes, scores = boxes[roi_idx, class_idx], scores[roi_idx, class_idx]  # (R', 4), (R',)
        keep = per_class_nms(boxes, scores, class_idx, heads.nms_thresh, size_xyxy.max())[: heads.detections_per_image]
        boxes, scores, classes = boxes[keep], scores[keep], class_idx[keep]
        # As `rescale_detections`: a box with no area after clipping is not a detection.
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # (D,)
        return boxes[nonempty], scores[nonempty], classes[nonempty]

    def mask_probs(self, features: dict[str, Tensor], boxes: Tensor, classes: Tensor) -> Tensor:
        """(D, 4), (D,) -> (D, 1, M, M) probabilities of each detection's class on its box grid."""
        head = self.model.roi_heads.mask_head
        if isinstance(head, PointRendMaskHead):
            mask_logits = pointrend_mask_logits(head, features, boxes, classes)
        elif isinstance(head, ImplicitPointRendMaskHead):
            mask_logits = implicit_pointrend_mask_logits(head, features, boxes, classes)
        else:
            mask_logits = mask_rcnn_mask_logits(head, features, boxes, classes)
        return mask_logits.sigmoid()[:, None]


def select_class_channel(logits: Tensor, classes: Tensor) -> Tensor:
    """(D, K, ...) -> (D, ...): each detection's own class (a gather, valid for D = 0)."""
    index = classes.reshape(-1, *[1] * (logits.dim() - 1)).expand(-1, 1, *logits.shape[2:])
    return logits.gather(1, index)[:, 0]


def mask_rcnn_mask_logits(head: MaskRCNNHead, features: dict[str, Tensor], boxes: Tensor, classes: Tensor) -> Tensor:
    """`MaskRCNNHead.forward` in eval, one image: 14 x 14 RoIAlign -> convs -> 2x deconv -> (D, 28, 28) logits."""
    x = multilevel_roi_align(head.pooler, [features[f] for f in head.in_features], boxes)  # (D, C, 14, 14)
    all_logits = head.predictor(F.relu(head.deconv(head.convs(x))))  # (D, K, 28, 28)
    return select_class_channel(all_logits, classes)


def roi_grid_features(fine: Tensor, stride: int, boxes: Tensor, resolution: int) -> Tensor:
    """`pool_roi_features` for one image: (D, C, S, S) p2 features at S x S bin centres."""
    D, C = boxes.shape[0], fine.shape[1]
    coords_box = grid_coords(1, resolution, device=fine.device).expand(D, -1, -1)  # (D, S*S, 2)
    return sample_features_at_points(fine, stride, boxes, coords_box).reshape(D, C, resolution, resolution)


def pointrend_mask_logits(head: PointRendMaskHead, features: dict[str, Tensor], boxes: Tensor, classes: Tensor) -> Tensor:
    """`PointRendMaskHead.predict_masks`, one image, all detections at once -> (D, 224, 224) logits."""
    fine = features[head.in_feature]  # (1, C, H/4, W/4)
    coarse_logits = head.coarse_head(roi_grid_features(fine, head.stride, boxes, head.pooler_resolution))  # (D, K*7*7)
    S = head.coarse_resolution
    coarse_logits = coarse_logits.reshape(boxes.shape[0], head.num_classes, S, S)  # (D, K, 7, 7)

    def predict_fn(coords_box: Tensor) -> Tensor:  # `PointRendMaskHead.point_logits`: (D, P, 2) -> (D, P)
        fine_features = sample_features_at_points(fine, head.stride, boxes, coords_box)  # (D, C, P)
        logits = head.point_head(fine_features, point_sample(coarse_logits, coords_box))  # (D, K, P)
        return select_class_channel(logits, classes)

    return subdivide(predict_fn, boxes, head.subdivision_init_resolution, head.subdivision_steps, head.subdivision_num_points)


def implicit_pointrend_mask_logits(
    head: ImplicitPointRendMaskHead, features: dict[str, Tensor], boxes: Tensor, classes: Tensor
) -> Tensor:
    """`ImplicitPointRendMaskHead.predict_masks`, one image, all detections at once -> (D, 224, 224) logits.

    The point head's forward is restated with out-of-place ops: its Fourier encoding writes
    sin / cos into slices of an empty tensor (`out=`), which the tracer exports as an
    uninitialised tensor (wrong masks, no error), and `split_params` picks the layout with
    a dict lookup on a traced size.
    """
    fine = features[head.in_feature]  # (1, C, H/4, W/4)
    point_head = head.point_head
    params = head.parameter_head(roi_grid_features(fine, head.stride, boxes, head.pooler_resolution))  # (D, G)
    weights, biases = split_dynamic_params(point_head.select_classes(params, classes), point_head.layer_shapes_for(1))
    E = point_head.encoding_dim

    def predict_fn(coords_box: Tensor) -> Tensor:  # `ImplicitPointHead.forward`: (D, P, 2) -> (D, P)
        fine_features = sample_features_at_points(fine, head.stride, boxes, coords_box)  # (D, C, P)
        q = 2.0 * coords_box - 1.0  # box centre at 0, as `FourierPositionalEncoding`
        proj = (q @ point_head.encoding.gaussian_matrix) * (2.0 * math.pi)  # (D, P, E/2)
        encoding = torch.cat([proj.sin(), proj.cos()], dim=-1).transpose(1, 2)  # (D, E, P)
        # First layer on [encoding, features] without concatenating them, as the model does.
        x = torch.baddbmm(biases[0].unsqueeze(2), weights[0][:, :, :E], encoding)  # (D, H, P)
        x = torch.baddbmm(x, weights[0][:, :, E:], fine_features).relu()
        return dynamic_mlp(x, weights[1:], biases[1:])[:, 0]  # (D, P)

    return subdivide(predict_fn, boxes, head.subdivision_init_resolution, head.subdivision_steps, head.subdivision_num_points)


# ----------------------------------------------------------------------------------------
# From a checkpoint to an .onnx file
# ----------------------------------------------------------------------------------------


def check_exportable(cfg) -> None:
    """A clear ExportError for a configuration that has no ONNX export."""
    if cfg.model.meta_architecture != "rcnn":
        raise ExportError(f"model.meta_architecture {cfg.model.meta_architecture!r} has no ONNX export: "
                          f"{WHY_NOT_EXPORTABLE.get(cfg.model.meta_architecture, 'only rcnn models export')}")


def export_onnx(model: nn.Module, output: str, example_size: tuple[int, int] = (128, 160),
                opset: int = DEFAULT_OPSET) -> str:
    """Trace `ExportableRCNN(model)` on a random (3, *example_size) image and write the ONNX
    file atomically to `output`; returns `output`. The graph is not tied to example_size."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install pointsup[onnx]") from None
    import warnings

    from pointsup.utils.io import atomic_save

    wrapper = ExportableRCNN(model).eval()
    device = next(model.parameters()).device
    example = torch.rand(3, *example_size, generator=torch.Generator().manual_seed(0)).mul(255).to(device)

    def write(tmp_path: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about every Python number it sees; the ones left are shape
            # checks on fixed dims (roi_align's (R, 5), point_sample's (R, P, 2)): every size
            # that varies is read from a tensor (the tests run other sizes and counts).
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # The TorchScript exporter is chosen on purpose (module docstring).
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
            # Advanced indexing with nonzero() indices, never negative.
            warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
            torch.onnx.export(
                wrapper, (example,), tmp_path, dynamo=False, opset_version=opset,
                input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, dynamic_axes=DYNAMIC_AXES,
            )

    atomic_save(output, write)
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pointsup.export",
        description="Export a trained R-CNN-family model (Mask R-CNN, PointRend, Implicit PointRend) to ONNX: one (3, H, W) RGB 0..255 "
                    "image in; boxes, scores, classes and box-relative mask probabilities out (see pointsup/export.py).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--weights", required=True, default=argparse.SUPPRESS, help="a pointsup checkpoint (model_*.pth)")
    parser.add_argument("--config", default=None,
                        help="YAML config of the model; None = the config stored in the checkpoint")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="output format")
    parser.add_argument("--output", required=True, default=argparse.SUPPRESS, help="path of the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version (>= 16)")
    parser.add_argument("--example-size", type=int, nargs=2, default=[128, 160], metavar=("H", "W"),
                        help="size of the random image the graph is traced on (the graph accepts any size)")
    parser.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE",
                        help="config overrides on top of --config or the stored config, "
                             "e.g. model.roi_heads.score_thresh_test=0.3")
    return parser


def cli(argv: list[str] | None = None) -> str:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.opset < 16:
        parser.error("--opset must be >= 16 (RoiAlign with half-pixel alignment, aligned=True)")
    from pointsup.checkpoint import load_checkpoint
    from pointsup.predictor import config_for_checkpoint, load_model_and_categories

    state = load_checkpoint(args.weights)
    cfg = config_for_checkpoint(state, args.weights, args.config, args.set)
    try:
        check_exportable(cfg)
        model, class_names, _ = load_model_and_categories(cfg, state, torch.device("cpu"))
        export_onnx(model, args.output, tuple(args.example_size), args.opset)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"wrote {args.output} ({cfg.model.mask_head.name}, {len(class_names)} classes: {', '.join(class_names)})\n"
          f"input: image (3, H, W) float32 RGB 0..255, resized beforehand as in testing (short side "
          f"{cfg.data.min_size_test}, long side <= {cfg.data.max_size_test}); outputs: boxes (D, 4), scores (D,), "
          f"classes (D,), mask_probs (D, 1, M, M) on each box (paste: pointsup.models.postprocess)")
    return args.output


if __name__ == "__main__":
    cli()
