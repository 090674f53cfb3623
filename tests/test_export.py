"""ONNX export (pointsup/export.py): the onnxruntime graph against the PyTorch model.

Models are the configs/synthetic ones with random weights; each test sets the score
threshold from the model's own scores, so that one image has many detections, another a
different number and a grey image none (or, at threshold 1.0, every image none). The
graph is traced on a 128 x 160 random image and run on other sizes (not multiples of 32):
a size or a detection count frozen into the graph would fail here (checked by breaking
`ExportableRCNN` on purpose: a Python `len(boxes)` or `min(pre_topk, A_l)` fails these tests).
"""

import os

import numpy as np
import pytest
import torch

from pointsup.config import config_to_dict, load_config
from pointsup.data.collate import pad_images
from pointsup.models import build_model
from pointsup.models.postprocess import paste_masks_in_image

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from pointsup.export import ExportError, check_exportable, cli, export_onnx  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py

CLASS_NAMES = ["disc", "ring", "triangle", "cross", "star"]
SIZES = [(96, 136), (200, 120)]  # (H, W); the graph is traced at (128, 160)
MANY = 60  # Mask R-CNN's detections on the first image (the score threshold is set so)
GREY = torch.full((3, 80, 120), 128.0)  # an image the random Mask R-CNN finds nothing on (threshold set so)
FEW = 6  # PointRend's and Implicit PointRend's: their 224 x 224 masks cost more to render


def write_checkpoint(path, config_name: str, keep: int | None = None, blank: torch.Tensor | None = None) -> str:
    """A checkpoint as `pointsup.train` writes it (weights, config, class names), random weights.

    keep: set the score threshold so that the first test image has `keep` detections (no
    cap), and the other image another number than the traced one; blank: raise it, if need
    be, so that this image has none.
    """
    torch.manual_seed(0)  # the weights, whatever ran before (module-scoped fixtures run before the seeding one)
    cfg = load_config(f"configs/synthetic/{config_name}.yaml")
    model = build_model(cfg, len(CLASS_NAMES)).eval()
    if keep is not None:
        cfg.model.roi_heads.detections_per_image = model.roi_heads.detections_per_image = 1000
        scores = detection_scores(model, random_image(*SIZES[0], seed=0))  # (D,) descending
        threshold = float(scores[keep - 1] + scores[keep]) / 2
        if blank is not None:
            threshold = max(threshold, float(detection_scores(model, blank)[:1].sum()) + 1e-4)
        cfg.model.roi_heads.score_thresh_test = threshold
    torch.save({"model": model.state_dict(), "config": config_to_dict(cfg), "class_names": CLASS_NAMES}, path)
    return str(path)


@torch.no_grad()
def detection_scores(model, image: torch.Tensor) -> torch.Tensor:
    """(D,) scores of the model's detections on (3, H, W) `image`, descending (no masks rendered)."""
    sizes = [tuple(image.shape[1:])]
    features = model.backbone(model.normalize(pad_images([image]), sizes))
    proposals, _ = model.rpn(features, sizes)
    class_logits, box_deltas = model.roi_heads.box_predictor(model.roi_heads.box_features(features, proposals))
    (detections,) = model.roi_heads.predict_boxes(class_logits, box_deltas, proposals, sizes)
    return detections["pred_scores"].sort(descending=True).values


def load_model(checkpoint: str, overrides=()):
    from pointsup.predictor import config_for_checkpoint, load_model_and_categories

    state = torch.load(checkpoint, weights_only=True)
    cfg = config_for_checkpoint(state, checkpoint, None, list(overrides))
    return load_model_and_categories(cfg, state, torch.device("cpu"))[0]


def random_image(H: int, W: int, seed: int) -> torch.Tensor:
    return torch.rand(3, H, W, generator=torch.Generator().manual_seed(seed)) * 255  # (3, H, W) RGB 0..255


