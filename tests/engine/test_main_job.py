"""The main job end to end at a tiny size (real data pipeline and Mask R-CNN), plus the
evaluate / predict CLIs and `--resume` on its output."""

import json
import os

import pytest

from pointsup import evaluate, predict, train

TINY = [
    "data.synthetic_num_train=6", "data.synthetic_num_val=3", "data.synthetic_image_size=64",
    "data.min_size_train=[64]", "data.max_size_train=64", "data.min_size_test=64", "data.max_size_test=64",
    "data.num_workers=0", "solver.max_iter=3", "solver.ims_per_batch=2", "solver.warmup_iters=2",
    "log_period=1", "checkpoint_period=2", "num_vis=2",
    # a narrow model so that the test takes seconds
    "model.backbone.fpn_channels=32", "model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=50",
    "model.rpn.pre_nms_topk_test=200", "model.rpn.post_nms_topk_test=50", "model.roi_heads.batch_size_per_image=64",
    "model.roi_heads.fc_dim=64", "model.mask_head.conv_dim=32", "model.mask_head.num_conv=1",
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_default_job_tiny(tmp_path):
    out, data = str(tmp_path / "output"), str(tmp_path / "synthetic")
    metrics = train.cli(["--output-dir", out, "--set", f"data.synthetic_dir={data}", *TINY])

    # every promised file
    for name in ("config.yaml", "metrics.jsonl", "metrics.json", "loss_curve.png", "ap_curve.png", "last_checkpoint",
                 "model_0000002.pth", "model_final.pth"):
        assert os.path.exists(os.path.join(out, name)), name
    assert len([n for n in os.listdir(os.path.join(out, "vis")) if n.endswith(".png")]) == 2
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    for task in ("bbox", "segm"):
        assert 0.0 <= saved[task]["AP"] <= 100.0 and "AP50" in saved[task]
    assert saved["bbox"] == metrics["bbox"]
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["iter"] for r in records if "total_loss" in r] == [1, 2, 3]
    assert {"lr", "loss_mask", "time"} <= set(records[0])

    # point-only training: the training JSON holds points and no masks
    (root,) = os.listdir(data)
    with open(os.path.join(data, root, "train_points_n10_without_masks.json")) as f:
        anns = json.load(f)["annotations"]
    assert anns and all("segmentation" not in a and len(a["point_coords"]) == 10 for a in anns)

    # --resume on a finished run: nothing left to train, it evaluates again
    again = train.cli(["--output-dir", out, "--resume", "--set", f"data.synthetic_dir={data}", *TINY])
    assert again["segm"] == metrics["segm"]

    # python -m pointsup.evaluate
    config = os.path.join(out, "config.yaml")
    weights = os.path.join(out, "model_final.pth")
    eval_out = str(tmp_path / "eval")
    evaluated = evaluate.cli(["--config", config, "--weights", weights, "--output-dir", eval_out])
    assert evaluated["segm"] == metrics["segm"]
    assert os.path.exists(os.path.join(eval_out, "eval_model_final.json"))  # its own file, never metrics.json

    # python -m pointsup.predict, with an unreadable file skipped with a warning (--skip-bad)
    images = os.path.join(data, root, "images")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in sorted(os.listdir(images))[:2]:
        os.symlink(os.path.join(images, name), inputs / name)
    (inputs / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="broken.png"):
        written = predict.cli(["--config", config, "--weights", weights, "--input", str(inputs),
                               "--output", str(tmp_path / "pred"), "--score-thresh", "0.0", "--skip-bad"])
    assert len(written) == 2 and all(os.path.exists(p) for p in written)
