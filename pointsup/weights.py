"""Load pretrained weights from other libraries: torchvision, detectron2, MSRA / Caffe2 pickles.

    report = load_weights(model, "model_final_f10217.pkl")   # or a path, or an http(s) URL
    print(report)

Formats (`source="auto"` recognises them from the file's contents, not its name):

    "pointsup"            a pointsup training checkpoint: dict with "model" and "config"
                          (or a bare pointsup state dict)
    "torchvision"         a torchvision detection state dict (`maskrcnn_resnet50_fpn`):
                          keys "backbone.body.*", "backbone.fpn.inner_blocks.*", "rpn.head.*", ...
    "torchvision_resnet"  a torchvision ImageNet ResNet / ResNeXt state dict: backbone only
    "detectron2"          a detectron2 checkpoint: `.pth` (dict with "model" of tensors) or
                          model-zoo `.pkl` (pickle with numpy arrays under "model" and an
                          "__author__"); full models ("backbone.bottom_up.res2.0.conv1.weight",
                          "proposal_generator.rpn_head.*", "roi_heads.*") or backbones
                          converted to detectron2 names ("stem.conv1.weight", "res2.0...")
    "caffe2"              a raw Caffe2 / MSRA ImageNet pickle (`R-50.pkl`, `X-101-32x8d.pkl`)
                          with blobs such as "conv1_w", "res_conv1_bn_s", "res2_0_branch2a_w",
                          "fc1000_w": backbone only

Every key of the file is mapped to a pointsup name (the tables below), then matched against
the model's state dict. A full-model file must provide every model key and use every one of
its own; a backbone-only file must provide the whole ResNet. Anything else is a
`WeightsLoadError` listing the missing and unexpected keys. Shape mismatches (e.g. a new
number of classes) are refused too, unless `skip_mismatched_shapes=True`: those model
entries then keep their initialisation and the report lists them.

Files are read with `torch.load(weights_only=True)` (numpy arrays allowed for pointsup's RNG
states) and pickles with a restricted unpickler that only builds numpy arrays and plain
builtins, so loading a file never runs code from it.

Conventions that come with the weights (input channel order, pixel mean/std,
`stride_in_1x1`, inference settings) cannot be changed by loading: they are config fields.
`load_weights` compares them with the model and reports the differences as notices
(printed unless `verbose=False`); docs/MODEL_ZOO.md lists the settings per checkpoint.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

SOURCES = ("pointsup", "torchvision", "torchvision_resnet", "detectron2", "caffe2")

# Convention sets: (input_format, pixel_mean, pixel_std, stride_in_1x1) in the input order.
TORCHVISION_CONVENTION = ("RGB", [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], False)
MSRA_CONVENTION = ("BGR", [103.53, 116.28, 123.675], [1.0, 1.0, 1.0], True)  # R-50.pkl, R-101.pkl
FAIR_RESNEXT_CONVENTION = ("BGR", [103.53, 116.28, 123.675], [57.375, 57.12, 58.395], False)  # X-101-32x8d.pkl

# COCO's 80 category ids; torchvision's 91-way heads are indexed by category id (0 = background).
COCO_CATEGORY_IDS = (
    list(range(1, 12)) + list(range(13, 26)) + [27, 28] + list(range(31, 45)) + list(range(46, 66))
    + [67, 70] + list(range(72, 83)) + list(range(84, 91))
)

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "pointsup", "weights")


class WeightsLoadError(ValueError):
    """The file does not fit the model: missing / unexpected keys or shape mismatches."""


@dataclass
class LoadReport:
    """What `load_weights` did. Keys are the model's (pointsup) names unless said otherwise."""

    source: str
    path: str
    loaded: list[str] = field(default_factory=list)
    not_in_file: list[str] = field(default_factory=list)  # backbone-only files: left at their init
    skipped_shapes: list[str] = field(default_factory=list)  # "key: file (81, 1024) vs model (4, 1024)"
    ignored: list[str] = field(default_factory=list)  # file keys with no meaning here (classifier, counters)
    notices: list[str] = field(default_factory=list)  # conventions that differ from the model's

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.path} (format: {self.source})"]
        if self.not_in_file:
            lines.append(f"  {len(self.not_in_file)} model entries not in the file (kept their init): {_shorten(self.not_in_file)}")
        if self.skipped_shapes:
            lines.append(f"  skipped (shape mismatch, kept their init): {_shorten(self.skipped_shapes)}")
        if self.ignored:
            lines.append(f"  ignored file entries: {_shorten(self.ignored)}")
        lines += [f"  notice: {n}" for n in self.notices]
        return "\n".join(lines)