def run_onnx(path: str, image: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": image.numpy()})))


@torch.no_grad()
def run_torch(model, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's own eval path (padding as `collate`), plus the box-grid mask probabilities
    of the same detections, read from its ROI heads before pasting."""
    sizes = [tuple(image.shape[1:])]
    images = pad_images([image])
    (out,) = model(images, sizes)
    features = model.backbone(model.normalize(images, sizes))
    (detections,), _ = model.roi_heads(features, model.rpn(features, sizes)[0], sizes)
    boxes = detections["pred_boxes"]
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # as rescale_detections
    out["pred_mask_probs"] = detections["pred_mask_probs"][nonempty]
    return out


def assert_same_detections(onnx_out: dict[str, np.ndarray], torch_out: dict[str, torch.Tensor], exact_masks: bool):
    boxes, scores, classes, mask_probs = (torch.from_numpy(onnx_out[k]) for k in ("boxes", "scores", "classes", "mask_probs"))
    D = len(torch_out["pred_scores"])
    assert boxes.shape == (D, 4) and scores.shape == (D,) and classes.shape == (D,) and mask_probs.shape[:2] == (D, 1)
    assert classes.dtype == torch.int64
    torch.testing.assert_close(boxes, torch_out["pred_boxes"], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(scores, torch_out["pred_scores"], atol=1e-5, rtol=1e-5)
    assert torch.equal(classes, torch_out["pred_classes"])
    probs_diff = (mask_probs[:, 0] - torch_out["pred_mask_probs"]).abs()
    if exact_masks:
        assert (probs_diff < 1e-4).all()
    else:  # adaptive subdivision: TopK may refine a different one of two equally uncertain cells
        assert (probs_diff > 1e-3).sum() <= 1e-3 * probs_diff.numel() and probs_diff.sum() <= 1e-4 * probs_diff.numel()
    pasted = paste_masks_in_image(mask_probs[:, 0], boxes, torch_out["pred_masks"].shape[1:])  # (D, H, W): what users do
    assert (pasted != torch_out["pred_masks"]).sum() <= 1e-3 * pasted.numel()


@pytest.fixture(scope="module")
def mask_rcnn_checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("mask_rcnn") / "model_final.pth", "mask_rcnn_P10", keep=MANY, blank=GREY)


def test_mask_rcnn_onnx_matches_pytorch_at_other_sizes_with_many_detections(mask_rcnn_checkpoint, tmp_path):
    out = str(tmp_path / "model.onnx")
    assert cli(["--weights", mask_rcnn_checkpoint, "--format", "onnx", "--output", out]) == out
    assert os.listdir(tmp_path) == ["model.onnx"]  # written atomically: no temporary file left
    model = load_model(mask_rcnn_checkpoint)
    counts = []
    for seed, (H, W) in enumerate(SIZES):
        image = random_image(H, W, seed)
        onnx_out, torch_out = run_onnx(out, image), run_torch(model, image)
        assert_same_detections(onnx_out, torch_out, exact_masks=True)
        counts.append(len(onnx_out["scores"]))
    assert 20 <= counts[0] <= MANY and counts[1] not in (0, counts[0]), counts  # many, and not one frozen count
    # The same graph (traced with detections) on an image with none.
    onnx_out, torch_out = run_onnx(out, GREY), run_torch(model, GREY)
    assert onnx_out["scores"].shape == (0,) and onnx_out["mask_probs"].shape == (0, 1, 28, 28)
    assert_same_detections(onnx_out, torch_out, exact_masks=True)


def test_zero_detections_at_every_size(mask_rcnn_checkpoint, tmp_path):
    """No detection passes threshold 1.0 (also when tracing): every output is empty, with the right shapes."""
    out = str(tmp_path / "model.onnx")
    cli(["--weights", mask_rcnn_checkpoint, "--output", out, "--set", "model.roi_heads.score_thresh_test=1.0"])
    model = load_model(mask_rcnn_checkpoint, ["model.roi_heads.score_thresh_test=1.0"])
    for seed, (H, W) in enumerate(SIZES):
        image = random_image(H, W, seed)
        onnx_out, torch_out = run_onnx(out, image), run_torch(model, image)
        assert {k: v.shape for k, v in onnx_out.items()} == {
            "boxes": (0, 4), "scores": (0,), "classes": (0,), "mask_probs": (0, 1, 28, 28)}
        assert_same_detections(onnx_out, torch_out, exact_masks=True)


@pytest.mark.parametrize("config_name", ["pointrend_P10", "implicit_pointrend_P10"])
def test_point_heads_export_with_adaptive_subdivision(config_name, tmp_path):
    """PointRend / Implicit PointRend: the subdivision unrolls; 224 x 224 masks match PyTorch's."""
    checkpoint = write_checkpoint(tmp_path / "model.pth", config_name, keep=FEW)
    model = load_model(checkpoint)
    out = export_onnx(model, str(tmp_path / "model.onnx"))
    counts = []
    for seed, (H, W) in enumerate(SIZES):
        image = random_image(H, W, seed)
        onnx_out, torch_out = run_onnx(out, image), run_torch(model, image)
        assert onnx_out["mask_probs"].shape[2:] == (224, 224)
        assert_same_detections(onnx_out, torch_out, exact_masks=False)
        counts.append(len(onnx_out["scores"]))
    assert counts[0] == FEW and counts[1] not in (0, FEW), counts

    # No detection: the subdivision runs on zero RoIs.
    model.roi_heads.score_thresh = 1.0
    out = export_onnx(model, str(tmp_path / "model_none.onnx"))
    image = random_image(*SIZES[1], seed=1)
    onnx_out = run_onnx(out, image)
    assert onnx_out["mask_probs"].shape == (0, 1, 224, 224)
    assert_same_detections(onnx_out, run_torch(model, image), exact_masks=False)


@pytest.mark.parametrize("input_format, pad_after_normalize", [("RGB", False), ("BGR", True)])
def test_graph_input_is_prepared_as_the_model_prepares_it(mask_rcnn_checkpoint, input_format, pad_after_normalize):
    """Padding to /32 and normalisation inside the graph equal `collate` + `model.normalize`."""
    from pointsup.export import ExportableRCNN

    model = load_model(mask_rcnn_checkpoint)
    model.input_format, model.pad_after_normalize = input_format, pad_after_normalize
    image = random_image(*SIZES[0], seed=0)
    expected = model.normalize(pad_images([image]), [tuple(image.shape[1:])])  # (1, 3, 96, 160)
    torch.testing.assert_close(ExportableRCNN(model).normalized_padded(image), expected)


def test_condinst_is_refused_with_the_reason(tmp_path, capsys):
    cfg = load_config("configs/synthetic/condinst_P10.yaml")
    with pytest.raises(ExportError, match="not an R-CNN"):
        check_exportable(cfg)
    checkpoint = tmp_path / "condinst.pth"
    torch.save({"model": {}, "config": config_to_dict(cfg), "class_names": CLASS_NAMES}, checkpoint)
    with pytest.raises(SystemExit) as info:
        cli(["--weights", str(checkpoint), "--output", str(tmp_path / "model.onnx")])
    assert info.value.code == 1
    assert "CondInst is not an R-CNN" in capsys.readouterr().err
    assert not (tmp_path / "model.onnx").exists()


def test_missing_onnx_names_the_extra(mask_rcnn_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # `import onnx` raises ImportError
    with pytest.raises(ExportError, match=r"pip install pointsup\[onnx\]"):
        export_onnx(load_model(mask_rcnn_checkpoint), str(tmp_path / "model.onnx"))
    assert not (tmp_path / "model.onnx").exists()


def test_help_names_the_module_and_every_default(capsys):
    with pytest.raises(SystemExit) as info:
        cli(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m pointsup.export ")
    options = [line.split()[0].rstrip(",") for line in text.split("\noptions:\n")[1].splitlines()
               if line.startswith("  -")]
    assert {"--weights", "--config", "--format", "--output", "--set"} <= set(options)
    assert text.count("(default:") == len(options) - 3  # all but -h and the required --weights, --output
