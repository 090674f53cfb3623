"""Commands never destroy a user's file and checkpoints never run code (issue 12):
predict keeps inputs intact, writes COCO results and fails loudly on unreadable inputs;
evaluate writes its own file; a crafted checkpoint is refused by every command that loads
one, before anything in it runs; garbage bytes give an error naming the file."""

import json
import os
import pickle
import re

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from pointsup import checkpoint as ckpt
from pointsup import evaluate, predict, self_training
from pointsup.config import config_to_dict, load_config, save_config
from pointsup.data.coco import CocoInstanceDataset
from pointsup.models import build_model
from pointsup.train import main
from pointsup.weights import WeightsLoadError, load_weights

from .fakes import TinyDetector, make_tiny_coco, tiny_config
from .test_main_job import TINY

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny R-CNN checkpoint + its config.yaml, and a tiny COCO set with images (not trained:
    these tests are about files, not accuracy)."""
    root = tmp_path_factory.mktemp("run")
    cfg = load_config(None, [*TINY, f"output_dir={root / 'output'}", "model.roi_heads.score_thresh_test=0.0"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=2)
    state = {"model": model.state_dict(), "optimizer": {}, "scaler": {}, "iteration": 3, "config": config_to_dict(cfg),
             "rng": [ckpt.get_rng_state()], "class_names": ["class3", "class7"], "category_ids": [3, 7]}
    out = str(root / "output")
    weights = ckpt.save_checkpoint(out, "model_final.pth", state)
    config = os.path.join(out, "config.yaml")
    save_config(cfg, config)
    json_path = make_tiny_coco(str(root / "coco"), num_images=2, size=64)
    return {"weights": weights, "config": config, "out": out, "json": json_path, "images": str(root / "coco" / "images")}


def write_png(path, seed=0, size=48):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)).save(path)


def file_bytes(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


# ---- predict ------------------------------------------------------------------------------


def test_predict_into_its_input_folder_keeps_every_input(run, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_png(folder / "astronaut.png", 0)
    write_png(folder / "a.png", 1)
    Image.open(folder / "a.png").convert("RGB").save(folder / "a.jpg")  # same stem, other extension
    inputs = file_bytes(folder)
    args = ["--config", run["config"], "--weights", run["weights"], "--input", str(folder), "--output", str(folder)]
    written = predict.cli(args)
    after = file_bytes(folder)
    assert {n: after[n] for n in inputs} == inputs  # no input touched
    assert sorted(os.path.basename(p) for p in written) == ["a.jpg.png", "a.png.png", "astronaut.png.png"]
    assert "predictions.json" in after

    # Again: the drawings are now inputs too, and a.png's drawing would replace one. Refused
    # before anything is written.
    before = file_bytes(folder)
    with pytest.raises(ValueError, match=r"the drawing of .*a.jpg would replace the input .*a.jpg.png"):
        predict.cli(args)
    assert file_bytes(folder) == before


def test_predict_writes_coco_results_with_rle_masks(run, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_png(folder / "x.png", 0, size=48)
    predict.cli(["--config", run["config"], "--weights", run["weights"], "--input", str(folder),
                 "--output", str(tmp_path / "preds"), "--score-thresh", "0.0"])
    with open(tmp_path / "preds" / "predictions.json") as f:
        results = json.load(f)
    assert results, "an untrained model with score threshold 0 still detects something"
    for r in results:
        assert r["file_name"] == "x.png" and r["image_id"] == 1
        assert r["category_id"] in (3, 7) and r["category_name"] == f"class{r['category_id']}"
        x, y, w, h = r["bbox"]
        assert w >= 0 and h >= 0 and 0 <= r["score"] <= 1
        assert mask_util.decode(r["segmentation"]).shape == (48, 48)  # the original image frame


def test_predict_fails_with_a_summary_when_inputs_are_unreadable(run, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_png(folder / "good.png")
    (folder / "broken.png").write_bytes(b"not a png")
    args = ["--config", run["config"], "--weights", run["weights"], "--input", str(folder)]
    with pytest.raises(SystemExit) as info:
        predict.cli([*args, "--output", str(tmp_path / "p1")])
    assert info.value.code == 1
    assert "1 of 2 inputs could not be read" in capsys.readouterr().err
    assert os.path.exists(tmp_path / "p1" / "good.png.png")  # the readable one is still done

    with pytest.warns(UserWarning, match="broken.png"):
        written = predict.cli([*args, "--output", str(tmp_path / "p2"), "--skip-bad"])
    assert len(written) == 1

    os.remove(folder / "good.png")
    with pytest.raises(SystemExit):  # nothing readable: an error even with --skip-bad
        predict.cli([*args, "--output", str(tmp_path / "p3"), "--skip-bad"])


# ---- evaluate -----------------------------------------------------------------------------


def test_evaluate_writes_its_own_file_and_keeps_the_runs_metrics(run):
    metrics_json = os.path.join(run["out"], "metrics.json")
    with open(metrics_json, "w") as f:
        json.dump({"segm": {"AP": 1.0}, "iteration": 3}, f)
    before = file_bytes(run["out"])
    metrics = evaluate.cli(["--config", run["config"], "--weights", run["weights"], "--set",
                            f"data.train_json={run['json']}", f"data.val_json={run['json']}", f"data.val_images={run['images']}"])
    after = file_bytes(run["out"])
    assert {n: after[n] for n in before} == before  # metrics.json (with its iteration) untouched
    with open(os.path.join(run["out"], "eval_model_final.json")) as f:
        assert json.load(f)["segm"] == metrics["segm"]


# ---- checkpoints never run code -----------------------------------------------------------


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    path = str(tmp_path / "evil.pth")
    torch.save({"model": {"w": torch.zeros(1)}, "config": {}, "payload": _RunsCode(marker)}, path)
    pkl = str(tmp_path / "evil.pkl")
    with open(pkl, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(1)}, "payload": _RunsCode(marker)}, f)
    garbage = str(tmp_path / "garbage.pth")
    with open(garbage, "wb") as f:
        f.write(os.urandom(256))
    return {"pth": path, "pkl": pkl, "garbage": garbage, "marker": marker}


def test_crafted_checkpoint_is_refused_by_predict_evaluate_self_training(run, evil, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    write_png(images / "x.png")
    commands = [
        (predict.cli, ["--config", run["config"], "--input", str(images), "--output", str(tmp_path / "p")]),
        (evaluate.cli, ["--config", run["config"], "--output-dir", str(tmp_path / "e"), "--set", f"data.train_json={run['json']}",
                        f"data.val_json={run['json']}", f"data.val_images={run['images']}"]),
        (self_training.cli, ["--config", run["config"], "--output", str(tmp_path / "pseudo.json"),
                             "--input", run["json"], "--images", run["images"]]),
    ]
    for command, args in commands:
        with pytest.raises(Exception) as info:
            command([*args, "--weights", evil["pth"]])
        assert not evil["marker"].exists(), f"{command.__module__} ran code from the checkpoint"
        assert info.type is ckpt.CheckpointError and re.search(r"refusing to load .*evil.pth.*could run code", str(info.value))
        with pytest.raises(ckpt.CheckpointError, match=r"refusing to load .*garbage.pth"):
            command([*args, "--weights", evil["garbage"]])


def test_crafted_checkpoint_is_refused_by_resume_and_load_weights(evil, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    os.replace(evil["pth"], out / "model_0000002.pth")
    (out / "last_checkpoint").write_text("model_0000002.pth")
    cfg = tiny_config(str(out))
    json_path = make_tiny_coco(str(tmp_path / "coco"), num_images=2)
    dataset = CocoInstanceDataset(json_path, str(tmp_path / "coco" / "images"), use_masks=False)
    with pytest.raises(Exception) as info:
        main(cfg, resume=True, model=TinyDetector(), train_set=dataset)
    assert not evil["marker"].exists(), "--resume ran code from the checkpoint"
    assert info.type is ckpt.CheckpointError
    assert re.search(r"no intact checkpoint.*model_0000002.pth.*could run code", str(info.value))

    model = TinyDetector()
    for path in (str(out / "model_0000002.pth"), evil["pkl"], evil["garbage"]):
        with pytest.raises(Exception) as info:
            load_weights(model, path, verbose=False)
        assert not evil["marker"].exists(), path
        assert info.type is WeightsLoadError and f"refusing to load {path}" in str(info.value)

    # ... while a checkpoint written before the RNG state became a tensor (numpy arrays in it)
    # still loads and restores its RNG state: no unsafe legacy path is needed.
    import random

    old_format = {"model": TinyDetector().state_dict(), "optimizer": {}, "iteration": 1,
                  "rng": [{"python": random.getstate(), "numpy": np.random.get_state(),
                           "torch": torch.get_rng_state(), "cuda": []}]}
    torch.save(old_format, tmp_path / "old.pth")
    expected = np.random.random()
    ckpt.set_rng_state(ckpt.load_checkpoint(str(tmp_path / "old.pth"))["rng"][0])
    assert np.random.random() == expected


def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    """A checkpoint of a real run loads with plain torch.load(weights_only=True), no allowlist."""
    cfg = tiny_config(str(tmp_path / "out"), max_iter=1)
    json_path = make_tiny_coco(str(tmp_path / "coco"), num_images=2)
    dataset = CocoInstanceDataset(json_path, str(tmp_path / "coco" / "images"), use_masks=False)
    main(cfg, model=TinyDetector(), train_set=dataset)
    state = torch.load(os.path.join(cfg.output_dir, "model_final.pth"), weights_only=True)
    assert state["iteration"] == 1 and state["category_ids"] == dataset.contiguous_to_category_id


def test_blank_training_visualisations_say_why(tmp_path):
    """No detection reaches the drawing threshold: each PNG shows the image's top detections
    with their scores, and a warning says so with the highest score instead of leaving the
    user to guess."""
    from pointsup.predict import visualize_dataset

    json_path = make_tiny_coco(str(tmp_path / "coco"), num_images=2)
    dataset = CocoInstanceDataset(json_path, str(tmp_path / "coco" / "images"), use_masks=False, use_points=False)
    model = TinyDetector()  # untrained: its softmax scores of 2 classes stay near 0.5
    with pytest.warns(UserWarning, match=r"no detection reached score 0.99 in the 2 images drawn \(highest score 0\.\d+\)"
                      r"; the PNGs show each image's top 3 detections"):
        paths = visualize_dataset(model, dataset, str(tmp_path / "vis"), 2, torch.device("cpu"), score_thresh=0.99)
    assert len(paths) == 2
    with pytest.warns(UserWarning):
        plain = visualize_dataset(model, dataset, str(tmp_path / "plain"), 2, torch.device("cpu"), score_thresh=0.99,
                                  fallback_top=0)
    from PIL import Image

    assert all((np.asarray(Image.open(a)) != np.asarray(Image.open(b))).any() for a, b in zip(paths, plain))


def test_resume_and_overwrite_together_are_refused(tmp_path):
    cfg = tiny_config(str(tmp_path / "out"))
    with pytest.raises(ValueError, match="--resume .* --overwrite .*pick one"):
        main(cfg, resume=True, overwrite=True, model=TinyDetector(), train_set=None)


def test_self_training_refuses_to_overwrite_its_input(run):
    with open(run["json"], "rb") as f:
        before = f.read()
    with pytest.raises(ValueError, match=r"--output .*instances.json would replace an input"):
        self_training.cli(["--config", run["config"], "--weights", run["weights"], "--output", run["json"],
                           "--input", run["json"], "--images", run["images"]])
    with open(run["json"], "rb") as f:
        assert f.read() == before


def test_training_curves_leave_the_users_pyplot_backend_alone(tmp_path):
    """A notebook trains, then plots inline: drawing the run's PNGs must not switch pyplot to Agg."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt\n"
            "from pointsup.utils.logging import draw_ap_curve, draw_loss_curve\n"
            "records = [{'iter': i, 'total_loss': 1.0 / i, 'loss_cls': 0.5 / i} for i in (1, 2, 3)]\n"
            "records += [{'iter': 3, 'segm': {'AP': 10.0}, 'bbox': {'AP': 12.0}}]\n"
            f"draw_loss_curve(records, {str(tmp_path / 'loss.png')!r})\n"
            f"draw_ap_curve(records, {str(tmp_path / 'ap.png')!r})\n"
            "print(matplotlib.get_backend())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "svg"
    for name in ("loss.png", "ap.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