def _shorten(items: list[str], n: int = 20) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


# ----------------------------------------------------------------------------------------
# Reading files safely
# ----------------------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only build numpy arrays / dtypes and plain containers."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes written by protocol-2 pickles
        ("collections", "OrderedDict"),
        *(("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bytes", "bool", "complex")),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays and builtins are allowed")


def _read_pickle(path: str):
    with open(path, "rb") as f:
        # latin1: Caffe2 / detectron2 model-zoo pickles were written by Python 2.
        return _NumpyOnlyUnpickler(f, encoding="latin1").load()


def read_weights_file(path: str):
    """The object stored in `path`: torch files with weights_only=True, pickles restricted.

    Nothing in the file can run code; a file that is neither (garbage, truncated, or asking
    for other objects) is a WeightsLoadError naming `path`.
    """
    from pointsup.checkpoint import CheckpointError, safe_torch_load

    if zipfile.is_zipfile(path):  # torch.save's format since PyTorch 1.6
        try:
            return safe_torch_load(path)
        except CheckpointError as e:
            raise WeightsLoadError(str(e)) from None
    try:
        return _read_pickle(path)
    except Exception as pickle_error:  # UnpicklingError, EOFError, ValueError on garbage bytes
        try:  # the legacy (pre-1.6) torch.save format is not a zip file either
            return safe_torch_load(path)
        except CheckpointError:
            raise WeightsLoadError(
                f"refusing to load {path}: not a torch file or a numpy-only pickle "
                f"({type(pickle_error).__name__}: {pickle_error})"
            ) from None


def resolve_path(path_or_url: str, cache_dir: str | None = None) -> str:
    """A local path as is; an http(s) URL is downloaded once into the cache dir."""
    if not re.match(r"^https?://", path_or_url):
        if not os.path.exists(path_or_url):
            raise FileNotFoundError(f"weights file not found: {path_or_url}")
        return path_or_url
    cache_dir = cache_dir or os.environ.get("POINTSUP_WEIGHTS_CACHE", DEFAULT_CACHE_DIR)
    os.makedirs(cache_dir, exist_ok=True)
    # Keep the URL's folder in the name: detectron2 model-zoo files are all "model_final_*.pkl".
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path_or_url.split("://", 1)[1])[-200:]
    local = os.path.join(cache_dir, name)
    if not os.path.exists(local):
        torch.hub.download_url_to_file(path_or_url, local, progress=True)
    return local


# ----------------------------------------------------------------------------------------
# Recognising the format
# ----------------------------------------------------------------------------------------


def _to_tensors(state: dict) -> dict[str, Tensor]:
    out = {}
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(v, Tensor):
            out[k] = v
    return out


def detect_format(obj) -> tuple[str, dict[str, Tensor], dict]:
    """(source, flat state dict of tensors, extra info) of a loaded weights file."""
    if not isinstance(obj, dict):
        raise WeightsLoadError(f"expected a dict (state dict or checkpoint), got {type(obj).__name__}")
    info: dict = {}
    if "model" in obj and isinstance(obj["model"], dict):
        state = _to_tensors(obj["model"])
        if "config" in obj:
            return "pointsup", state, {"config": obj["config"]}
        info["author"] = obj.get("__author__", "")
        if any(_is_caffe2_key(k) for k in state):
            return "caffe2", state, info
        if any(k.startswith("backbone.bottom_up.layer") for k in state):
            return "pointsup", state, info
        return "detectron2", state, info
    if "blobs" in obj and isinstance(obj["blobs"], dict):  # Detectron1 detection pickles
        return "caffe2", _to_tensors(obj["blobs"]), info
    state = _to_tensors(obj)
    keys = list(state)
    if any(k.startswith("backbone.body.") for k in keys):
        return "torchvision", state, info
    if any(k.startswith("backbone.bottom_up.layer") for k in keys) or any(k.startswith("rpn.head.objectness") for k in keys):
        return "pointsup", state, info
    if any(k.startswith(("backbone.bottom_up.res", "backbone.bottom_up.stem", "stem.", "res2.")) for k in keys):
        return "detectron2", state, info
    if any(_is_caffe2_key(k) for k in keys):
        return "caffe2", state, info
    if any(k.startswith("layer1.") for k in keys):
        return "torchvision_resnet", state, info
    raise WeightsLoadError(f"cannot recognise the weights format from keys such as {_shorten(keys, 8)}")


