"""The Python API (issue 13): `pointsup.train(cfg)` on a tiny job, then `pointsup.Predictor`
built from its checkpoint alone gives the same detections as the evaluation path (an
independent oracle: data set + collate + run_inference), whatever the image type;
`to_coco` round-trips through pycocotools; `pointsup.evaluate(weights)` reproduces the
run's final metrics; the predict CLI needs no --config and writes what Predictor returns."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

import pointsup
from pointsup import predict
from pointsup.config import load_config
from pointsup.data.coco import CocoInstanceDataset
from pointsup.data.transforms import build_test_transforms
from pointsup.evaluation import run_inference
from pointsup.predictor import Prediction, load_model_and_categories

from .test_main_job import TINY

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two iterations of the default job at tiny size, through `pointsup.train(cfg)`; every
    detection is kept (score_thresh_test 0) so that an untrained-ish model detects plenty."""
    root = tmp_path_factory.mktemp("api")
    cfg = pointsup.load_config(None, [*TINY, "solver.max_iter=2", "checkpoint_period=0", "eval_period=0", "num_vis=0",
                                      f"output_dir={root / 'output'}", f"data.synthetic_dir={root / 'synthetic'}",
                                      "model.roi_heads.score_thresh_test=0.0"])
    metrics = pointsup.train(cfg)
    (folder,) = os.listdir(root / "synthetic")
    data = root / "synthetic" / folder
    return {"cfg": cfg, "metrics": metrics, "weights": str(root / "output" / "model_final.pth"),
            "val_json": str(data / "val.json"), "images": str(data / "images")}


@pytest.fixture(scope="module")
def val_set(run):
    return CocoInstanceDataset(run["val_json"], run["images"], transforms=build_test_transforms(run["cfg"].data),
                               use_masks=False, use_points=False)


def image_path(dataset, index):
    return dataset._paths[dataset.image_ids[index]]


def test_predictor_matches_the_evaluation_path(run, val_set):
    predictor = pointsup.Predictor(run["weights"], score_thresh=0.0)  # no config: the stored one
    assert predictor.class_names == val_set.class_names
    model, _, _ = load_model_and_categories(run["cfg"], run["weights"], torch.device("cpu"))
    results = run_inference(model, val_set, torch.device("cpu"))
    detections = 0
    for index, image_id in enumerate(val_set.image_ids):
        expected = [r for r in results if r["image_id"] == image_id]
        prediction = predictor(image_path(val_set, index))
        assert len(prediction) == len(expected)
        detections += len(expected)
        if not expected:
            continue
        boxes_xywh = torch.tensor([r["bbox"] for r in expected])
        boxes_xyxy = torch.cat([boxes_xywh[:, :2], boxes_xywh[:, :2] + boxes_xywh[:, 2:]], dim=1)
        torch.testing.assert_close(prediction.boxes_xyxy, boxes_xyxy)
        torch.testing.assert_close(prediction.scores, torch.tensor([r["score"] for r in expected]))
        masks = np.stack([mask_util.decode(r["segmentation"]) for r in expected]).astype(bool)  # (D, H, W)
        assert np.array_equal(prediction.masks.numpy(), masks)
        assert prediction.category_ids == [r["category_id"] for r in expected]
        assert prediction.class_names == [val_set.class_names[k] for k in prediction.classes.tolist()]
    assert detections > 0, "the test needs detections to compare"


def test_every_image_type_gives_the_same_prediction(run, val_set):
    predictor = pointsup.Predictor(run["weights"], score_thresh=0.0)
    path = image_path(val_set, 0)
    reference = predictor(path)
    pil = Image.open(path)
    array = np.asarray(pil.convert("RGB"))
    inputs = {"PIL": pil, "numpy": array, "uint8 tensor": torch.from_numpy(array.copy()).permute(2, 0, 1),
              "float tensor": torch.from_numpy(array.copy()).permute(2, 0, 1).float(), "pathlib": pathlib.Path(path)}
    for name, image in inputs.items():
        prediction = predictor(image)
        assert torch.equal(prediction.boxes_xyxy, reference.boxes_xyxy), name
        assert torch.equal(prediction.masks, reference.masks), name
        assert np.array_equal(prediction.image, reference.image), name
    for bad in (array[:, :, 0], array.astype(np.float32), torch.zeros(64, 64, 3), [[0, 1]]):
        with pytest.raises(ValueError):
            predictor(bad)


