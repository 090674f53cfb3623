"""Typed configuration: dataclasses with defaults, YAML files with `_base_`, `--set` overrides.

The defaults below are the *built-in default job*: a small ResNet-18-FPN Mask R-CNN trained
with 10-point supervision on the synthetic data set, sized to train on a 2-core CPU in
minutes. The YAML files under `configs/` override them for the paper's COCO setups
(detectron2's defaults: R50-FPN, FrozenBN, 800px, ...).
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field

import yaml


def _coco_root() -> str:
    return os.environ.get("POINTSUP_DATASETS", "datasets")


@dataclass
class DataConfig:
    # Any COCO-format data set: instances JSON (with masks and/or point_coords/point_labels)
    # plus an image folder. Empty train_json means: the built-in synthetic data set.
    train_json: str = ""
    train_images: str = ""
    val_json: str = ""
    val_images: str = ""
    # Built-in synthetic data (used when train_json is empty); created on first use.
    synthetic_dir: str = ".cache/pointsup/synthetic"
    synthetic_num_train: int = 600
    synthetic_num_val: int = 100
    synthetic_image_size: int = 128
    # Variants of the generator (pointsup/data/synthetic.py) for checking a recipe elsewhere.
    synthetic_max_objects: int = 6
    synthetic_num_classes: int = 5  # 1..8 shape classes
    synthetic_background: str = "texture"  # "texture", "flat" or "clutter"
    # Point simulation for the built-in data (paper sec. 3.1): P_N with N points per box.
    num_points: int = 10
    # Transforms (sizes are the shortest edge in pixels; one is chosen per image).
    min_size_train: list[int] = field(default_factory=lambda: [112, 128, 144])
    max_size_train: int = 256
    min_size_test: int = 128
    max_size_test: int = 256
    # How images are resized (`pointsup.data.transforms.resize_image`): "torch" = antialiased
    # bilinear on the float image; "pil" = PIL bilinear on the 8-bit image, detectron2's
    # resize exactly (use it with detectron2 / MSRA weights, see docs/MODEL_ZOO.md);
    # "torch_uint8" = antialiased bilinear on the 8-bit image (the fastest on CPU, within one
    # gray level of "torch"; docs/PERFORMANCE.md, data loader).
    resize_backend: str = "torch"
    random_flip: bool = True
    random_crop: bool = False
    crop_size: list[float] = field(default_factory=lambda: [0.7, 0.7])  # relative (h, w)
    # Paper sec. 3.2: each iteration every box keeps a random K of its N points (K = N // 2
    # when point_aug_num is 0).
    point_aug: bool = False
    point_aug_num: int = 0
    filter_empty: bool = True  # skip training images without (non-crowd) objects
    # file_name entries must resolve inside the image folder; true also allows absolute
    # paths and `..` that leave it (for JSON files that point at images elsewhere on purpose).
    allow_paths_outside_image_root: bool = False
    num_workers: int = 2


@dataclass
class BackboneConfig:
    depth: int = 18  # 18, 34, 50, 101
    groups: int = 1  # 32 for ResNeXt-101 32x8d
    width_per_group: int = 64  # 8 for ResNeXt-101 32x8d
    norm: str = "BN"  # "FrozenBN", "BN", "SyncBN", "GN"
    freeze_at: int = 0  # 0: train everything; 2: freeze stem + res2 (detectron2 default)
    stride_in_1x1: bool = False  # True for MSRA/detectron2 weights, False for torchvision's
    fpn_channels: int = 64  # 256 in the paper (configs/coco); 64 keeps the CPU default job fast
    fpn_norm: str = ""  # "" or "GN"
    weights: str = ""  # path to ImageNet weights (torchvision state dict); "" = random init


@dataclass
class RPNConfig:
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])  # one per level P2..P6
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    iou_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.7])
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_topk_train: int = 2000  # per level
    pre_nms_topk_test: int = 1000  # per level
    post_nms_topk_train: int = 1000  # per image
    post_nms_topk_test: int = 1000  # per image
    nms_thresh: float = 0.7
    min_box_size: float = 0.0
    smooth_l1_beta: float = 0.0  # 0 = L1 (detectron2 default)
    # torchvision's anchor conventions (configs/torchvision): cell anchors rounded to whole
    # pixels, and each level's stride taken as padded_size // grid_size (P6 of an 800-pixel
    # image then has stride 61, not 64). False = detectron2's exact anchors.
    round_anchors: bool = False
    anchor_stride_from_grid: bool = False


@dataclass
class ROIHeadsConfig:
    batch_size_per_image: int = 64  # 512 in detectron2 (configs/coco); small default for CPU
    positive_fraction: float = 0.25
    iou_threshold: float = 0.5
    pooler_resolution: int = 7
    fc_dim: int = 256  # 1024 in detectron2 (configs/coco)
    num_fc: int = 2
    bbox_reg_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])
    score_thresh_test: float = 0.05
    nms_thresh_test: float = 0.5
    detections_per_image: int = 100
    smooth_l1_beta: float = 0.0
    # RoIAlign of the box head. detectron2 ("ROIAlignV2"): aligned=True, sampling_ratio 0,
    # level = floor(4 + log2(sqrt(area) / 224 + 1e-8)). torchvision's MultiScaleRoIAlign:
    # aligned=False, sampling_ratio 2, level_mapper "torchvision" (eps 1e-6 outside the log).
    pooler_aligned: bool = True
    pooler_sampling_ratio: int = 0
    pooler_level_mapper: str = "detectron2"  # "detectron2" or "torchvision"
    min_box_size_test: float = 0.0  # torchvision drops detections narrower than 1e-2 px


@dataclass
class MaskHeadConfig:
    name: str = "mask_rcnn"  # "mask_rcnn", "pointrend", "implicit_pointrend"
    supervision: str = "points"  # "masks" (full masks) or "points" (P_N point labels)
    # Mask R-CNN head
    pooler_resolution: int = 14
    pooler_aligned: bool = True  # as roi_heads.pooler_* (Mask R-CNN head only)
    pooler_sampling_ratio: int = 0
    pooler_level_mapper: str = "detectron2"
    num_conv: int = 4
    conv_dim: int = 64  # 256 in detectron2 (configs/coco)
    # PointRend / Implicit PointRend
    in_feature: str = "p2"  # fine-grained features (paper sec. 4.3)
    coarse_fc_dim: int = 1024
    coarse_num_fc: int = 2
    coarse_resolution: int = 7
    point_head_dim: int = 256
    point_head_num_fc: int = 3
    train_num_points: int = 196  # 14 x 14
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    subdivision_steps: int = 3  # 28 -> 224
    subdivision_num_points: int = 784  # 28 x 28
    positional_encoding_dim: int = 256
    positional_encoding_scale: float = 1.0
    params_l2_weight: float = 1e-5  # Implicit PointRend: l2 on generated parameters (sec. 4.3)
    # Implicit PointRend: the parameter head's output layer reads unit-length fc features
    # (pointsup's stable recipe; see ConvFCHead). false = the reference architecture, as
    # detectron2's checkpoints need (configs/coco/implicit_pointrend_*).
    params_feature_norm: bool = True
    init_params_as_mlp: bool = True  # Implicit PointRend: generated MLPs start as one standard MLP (false: the reference's ~0)
    render_chunk_size: int = 8  # detections rendered by subdivision at a time (PointRend, Implicit PointRend); speed only
    params_chunk_size: int = 100  # Implicit PointRend: detections whose parameters are generated in one pass; memory only


@dataclass
class CondInstConfig:
    # FCOS
    fpn_strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    size_ranges: list[float] = field(default_factory=lambda: [0, 64, 128, 256, 512, 1e8])
    center_sample_radius: float = 1.5
    num_tower_convs: int = 4
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    score_thresh_test: float = 0.05
    pre_nms_topk_test: int = 1000
    nms_thresh_test: float = 0.6
    detections_per_image: int = 100
    # Mask branch and dynamic head
    mask_branch_channels: int = 128
    mask_out_channels: int = 8
    dynamic_channels: int = 8
    max_proposals: int = 500
    # The controller reads unit-length tower-feature patches and starts from one shared mask
    # head (pointsup's stable recipe; see models/condinst.py Controller). false = AdelaiDet's
    # controller, as its checkpoints need (configs/coco/condinst_*, boxinst_*).
    controller_feature_norm: bool = True
    # BoxInst (box-only baseline)
    boxinst: bool = False
    pairwise_size: int = 3
    pairwise_dilation: int = 2
    pairwise_color_thresh: float = 0.3
    pairwise_warmup_iters: int = 10000
    # pointsup's variant, not BoxInst's: the projection term is averaged with the same term
    # on each mask cropped to its GT box, and predictions are cropped to their boxes. Without
    # it BoxInst can nearly meet both of its terms with strips along the image border
    # (docs/experiments/README.md, "Known problem").
    boxinst_inside_box: bool = False


@dataclass
class ModelConfig:
    meta_architecture: str = "rcnn"  # "rcnn" (Faster R-CNN + a mask head) or "condinst"
    num_classes: int = 0  # 0 = take it from the training JSON
    pixel_mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])  # RGB
    pixel_std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    # Channel order the weights expect. Images always arrive RGB 0..255; a "BGR" model flips
    # them before normalising, and pixel_mean / pixel_std are then given in BGR order
    # (detectron2's MSRA weights: BGR, mean [103.53, 116.28, 123.675], std [1, 1, 1]).
    input_format: str = "RGB"
    # Padding below/right of each image is 0 *after* normalisation (torchvision, detectron2)
    # instead of 0 before it (pointsup's original behaviour, i.e. -mean/std after).
    pad_after_normalize: bool = False
    # How box-relative mask grids become image masks: "pointsup" (bilinear at pixel centres,
    # `postprocess.paste_masks_in_image`) or "torchvision" (its integer-box convention).
    mask_paste: str = "pointsup"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: ROIHeadsConfig = field(default_factory=ROIHeadsConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    condinst: CondInstConfig = field(default_factory=CondInstConfig)
    weights: str = ""  # full-model checkpoint to start from
    # Opt-in torch.compile of the model the training step calls (pointsup/train.py,
    # `training_module`): inductor needs a C++ compiler on CPU (Triton on CUDA), the first
    # iterations pay minutes of compiling, and a detector's data-dependent parts (sampling,
    # NMS) stay eager between the compiled graphs. Evaluation and checkpoints use the plain module.
    compile: bool = False


@dataclass
class SolverConfig:
    ims_per_batch: int = 4  # total over all processes and accumulation steps
    accumulate_steps: int = 1  # gradient accumulation: micro-batches per optimizer step
    # Linear scaling rule (Goyal et al. 2017, as detectron2's REFERENCE_WORLD_SIZE): base_lr
    # is the LR for `reference_batch` images per step; training uses
    # base_lr * ims_per_batch / reference_batch, so halving the batch halves the LR.
    # scale_lr=false uses base_lr as given. The LR used is logged at the start.
    base_lr: float = 0.02
    reference_batch: int = 4  # the built-in job's base_lr is tuned at its own batch; COCO configs: 16
    scale_lr: bool = True
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # The built-in job: 1500 steps, LR x 0.1 at 75% and 90% (docs/experiments/README.md has
    # the measurements behind it: mask AP 27.4 / 34.2 / 43.9 at 1000 / 1250 / 1500 steps of
    # a 2000-step run; base_lr 0.04 diverged at iteration 144, 0.01 and 0.02 trained).
    max_iter: int = 1500
    steps: list[int] = field(default_factory=lambda: [1125, 1350])
    gamma: float = 0.1
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    clip_grad_norm: float = 0.0  # 0 = off
    amp: str = ""  # "", "bf16", "fp16"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    output_dir: str = "output"
    device: str = ""  # "" = cuda when available, else cpu
    seed: int = 0
    deterministic: bool = False
    checkpoint_period: int = 500
    checkpoint_keep_last: int = 3  # keep the newest N periodic checkpoints (model_final always); 0 = all
    # model_final.pth holds the model, iteration, config and class names; the optimizer, AMP
    # scaler and RNG states (2/3 of an R50 file) only when this is true, which an exact
    # continuation past max_iter needs (--resume with a larger solver.max_iter).
    checkpoint_final_optimizer: bool = False
    # Divergence stop (pointsup/divergence.py): no checkpoint is written with non-finite
    # weights or |weight| above divergence_max_weight (the run stops instead), nor within 20
    # iterations of a loss above divergence_loss_spike x the median of the last 20 (0 = off).
    divergence_max_weight: float = 1e6
    divergence_loss_spike: float = 20.0
    eval_period: int = 250  # 0 = only at the end
    # Periodic evaluations use the first `eval_num_images` validation images (a fixed subset,
    # 0 = all) so that AP-vs-iteration is cheap; the final evaluation always uses all.
    eval_num_images: int = 50
    log_period: int = 20
    # Also write the logged losses, LR and AP as TensorBoard event files to
    # output_dir/tensorboard (needs `pip install "pointsup[tensorboard]"`).
    tensorboard: bool = False
    num_vis: int = 4  # prediction PNGs written at the end of training


# ---------------------------------------------------------------------------------------
# Loading: YAML files with `_base_`, strict typed mapping, `--set key=value` overrides.
#
# Precedence (later wins): dataclass defaults < `_base_` files (in list order, each with its
# own bases first) < the file itself < `--set` overrides.
#
# String values may reference environment variables as `${VAR}` or `${VAR:-default}`,
# e.g. `${POINTSUP_DATASETS:-datasets}/coco/annotations/instances_val2017.json`, so the
# COCO root moves with `export POINTSUP_DATASETS=/data`. They are expanded when loaded.
# ---------------------------------------------------------------------------------------

class ConfigError(ValueError):
    """A config value has the wrong type or a YAML file is malformed."""


class ConfigKeyError(ConfigError, KeyError):
    """A config file or override names a key that does not exist."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