def _is_caffe2_key(key: str) -> bool:
    return bool(re.match(r"^(conv1_w|res_conv1_bn_[sb]|res\d+_\d+_branch|fc1000_)", key))


# ----------------------------------------------------------------------------------------
# Key mappings. Each maps a file key to a pointsup key (None: ignore the entry) and
# transforms the few tensors whose layout differs. `prefix` is where the ResNet lives in the
# model ("backbone.bottom_up." for the R-CNN family, "" for a bare ResNet).
# ----------------------------------------------------------------------------------------

# pointsup name of each block's conv/norm, for detectron2's conv{k} / conv{k}.norm / shortcut.
_D2_BLOCK = [
    (r"conv(\d)\.norm\.(\w+)$", r"bn\1.\2"),
    (r"conv(\d)\.(weight|bias)$", r"conv\1.\2"),
    (r"shortcut\.norm\.(\w+)$", r"downsample.1.\1"),
    (r"shortcut\.(weight|bias)$", r"downsample.0.\1"),
]


def _d2_resnet_key(key: str) -> str | None:
    """detectron2 ResNet key without prefix ("stem.conv1.norm.weight", "res2.0.conv1.weight")."""
    m = re.match(r"^stem\.conv1\.norm\.(\w+)$", key)
    if m:
        return f"bn1.{m.group(1)}"
    m = re.match(r"^stem\.conv1\.(weight|bias)$", key)
    if m:
        return f"conv1.{m.group(1)}"
    m = re.match(r"^res(\d)\.(\d+)\.(.+)$", key)
    if m:
        stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
        for pattern, repl in _D2_BLOCK:
            if re.match(pattern, rest):
                return f"layer{stage - 1}.{block}." + re.sub(pattern, repl, rest)
    return None