def test_to_coco_round_trips_through_pycocotools(run, val_set):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    prediction = pointsup.Predictor(run["weights"], score_thresh=0.0)(image_path(val_set, 0))
    assert len(prediction) > 0
    results = json.loads(json.dumps(prediction.to_coco(image_id=7)))  # JSON-ready as is
    H, W = prediction.image.shape[:2]
    for result, box, mask in zip(results, prediction.boxes_xyxy, prediction.masks):
        assert np.array_equal(mask_util.decode(result["segmentation"]).astype(bool), mask.numpy())
        x, y, w, h = result["bbox"]
        torch.testing.assert_close(torch.tensor([x, y, x + w, y + h]), box, atol=0.01, rtol=0)
    # The detections as ground truth: scoring the results against them is AP 100 only when
    # image id, category ids, boxes and RLEs all agree.
    gt = COCO()
    gt.dataset = {"images": [{"id": 7, "height": H, "width": W}],
                  "categories": [{"id": c} for c in sorted(set(prediction.category_ids))],
                  "annotations": [{"id": i + 1, "image_id": 7, "category_id": r["category_id"], "iscrowd": 0,
                                   "bbox": r["bbox"], "area": float(mask_util.area(r["segmentation"])),
                                   "segmentation": r["segmentation"]} for i, r in enumerate(results)]}
    gt.createIndex()
    for iou_type in ("bbox", "segm"):
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert evaluator.stats[1] == pytest.approx(1.0), iou_type  # AP50


def test_draw_is_the_visualisers_drawing(run, val_set):
    from pointsup.utils.visualize import draw_instances

    predictor = pointsup.Predictor(run["weights"], score_thresh=0.0)
    prediction = predictor(image_path(val_set, 0))
    drawn = prediction.draw()
    H, W = prediction.image.shape[:2]
    assert drawn.size == (2 * W, 2 * H)  # small images drawn twice as large
    expected = draw_instances(prediction.image, boxes=prediction.boxes_xyxy, masks=prediction.masks,
                              classes=prediction.classes, scores=prediction.scores,
                              class_names=predictor.class_names, scale=2.0)
    assert np.array_equal(np.asarray(drawn), np.asarray(expected))
    plain = Image.fromarray(prediction.image).resize((2 * W, 2 * H), Image.NEAREST)
    assert not np.array_equal(np.asarray(drawn), np.asarray(plain))
    empty = Prediction(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), [],
                       torch.zeros(0, H, W, dtype=torch.bool), [], prediction.image)
    assert np.array_equal(np.asarray(empty.draw()), np.asarray(plain)) and empty.to_coco(1) == []


def test_predict_cli_needs_no_config_and_writes_what_predictor_returns(run, val_set, tmp_path):
    path = image_path(val_set, 0)
    predict.cli(["--weights", run["weights"], "--input", path, "--output", str(tmp_path / "p"), "--score-thresh", "0.1"])
    prediction = pointsup.Predictor(run["weights"], score_thresh=0.1)(path)
    with open(tmp_path / "p" / "predictions.json") as f:
        assert json.load(f) == prediction.to_coco(1, file_name=os.path.basename(path))
    png = np.asarray(Image.open(tmp_path / "p" / (os.path.basename(path) + ".png")).convert("RGB"))
    assert np.array_equal(png, np.asarray(prediction.draw()))