_ENV_PATTERN = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(value: str) -> str:
    """Replace `${VAR}` / `${VAR:-default}` by the environment variable (or the default)."""

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"environment variable {name} is not set (use ${{{name}:-default}})")
        return default

    return _ENV_PATTERN.sub(replace, value)


def _check_type(value, expected, key: str, source: str):
    """Return `value` converted to the field type `expected`, or raise ConfigError."""

    def fail():
        raise ConfigError(
            f"{key}: expected {getattr(expected, '__name__', expected)}, got {value!r} "
            f"({type(value).__name__}) in {source}"
        )

    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, (list, tuple)):
            fail()
        return [_check_type(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if expected is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if expected is float:
        # YAML 1.1 reads `1e-5` (no dot) as a string; accept any string float() understands.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                fail()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        return float(value)
    if expected is str:
        if not isinstance(value, str):
            fail()
        return expand_env(value)
    raise TypeError(f"{key}: unsupported field type {expected}")


def _merge_into(obj, values: dict, prefix: str, source: str) -> None:
    """Set the fields of dataclass `obj` from the nested dict `values` (strictly)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r} in {source}")
    field_types = typing.get_type_hints(type(obj))
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in field_types:
            raise ConfigKeyError(f"unknown config key '{key}' in {source}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _merge_into(current, value, f"{key}.", source)
        else:
            setattr(obj, name, _check_type(value, field_types[name], key, source))


def _read_yaml(path: str) -> dict:
    with open(path) as f:
        data = yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def _merge_file(cfg: Config, path: str, chain: tuple[str, ...] = ()) -> None:
    """Apply `path` onto `cfg`: its `_base_` files first (recursively), then itself."""
    path = os.path.abspath(path)
    if path in chain:
        raise ConfigError(f"_base_ cycle: {' -> '.join(chain + (path,))}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = os.path.join(os.path.dirname(path), expand_env(base))  # relative to this file
        _merge_file(cfg, base_path, chain + (path,))
    _merge_into(cfg, data, "", path)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `a.b.c=value` strings; the value is parsed with yaml.safe_load and type-checked."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        nested: dict = {}
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(text) if text.strip() else ""
        _merge_into(cfg, nested, "", f"--set {item}")
    return cfg


# Fields that take one of a few names: checked when a config is loaded, so a typo is an
# error before anything is written (not when the model is built, after config.yaml).
CHOICES = {
    "model.meta_architecture": ("rcnn", "condinst"),
    "model.input_format": ("RGB", "BGR"),
    "model.mask_paste": ("pointsup", "torchvision"),
    "data.resize_backend": ("torch", "pil", "torch_uint8"),
    "model.backbone.depth": (18, 34, 50, 101),
    "model.backbone.norm": ("FrozenBN", "BN", "SyncBN", "GN", ""),
    "model.backbone.fpn_norm": ("", "GN"),
    "model.roi_heads.pooler_level_mapper": ("detectron2", "torchvision"),
    "model.mask_head.name": ("mask_rcnn", "pointrend", "implicit_pointrend"),
    "model.mask_head.supervision": ("masks", "points"),
    "model.mask_head.pooler_level_mapper": ("detectron2", "torchvision"),
    "model.mask_head.in_feature": ("p2", "p3", "p4", "p5"),
    "solver.amp": ("", "bf16", "fp16"),
}


def validate_config(cfg: Config, source: str = "config") -> Config:
    """Raise ConfigError when a field of CHOICES holds a value outside its choices."""
    for key, choices in CHOICES.items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} in {source} is not one of {', '.join(map(repr, choices))}")
    return cfg


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults < `_base_` files < `path` < `overrides` (a list of "a.b.c=value"), validated."""
    cfg = Config()
    if path:
        _merge_file(cfg, path)
    apply_overrides(cfg, list(overrides))
    return validate_config(cfg, " + ".join([path or "the defaults", *(f"--set {o}" for o in overrides)][:4]))


def config_from_dict(values: dict, source: str = "dict") -> Config:
    """Build a Config from a nested dict (e.g. one stored in a checkpoint), strictly."""
    cfg = Config()
    _merge_into(cfg, values, "", source)
    return validate_config(cfg, source)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML, atomically (it loads back with `load_config`)."""
    from pointsup.utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# ---------------------------------------------------------------------------------------
# A reference for every key: `python -m pointsup.config [--config C] [--set key=value ...]`
# prints the resolved config as YAML (it loads back with --config), each key with the
# comments written next to its field above. The comments are read from this file's source
# (ast for the fields, tokenize for the comments), so the reference cannot drift from them.
# ---------------------------------------------------------------------------------------


@dataclass
class FieldComments:
    above: list[str]  # comment lines right above the field (no blank line in between)
    inline: str  # the comment at the end of the field's line(s), "" if none


def field_comments(cls: type) -> dict[str, FieldComments]:
    """{field name: its comments} of the dataclass `cls`, from the source of its module."""
    return _comments_by_class(cls.__module__).get(cls.__name__, {})


def _comments_by_class(module_name: str) -> dict[str, dict[str, FieldComments]]:
    import ast
    import inspect
    import io
    import sys
    import tokenize

    source = inspect.getsource(sys.modules[module_name])
    lines = source.splitlines()
    comment_at: dict[int, str] = {}  # 1-based line number -> its comment text (a real comment, not in a string)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comment_at[token.start[0]] = token.string.lstrip("#").strip()
    result: dict[str, dict[str, FieldComments]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        fields = {}
        for statement in node.body:
            if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
                continue
            above, line = [], statement.lineno - 1  # walk up over comment-only lines
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comment_at[line])
                line -= 1
            inline = next((comment_at[n] for n in range(statement.lineno, statement.end_lineno + 1) if n in comment_at), "")
            fields[statement.target.id] = FieldComments(above, inline)
        result[node.name] = fields
    return result


def _yaml_value(value) -> str:
    """One value in YAML flow style, e.g. `[112, 128, 144]`, `1.0e-05`, `''`, `true`."""
    text = yaml.safe_dump([value], default_flow_style=True, width=1 << 30).strip()  # "[<value>]"
    return text[1:-1]


def format_config(cfg: Config) -> str:
    """The config as commented YAML: each key under its comments, as written in config.py."""
    lines: list[str] = []

    def add(obj, indent: str) -> None:
        comments = field_comments(type(obj))
        for f in dataclasses.fields(obj):
            note = comments.get(f.name, FieldComments([], ""))
            if not indent and lines:
                lines.append("")  # a blank line between top-level keys
            lines.extend(f"{indent}# {line}" if line else f"{indent}#" for line in note.above)
            value = getattr(obj, f.name)
            inline = f"  # {note.inline}" if note.inline else ""
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:{inline}")
                add(value, indent + "  ")
            else:
                lines.append(f"{indent}{f.name}: {_yaml_value(value)}{inline}")

    add(cfg, "")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pointsup.config", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Print the resolved config (defaults < --config and its _base_ files < --set) as YAML, "
                    "each key with its comment from pointsup/config.py; the output loads back with --config.")
    parser.add_argument("--config", default=None, help="YAML config; None = the built-in default job")
    parser.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE",
                        help="config overrides, e.g. solver.max_iter=100")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    source = " + ".join([args.config or "the defaults", *(f"--set {o}" for o in args.set)])
    print(f"# pointsup config: {source}\n\n{format_config(cfg)}", end="")


if __name__ == "__main__":
    main()