def _map_detectron2(state: dict[str, Tensor], ctx: dict) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """detectron2 names -> pointsup names. Returns (mapped, pointsup key -> file key, ignored)."""
    fpn_first = ctx.get("fpn_first_level", 2)
    mapped, origin, ignored = {}, {}, []

    # PointRend's pre-2020-11 layout: roi_heads.mask_coarse_head / mask_point_head, and
    # coarse_mask_fc{k} for the coarse head's fcs.
    def normalise(k: str) -> str:
        k = k.replace("roi_heads.mask_coarse_head.", "roi_heads.mask_head.coarse_head.")
        k = k.replace("roi_heads.mask_point_head.", "roi_heads.mask_head.point_head.")
        return re.sub(r"(coarse_head|parameter_head)\.coarse_mask_fc(\d)", r"\1.fc\2", k)

    keys = {normalise(k): k for k in state}
    has_reduce_channel = {
        head: any(k.startswith(f"roi_heads.mask_head.{head}.reduce_channel_dim_conv.") for k in keys)
        for head in ("coarse_head", "parameter_head")
    }
    for key, file_key in keys.items():
        new = None
        if key.startswith("backbone.bottom_up."):
            resnet = _d2_resnet_key(key[len("backbone.bottom_up."):])
            new = ctx["prefix"] + resnet if resnet else None
        elif key.startswith(("stem.", "res")) and (resnet := _d2_resnet_key(key)):  # a converted ImageNet backbone
            new = ctx["prefix"] + resnet
        elif m := re.match(r"^backbone\.fpn_(lateral|output)(\d)\.(norm\.)?(\w+)$", key):
            kind = "lateral_convs" if m.group(1) == "lateral" else "output_convs"
            new = f"backbone.fpn.{kind}.{int(m.group(2)) - fpn_first}.{1 if m.group(3) else 0}.{m.group(4)}"
        elif m := re.match(r"^proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.(weight|bias)$", key):
            new = f"rpn.head.{m.group(1)}.{m.group(2)}"
        elif m := re.match(r"^roi_heads\.box_head\.fc(\d)\.(weight|bias)$", key):
            new = f"roi_heads.box_head.fcs.{int(m.group(1)) - 1}.{m.group(2)}"
        elif re.match(r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)$", key):
            new = key  # same layout: K + 1 logits with background last, 4K class-specific deltas
        elif m := re.match(r"^roi_heads\.mask_head\.mask_fcn(\d)\.(weight|bias)$", key):
            new = f"roi_heads.mask_head.convs.{2 * (int(m.group(1)) - 1)}.{m.group(2)}"
        elif re.match(r"^roi_heads\.mask_head\.(deconv|predictor)\.(weight|bias)$", key):
            new = key
        elif m := re.match(r"^roi_heads\.mask_head\.(coarse_head|parameter_head)\.(\w+)\.(weight|bias)$", key):
            head, layer, p = m.groups()
            if layer == "reduce_channel_dim_conv":
                new = f"roi_heads.mask_head.{head}.convs.0.{p}"
            elif layer == "reduce_spatial_dim_conv":
                new = f"roi_heads.mask_head.{head}.convs.{2 if has_reduce_channel[head] else 0}.{p}"
            elif fc := re.match(r"^fc(\d)$", layer):
                new = f"roi_heads.mask_head.{head}.fcs.{2 * (int(fc.group(1)) - 1)}.{p}"
            elif layer == "prediction":
                new = f"roi_heads.mask_head.{head}.prediction.{p}"
        elif m := re.match(r"^roi_heads\.mask_head\.point_head\.fc(\d)\.(weight|bias)$", key):
            new = f"roi_heads.mask_head.point_head.layers.{int(m.group(1)) - 1}.{m.group(2)}"
        elif key in ("roi_heads.mask_head.point_head.predictor.weight", "roi_heads.mask_head.point_head.predictor.bias"):
            new = key
        elif key == "roi_heads.mask_head.point_head.positional_encoding_gaussian_matrix":
            new = "roi_heads.mask_head.point_head.encoding.gaussian_matrix"
        elif key in ("pixel_mean", "pixel_std") or "anchor_generator" in key:
            ignored.append(file_key)  # normalisation (compared separately), anchors (computed)
            continue
        if new is None:
            new = "?" + file_key  # unknown: reported as unexpected
        mapped[new] = state[file_key]
        origin[new] = file_key
    return mapped, origin, ignored


def to_detectron2(state: dict[str, Tensor], prefix: str = "backbone.bottom_up.", fpn_first_level: int = 2) -> dict[str, Tensor]:
    """The inverse mapping: a pointsup R-CNN state dict under detectron2's names.

    Used by the tests to build detectron2-layout checkpoints; handy to export a model too.
    """
    out = {}
    has_reduce_channel = {
        head: f"roi_heads.mask_head.{head}.convs.2.weight" in state for head in ("coarse_head", "parameter_head")
    }
    block = [
        (r"bn(\d)\.(\w+)$", r"conv\1.norm.\2"),
        (r"conv(\d)\.(weight|bias)$", r"conv\1.\2"),
        (r"downsample\.1\.(\w+)$", r"shortcut.norm.\1"),
        (r"downsample\.0\.(weight|bias)$", r"shortcut.\1"),
    ]
    for key, value in state.items():
        new = None
        if key.startswith(prefix) and (rest := key[len(prefix):]):
            if m := re.match(r"^bn1\.(\w+)$", rest):
                new = f"stem.conv1.norm.{m.group(1)}"
            elif m := re.match(r"^conv1\.(weight|bias)$", rest):
                new = f"stem.conv1.{m.group(1)}"
            elif m := re.match(r"^layer(\d)\.(\d+)\.(.+)$", rest):
                for pattern, repl in block:
                    if re.match(pattern, m.group(3)):
                        new = f"res{int(m.group(1)) + 1}.{m.group(2)}." + re.sub(pattern, repl, m.group(3))
            new = "backbone.bottom_up." + new if new and prefix else new
        elif m := re.match(r"^backbone\.fpn\.(lateral|output)_convs\.(\d+)\.([01])\.(\w+)$", key):
            norm = "norm." if m.group(3) == "1" else ""
            new = f"backbone.fpn_{m.group(1)}{int(m.group(2)) + fpn_first_level}.{norm}{m.group(4)}"
        elif key.startswith("rpn.head."):
            new = "proposal_generator.rpn_head." + key[len("rpn.head."):]
        elif m := re.match(r"^roi_heads\.box_head\.fcs\.(\d+)\.(\w+)$", key):
            new = f"roi_heads.box_head.fc{int(m.group(1)) + 1}.{m.group(2)}"
        elif m := re.match(r"^roi_heads\.mask_head\.convs\.(\d+)\.(\w+)$", key):
            new = f"roi_heads.mask_head.mask_fcn{int(m.group(1)) // 2 + 1}.{m.group(2)}"
        elif m := re.match(r"^roi_heads\.mask_head\.(coarse_head|parameter_head)\.convs\.(\d)\.(\w+)$", key):
            head, i, p = m.groups()
            name = "reduce_channel_dim_conv" if (i == "0" and has_reduce_channel[head]) else "reduce_spatial_dim_conv"
            new = f"roi_heads.mask_head.{head}.{name}.{p}"
        elif m := re.match(r"^roi_heads\.mask_head\.(coarse_head|parameter_head)\.fcs\.(\d+)\.(\w+)$", key):
            new = f"roi_heads.mask_head.{m.group(1)}.fc{int(m.group(2)) // 2 + 1}.{m.group(3)}"
        elif m := re.match(r"^roi_heads\.mask_head\.point_head\.layers\.(\d+)\.(\w+)$", key):
            new = f"roi_heads.mask_head.point_head.fc{int(m.group(1)) + 1}.{m.group(2)}"
        elif key == "roi_heads.mask_head.point_head.encoding.gaussian_matrix":
            new = "roi_heads.mask_head.point_head.positional_encoding_gaussian_matrix"
        else:
            new = key  # box_predictor, mask deconv / predictor, coarse prediction, point predictor
        out[new] = value
    return out