def test_predict_cli_shows_progress_over_a_folder(run, val_set, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        os.symlink(image_path(val_set, i), folder / f"{i}.png")
    predict.cli(["--weights", run["weights"], "--input", str(folder), "--output", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert "predict: 100%" in err and "3/3" in err


def test_evaluate_reproduces_the_runs_final_metrics(run, tmp_path):
    metrics = pointsup.evaluate(run["weights"], output_dir=str(tmp_path))  # the stored config: same val set
    assert metrics["segm"] == run["metrics"]["segm"] and metrics["bbox"] == run["metrics"]["bbox"]
    with open(tmp_path / "eval_model_final.json") as f:
        assert json.load(f)["segm"] == metrics["segm"]


def test_evaluate_measures_the_masks_inside_the_gt_boxes(run, tmp_path):
    metrics = pointsup.evaluate(run["weights"], output_dir=str(tmp_path), gt_box_iou=True)
    quality = metrics["gt_box_iou"]
    with open(run["val_json"]) as f:
        annotations = json.load(f)["annotations"]
    valid = [a for a in annotations if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0]
    assert quality["instances"] == len(valid) > 0  # one mask per GT box, whatever the detector finds
    assert 0.0 < quality["mean_iou"] <= 100.0 and 0.0 <= quality["iou75"] <= 100.0
    assert metrics["segm"] == run["metrics"]["segm"]  # the AP part is the same evaluation
    with open(tmp_path / "eval_model_final.json") as f:
        assert json.load(f)["gt_box_iou"] == quality


def test_gt_box_iou_of_a_condinst_config_is_refused_before_evaluating(run, tmp_path):
    with pytest.raises(ValueError, match="needs an R-CNN model"):
        pointsup.evaluate(run["weights"], overrides=["model.meta_architecture=condinst"], output_dir=str(tmp_path),
                          gt_box_iou=True)
    assert not os.listdir(tmp_path)  # nothing written


def test_masks_on_the_models_own_detections_score_its_own_mask_ap(run, val_set):
    """mask_ap_on_detections(model, model) takes the path of two models (the detector's
    boxes, then each box's mask from the mask model) and must land on the model's own AP."""
    from pointsup.evaluation import evaluate_coco, mask_ap_on_detections

    model = pointsup.Predictor(run["weights"], score_thresh=0.0).model
    assert mask_ap_on_detections(model, model, val_set) == evaluate_coco(model, val_set)["segm"]


def test_explicit_config_replaces_the_stored_one(run, val_set, tmp_path):
    state = torch.load(run["weights"], weights_only=True)
    bare = str(tmp_path / "bare.pth")
    torch.save(state["model"], bare)  # a bare state dict: no config, no class names
    cfg = load_config(None, [*TINY, "model.num_classes=5"])
    predictor = pointsup.Predictor(bare, cfg, ["model.roi_heads.score_thresh_test=0.0"], score_thresh=0.0)
    assert cfg.model.roi_heads.score_thresh_test == 0.05  # the override went to a copy
    prediction = predictor(image_path(val_set, 1))
    reference = pointsup.Predictor(run["weights"], score_thresh=0.0)(image_path(val_set, 1))
    assert torch.equal(prediction.boxes_xyxy, reference.boxes_xyxy)
    assert prediction.class_names == [str(k) for k in reference.classes.tolist()]  # no names stored


def test_import_is_cheap_and_modules_run_as_before():
    code = ("import sys, pointsup; assert 'torch' not in sys.modules; "
            "assert callable(pointsup.train) and callable(pointsup.train.main); "
            "from pointsup import train; assert train is pointsup.train and callable(pointsup.evaluate)")
    subprocess.run([sys.executable, "-c", code], check=True)
    help_text = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "pointsup.train", "--help"],
                               check=True, capture_output=True, text=True).stdout
    assert help_text.startswith("usage: python -m pointsup.train") and "(default: False)" in help_text


def test_readme_python_api_snippet_runs(run, val_set, tmp_path, monkeypatch):
    """The README's three lines, with the tiny run's checkpoint and a val image as photo.jpg."""
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Python API"):]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) == 3
    monkeypatch.chdir(tmp_path)
    os.makedirs("output")
    os.symlink(run["weights"], "output/model_final.pth")
    Image.open(image_path(val_set, 0)).convert("RGB").save("photo.jpg")
    exec(snippet, {})
    assert Image.open("photo_pred.png").size == (128, 128)  # a 64 px image, drawn 2x


def test_crafted_checkpoint_is_refused_by_the_python_api(tmp_path):
    from pointsup.checkpoint import CheckpointError

    marker = tmp_path / "PWNED"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = str(tmp_path / "evil.pth")
    torch.save({"model": {}, "config": {}, "payload": RunsCode()}, evil)
    for load in (pointsup.Predictor, pointsup.evaluate):
        with pytest.raises(CheckpointError, match=r"refusing to load .*evil.pth.*could run code"):
            load(evil)
    assert not marker.exists()