def _map_torchvision(state: dict[str, Tensor], ctx: dict) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """torchvision detection names -> pointsup names; class 0 (background) moves/drops."""
    mapped, origin, ignored = {}, {}, []
    classes = ctx.get("torchvision_classes")  # file class index of each pointsup class
    for key, value in state.items():
        new = None
        if key.startswith("backbone.body."):
            new = ctx["prefix"] + key[len("backbone.body."):]
        elif m := re.match(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(?:0\.)?(weight|bias)$", key):
            kind = "lateral_convs" if m.group(1) == "inner" else "output_convs"
            new = f"backbone.fpn.{kind}.{m.group(2)}.0.{m.group(3)}"
        elif m := re.match(r"^rpn\.head\.conv\.(?:0\.0\.)?(weight|bias)$", key):
            new = f"rpn.head.conv.{m.group(1)}"
        elif m := re.match(r"^rpn\.head\.(cls_logits|bbox_pred)\.(weight|bias)$", key):
            new = f"rpn.head.{'objectness_logits' if m.group(1) == 'cls_logits' else 'anchor_deltas'}.{m.group(2)}"
        elif m := re.match(r"^roi_heads\.box_head\.fc(6|7)\.(weight|bias)$", key):
            new = f"roi_heads.box_head.fcs.{int(m.group(1)) - 6}.{m.group(2)}"
        elif m := re.match(r"^roi_heads\.box_predictor\.cls_score\.(weight|bias)$", key):
            # torchvision: background first; pointsup / detectron2: background last.
            fg = value[classes] if classes is not None else value[1:]
            new, value = f"roi_heads.box_predictor.cls_score.{m.group(1)}", torch.cat([fg, value[:1]])
        elif m := re.match(r"^roi_heads\.box_predictor\.bbox_pred\.(weight|bias)$", key):
            per_class = value.view(-1, 4, *value.shape[1:])  # (K + 1, 4, ...): drop background's deltas
            fg = per_class[classes] if classes is not None else per_class[1:]
            new, value = f"roi_heads.box_predictor.bbox_pred.{m.group(1)}", fg.reshape(-1, *value.shape[1:])
        elif m := re.match(r"^roi_heads\.mask_head\.(?:(\d+)\.0|mask_fcn(\d))\.(weight|bias)$", key):
            index = int(m.group(1)) if m.group(1) is not None else int(m.group(2)) - 1
            new = f"roi_heads.mask_head.convs.{2 * index}.{m.group(3)}"
        elif m := re.match(r"^roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)$", key):
            new = f"roi_heads.mask_head.deconv.{m.group(1)}"
        elif m := re.match(r"^roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)$", key):
            new, value = f"roi_heads.mask_head.predictor.{m.group(1)}", value[classes] if classes is not None else value[1:]
        if new is None:
            new = "?" + key
        mapped[new] = value
        origin[new] = key
    return mapped, origin, ignored


def _map_torchvision_resnet(state: dict[str, Tensor], ctx: dict) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """torchvision ImageNet ResNet: the same names as pointsup's ResNet; the classifier is dropped."""
    mapped, origin, ignored = {}, {}, []
    for key, value in state.items():
        if key.startswith("fc."):
            ignored.append(key)
            continue
        mapped[ctx["prefix"] + key] = value
        origin[ctx["prefix"] + key] = key
    return mapped, origin, ignored


_C2_NORM = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}


def _map_caffe2(state: dict[str, Tensor], ctx: dict) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """MSRA / Caffe2 blob names -> pointsup ResNet names (the classifier and momenta dropped).

    res{s}_{j}_branch2{a,b,c} are block j's three convs of stage s (= layer{s-1}),
    branch1 its projection shortcut, *_bn_{s,b} the folded BatchNorm scale and shift
    (Caffe2's AffineChannel: no running statistics, so the loader sets mean 0, var 1).
    """
    mapped, origin, ignored = {}, {}, []
    for key, value in state.items():
        new = None
        if key.endswith("_momentum") or key.startswith(("fc1000_", "pred_")):
            ignored.append(key)
            continue
        if key == "conv1_w":
            new = "conv1.weight"
        elif key == "conv1_b":
            new = "conv1.bias"
        elif m := re.match(r"^res_conv1_bn_(s|b|rm|riv)$", key):
            new = f"bn1.{_C2_NORM[m.group(1)]}"
        elif m := re.match(r"^res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|b|bn_s|bn_b|bn_rm|bn_riv)$", key):
            stage, block, branch, kind = m.groups()
            layer = f"layer{int(stage) - 1}.{block}."
            conv, norm = {"1": ("downsample.0", "downsample.1"), "2a": ("conv1", "bn1"), "2b": ("conv2", "bn2"), "2c": ("conv3", "bn3")}[branch]
            if kind in ("w", "b"):
                new = layer + conv + (".weight" if kind == "w" else ".bias")
            else:
                new = layer + norm + "." + _C2_NORM[kind[3:]]
        if new is None:
            mapped["?" + key] = value
            origin["?" + key] = key
            continue
        mapped[ctx["prefix"] + new] = value
        origin[ctx["prefix"] + new] = key
    # AffineChannel has no statistics: mean 0, var 1 makes FrozenBN the same affine map
    # (up to its eps), which is what detectron2 does for these files.
    for key in list(mapped):
        if key.endswith(".weight") and (key[: -len("weight")] + "running_mean") in ctx["model_keys"]:
            base = key[: -len("weight")]
            if base + "running_mean" not in mapped:
                mapped[base + "running_mean"] = torch.zeros_like(mapped[key])
                mapped[base + "running_var"] = torch.ones_like(mapped[key])
                origin[base + "running_mean"] = origin[base + "running_var"] = "(AffineChannel: none)"
    return mapped, origin, ignored


_MAPPERS: dict[str, Callable] = {
    "detectron2": _map_detectron2,
    "torchvision": _map_torchvision,
    "torchvision_resnet": _map_torchvision_resnet,
    "caffe2": _map_caffe2,
}


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------


def _resnet_prefix(model: nn.Module) -> str:
    from pointsup.models.backbone import ResNet

    for name, module in model.named_modules():
        if isinstance(module, ResNet):
            return name + "." if name else ""
    raise WeightsLoadError("the model has no pointsup ResNet to load backbone weights into")


def load_weights(
    model: nn.Module,
    path_or_url: str,
    *,
    skip_mismatched_shapes: bool = False,
    source: str = "auto",
    cache_dir: str | None = None,
    verbose: bool = True,
) -> LoadReport:
    """Load a checkpoint of any supported format (module docstring) into `model`.

    path_or_url: a local file, or an http(s) URL downloaded once into `cache_dir`
        ($POINTSUP_WEIGHTS_CACHE, default ~/.cache/pointsup/weights).
    skip_mismatched_shapes: keep the model's own values where the file's shape differs
        (e.g. a new number of classes) instead of raising; the report lists them.
    source: "auto" or one of SOURCES to force the format.
    Raises WeightsLoadError naming every missing / unexpected key and shape mismatch.
    """
    if source != "auto" and source not in SOURCES:
        raise ValueError(f"source must be 'auto' or one of {SOURCES}, got {source!r}")
    path = resolve_path(path_or_url, cache_dir)
    detected, state, info = detect_format(read_weights_file(path))
    source = detected if source == "auto" else source

    own = model.state_dict()
    ctx = _mapping_context(model, own, source, state)
    mapped, origin, ignored = _map_keys(source, state, ctx, own)
    _check_keys(model, path, source, own, mapped, origin, ctx, skip_mismatched_shapes)

    report = LoadReport(source=source, path=path, ignored=ignored)
    _copy_into_model(model, own, mapped, report)
    report.notices = convention_notices(model, source, state, info, ctx)
    if verbose:
        print(report)
    return report


def _mapping_context(model: nn.Module, own: dict[str, Tensor], source: str, state: dict[str, Tensor]) -> dict:
    """What the key mappings need to know about the model: model_keys, prefix (where its
    ResNet lives), fpn_first_level, backbone_only (the file holds a ResNet only) and, for
    torchvision files, torchvision_classes."""
    backbone_only = source in ("torchvision_resnet", "caffe2") or (
        source == "detectron2" and not any(k.startswith(("backbone.", "roi_heads.", "proposal_generator.")) for k in state)
    )
    ctx = {"model_keys": set(own), "prefix": "", "fpn_first_level": 2, "backbone_only": backbone_only}
    if source != "pointsup":
        try:
            ctx["prefix"] = _resnet_prefix(model)
        except WeightsLoadError:
            if backbone_only:
                raise
        fpn = getattr(getattr(model, "backbone", None), "fpn", None)
        if fpn is not None:
            ctx["fpn_first_level"] = int(fpn.in_features[0][1:])
    if source == "torchvision":
        ctx["torchvision_classes"] = _torchvision_class_rows(state, model)
    return ctx


def _map_keys(
    source: str, state: dict[str, Tensor], ctx: dict, own: dict[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """The file's tensors under pointsup names: (mapped, pointsup key -> file key, ignored file keys)."""
    if source == "pointsup":
        mapped, origin, ignored = dict(state), {k: k for k in state}, []
    else:
        mapped, origin, ignored = _MAPPERS[source](state, ctx)
    # BatchNorm's step counters mean nothing at inference; FrozenBN has none. Either side may lack them.
    for k in [k for k in mapped if k.endswith("num_batches_tracked") and k not in own]:
        ignored.append(origin.pop(k))
        del mapped[k]
    return mapped, origin, ignored


def _check_keys(
    model: nn.Module, path: str, source: str, own: dict[str, Tensor], mapped: dict[str, Tensor],
    origin: dict[str, str], ctx: dict, skip_mismatched_shapes: bool,
) -> None:
    """Raise WeightsLoadError listing every missing / unexpected key and (unless skipped) shape mismatch.

    A full-model file must cover the whole model; a backbone-only file the whole ResNet.
    Entries are named by the model's key, with the file's key in brackets where it differs.
    """
    def named(k: str) -> str:
        return k if origin[k] == k else f"{k} (file: {origin[k]})"

    required = [k for k in own if k.startswith(ctx["prefix"])] if ctx["backbone_only"] else list(own)
    missing = [k for k in required if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = [origin[k] + ("" if k.startswith("?") or origin[k] == k else f" (as {k})") for k in mapped if k not in own]
    mismatched = [
        f"{named(k)}: file {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
        for k in mapped
        if k in own and mapped[k].shape != own[k].shape
    ]
    if not (missing or unexpected or (mismatched and not skip_mismatched_shapes)):
        return
    hint = " (is it a ResNet of the same depth / groups / width?)" if ctx["backbone_only"] else ""
    lines = [f"cannot load {path} (format: {source}) into {type(model).__name__}{hint}:"]
    for title, keys, why in (("missing keys", missing, "in the model, not in the file"),
                             ("unexpected keys", unexpected, "in the file, not in the model"),
                             ("shape mismatches", mismatched, "pass skip_mismatched_shapes=True to keep the model's")):
        if keys:
            lines.append(f"  {title}: {_shorten(keys)} ({why})")
    raise WeightsLoadError("\n".join(lines))


def _copy_into_model(model: nn.Module, own: dict[str, Tensor], mapped: dict[str, Tensor], report: LoadReport) -> None:
    """Load the checked tensors (in the model's dtypes); entries of another shape keep their init."""
    new_state = dict(own)
    for k, v in mapped.items():
        if own[k].shape != v.shape:
            report.skipped_shapes.append(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}")
            continue
        new_state[k] = v.to(dtype=own[k].dtype)
        report.loaded.append(k)
    report.not_in_file = [k for k in own if k not in mapped]
    model.load_state_dict(new_state)


def _torchvision_class_rows(state: dict[str, Tensor], model: nn.Module) -> list[int] | None:
    """Rows of torchvision's (K + 1)-way head for each pointsup class, or None for "all but 0".

    torchvision's COCO head has 91 rows indexed by category id. A model with 90 classes takes
    all of them (pointsup class k = category id k + 1, exact); one with 80 classes takes
    COCO's 80 category ids, the contiguous ids of pointsup's COCO data set (then the softmax
    runs over 81 instead of 91 logits: scores can differ slightly from torchvision's).
    """
    num_rows = state["roi_heads.box_predictor.cls_score.weight"].shape[0] if "roi_heads.box_predictor.cls_score.weight" in state else 0
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    model_classes = predictor.cls_score.out_features - 1 if predictor is not None else None
    if num_rows == 91 and model_classes == 80:
        return list(COCO_CATEGORY_IDS)
    return None


def convention_notices(model: nn.Module, source: str, state: dict[str, Tensor], info: dict, ctx: dict) -> list[str]:
    """Differences between the conventions the weights need and those the model is set to."""
    if source == "pointsup":
        return []
    if source in ("torchvision", "torchvision_resnet"):
        expected, name = TORCHVISION_CONVENTION, "torchvision weights"
    else:
        grouped = any(getattr(m, "groups", 1) > 1 for m in model.modules() if isinstance(m, nn.Conv2d))
        expected, name = (FAIR_RESNEXT_CONVENTION, "FAIR ResNeXt weights") if grouped else (MSRA_CONVENTION, "MSRA / detectron2 weights")
    input_format, mean, std, stride_in_1x1 = expected
    notices = []
    have_format = getattr(model, "input_format", "RGB")
    if have_format != input_format:
        notices.append(f"{name} expect {input_format} input: set model.input_format: {input_format} (the model is {have_format})")
    for attr, want in (("pixel_mean", mean), ("pixel_std", std)):
        have = getattr(model, attr, None)
        if have is not None and not torch.allclose(have.flatten().cpu(), torch.tensor(want), atol=1e-2):
            notices.append(f"{name} expect model.{attr}: {want} ({input_format} order); the model has {[round(v, 3) for v in have.flatten().tolist()]}")
    model_stride_in_1x1 = _stride_in_1x1(model)
    if model_stride_in_1x1 is not None and model_stride_in_1x1 != stride_in_1x1:
        notices.append(f"{name} expect model.backbone.stride_in_1x1: {str(stride_in_1x1).lower()} (the model has {str(model_stride_in_1x1).lower()})")
    if source == "caffe2":
        notices.append("Caffe2 AffineChannel norms carry no statistics: running_mean 0, running_var 1 (use norm FrozenBN)")
    if source == "torchvision":
        pooler = getattr(getattr(model, "roi_heads", None), "box_pooler", None)
        if pooler is not None and getattr(pooler, "aligned", True):
            notices.append("torchvision's inference also needs its RoIAlign / anchor settings: use configs/torchvision/maskrcnn_resnet50_fpn_v1.yaml")
        if ctx.get("torchvision_classes") is not None:
            notices.append("torchvision's 91-way COCO head was cut to the 80 COCO categories (softmax over 81 logits instead of 91)")
    return notices


def _stride_in_1x1(model: nn.Module) -> bool | None:
    from pointsup.models.backbone import Bottleneck

    for m in model.modules():
        if isinstance(m, Bottleneck) and m.downsample is not None and m.downsample[0].stride[0] == 2:
            return m.conv1.stride[0] == 2
    return None
