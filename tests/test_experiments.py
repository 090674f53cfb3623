"""The experiment harness (pointsup/experiments.py) on tiny runs: report, resume, statistics."""

from __future__ import annotations

import json
import math
import os
import re
import statistics

import pytest

from pointsup import experiments
from pointsup.config import load_config
from pointsup.data.synthetic import generate_synthetic_dataset


def test_mean_std_is_the_sample_std():
    values = [20.0, 23.5, 21.25]
    mean, std = experiments.mean_std(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert std == pytest.approx(statistics.stdev(values))  # ddof = 1
    mean, std = experiments.mean_std([4.0])
    assert mean == 4.0 and math.isnan(std)  # one seed: the spread is unknown, not 0
    assert experiments.fmt(4.0, std) == "4.0 (one seed)"
    assert all(math.isnan(v) for v in experiments.mean_std([]))


def test_annotation_seconds_match_table_6():
    # Paper Table 6: masks 122.4 s, P10 59.2 s, boxes 50.2 s per instance (spot + categorise 43.2 s).
    assert experiments.seconds_per_instance("masks") == pytest.approx(122.4)
    assert experiments.seconds_per_instance("points", 10) == pytest.approx(59.2)
    assert experiments.seconds_per_instance("boxes") == pytest.approx(50.2)


def _table_rows(report: str) -> dict[str, list[str]]:
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 10 and cells[0] not in ("run", "---"):
            rows[cells[0]] = cells
    return rows


def test_harness_runs_a_study_reports_mean_std_and_resumes(tmp_path, one_thread):
    data = generate_synthetic_dataset(str(tmp_path / "data"), num_train=6, num_val=2, image_size=64, seed=0)
    out = tmp_path / "runs"
    argv = ["--study", "self_training", "--seeds", "2", "--iters", "2", "--jobs", "2", "--num-workers", "0",
            "--out", str(out), "--train-json", data["train_json"], "--train-images", data["image_dir"],
            "--val-json", data["val_json"], "--val-images", data["image_dir"]]
    report_path = experiments.main(argv)
    report = open(report_path).read()

    # Every run finished, with its own folder, config and metrics.
    folders = sorted(str(p.parent) for p in out.glob("self_training/*/seed*/metrics.json"))
    assert len(folders) == 4
    assert os.path.exists(out / "self_training" / "pseudo_masks_seed0.json")
    pseudo = json.load(open(out / "self_training" / "pseudo_masks_seed1.json"))
    assert all("segmentation" in a for a in pseudo["annotations"])  # the student trains on masks

    # The table's mean ± std equal a hand computation over the runs' metrics.json.
    rows = _table_rows(report)
    assert set(rows) == {"P10", "P10 -> pseudo masks"}
    for label, folder_name in (("P10", "P10"), ("P10 -> pseudo masks", "P10_->_pseudo_masks")):
        values = [json.load(open(out / "self_training" / folder_name / f"seed{s}" / "metrics.json"))["segm"]["AP"]
                  for s in (0, 1)]
        mean, std = (float(v) for v in re.match(r"(\S+) ± (\S+)", rows[label][1]).groups())
        assert mean == pytest.approx(statistics.mean(values), abs=0.051)
        assert std == pytest.approx(statistics.stdev(values), abs=0.051)
        assert rows[label][6] == "2"  # seeds
        # mask IoU in GT boxes: measured once per run from its model_final.pth, cached beside it
        ious = [json.load(open(out / "self_training" / folder_name / f"seed{s}" / "gt_box_iou.json"))["mean_iou"]
                for s in (0, 1)]
        assert all(0.0 <= v <= 100.0 for v in ious)
        assert rows[label][7] == experiments.fmt(*experiments.mean_std(ious))
    assert "commit:" in report and "seeds: 2" in report and "self-training gain" in report
    assert f"runs trained at: {experiments.git_commit()} (4 runs)" in report
    assert "mask IoU in GT boxes, student − its teacher per seed" in report

    # Resume: a second invocation reads the finished runs and trains nothing.
    logs = {f: open(os.path.join(f, "log.txt")).read() for f in folders}
    report = open(experiments.main(argv)).read()
    assert {f: open(os.path.join(f, "log.txt")).read() for f in folders} == logs
    assert f"runs trained at: {experiments.git_commit()} (4 runs)" in report  # read from harness.json

    # A run whose metrics.json is gone is trained again, and only that one.
    os.remove(os.path.join(folders[0], "metrics.json"))
    experiments.main(argv)
    assert os.path.exists(os.path.join(folders[0], "metrics.json"))
    assert open(os.path.join(folders[0], "log.txt")).read() != logs[folders[0]]
    assert all(open(os.path.join(f, "log.txt")).read() == logs[f] for f in folders[1:])

    # --no-mask-diagnostics reads the cached IoUs only: a run without one shows n/a, nothing is measured
    os.remove(os.path.join(folders[1], "gt_box_iou.json"))
    report = open(experiments.main([*argv, "--report-only", "--no-mask-diagnostics"])).read()
    assert not os.path.exists(os.path.join(folders[1], "gt_box_iou.json"))
    assert "(one seed)" in "".join(row[7] for row in _table_rows(report).values())


def test_training_commits_counts_each_finished_run_once():
    def run(study, seed, folder):
        return experiments.Run(study, "Mask R-CNN P10", "c.yaml", [], seed, folder=folder)

    runs = [run("supervision", 0, "a"), run("num_points", 0, "a"), run("supervision", 1, "b"),
            run("supervision", 2, "c"), run("supervision", 3, "d")]
    statuses = {runs[0].key(): {"ok": True, "commit": "abc1234"}, runs[1].key(): {"ok": True, "commit": "abc1234"},
                runs[2].key(): {"ok": True}, runs[3].key(): {"ok": False, "commit": "abc1234"}}
    assert experiments.training_commits(runs, statuses) == "abc1234 (1 run), not recorded (1 run)"
    assert experiments.training_commits(runs[3:], statuses) == "none finished"


def test_dry_run_lists_every_study(tmp_path, capsys):
    data = generate_synthetic_dataset(str(tmp_path / "data"), num_train=6, num_val=2, image_size=64, seed=0)
    experiments.main(["--study", "all", "--seeds", "2", "--dry-run", "--out", str(tmp_path / "runs"),
                      "--train-json", data["train_json"], "--train-images", data["image_dir"],
                      "--val-json", data["val_json"], "--val-images", data["image_dir"]])
    printed = capsys.readouterr().out
    for study in experiments.STUDIES:
        assert f"\n{study}/" in "\n" + printed
    # supervision: 4 models x (masks, P10+aug) + Mask R-CNN P10, for each of 2 seeds.
    assert printed.count("supervision/") == 2 * 9
    # The point files were simulated by the harness from the masks, without masks.
    p10 = json.load(open(tmp_path / "runs" / "data" / "train_p10_seed0.json"))
    assert all(len(a["point_labels"]) == 10 and "segmentation" not in a for a in p10["annotations"])


def test_report_of_every_study_from_finished_runs(tmp_path):
    """write_report on runs whose metrics exist (no training): every study gets its table,
    its claims and its plot, and mean ± std / ratios come from the files."""
    import argparse

    data_paths = generate_synthetic_dataset(str(tmp_path / "data"), num_train=6, num_val=2, image_size=64, seed=0)
    argv = ["--study", "all", "--seeds", "2", "--iters", "10", "--out", str(tmp_path / "runs"),
            "--train-json", data_paths["train_json"], "--train-images", data_paths["image_dir"],
            "--val-json", data_paths["val_json"], "--val-images", data_paths["image_dir"]]
    args = experiments.parse_args(argv)
    data = experiments.Data("tiny", data_paths["train_json"], data_paths["image_dir"], data_paths["val_json"],
                            data_paths["image_dir"], args.out)
    plan = {study: getattr(experiments.Planner(data, args), study)() for study in args.study}
    for runs in plan.values():
        for k, run in enumerate(runs):
            os.makedirs(run.folder, exist_ok=True)
            ap = 10.0 + k + run.seed  # distinct, known values
            metrics = {"bbox": {"AP": ap + 1}, "segm": {"AP": ap, "AP50": 2 * ap, "AP75": ap / 2}, "iteration": 10}
            with open(os.path.join(run.folder, "metrics.json"), "w") as f:
                json.dump(metrics, f)
            with open(os.path.join(run.folder, "metrics.jsonl"), "w") as f:
                for it in (5, 10):
                    f.write(json.dumps({"iter": it, **metrics}) + "\n")
            if run.label in ("Mask R-CNN masks", "Mask R-CNN P10"):  # as gt_box_iou caches it
                with open(os.path.join(run.folder, "gt_box_iou.json"), "w") as f:
                    json.dump({"mean_iou": 50.0 + k + run.seed, "iou75": 1.0}, f)
    # as mask_ap_on_reference_detections caches it: P10's masks on the masks run's detections, AP 8 + seed
    for run in plan["supervision"]:
        if run.label == "Mask R-CNN P10":
            (masks_run,) = [r for r in plan["supervision"] if r.label == "Mask R-CNN masks" and r.seed == run.seed]
            with open(os.path.join(run.folder, "mask_ap_on_detections.json"), "w") as f:
                json.dump({os.path.realpath(masks_run.folder): 8.0 + run.seed}, f)
        # both point heads on PointRend masks' detections: Implicit 30 + 2 x seed, PointRend 28
        if run.label in ("Implicit PointRend P10+aug", "PointRend P10+aug"):
            (detector,) = [r for r in plan["supervision"] if r.label == "PointRend masks" and r.seed == run.seed]
            with open(os.path.join(run.folder, "mask_ap_on_detections.json"), "w") as f:
                json.dump({os.path.realpath(detector.folder): 28.0 if run.label == "PointRend P10+aug"
                           else 30.0 + 2 * run.seed}, f)
    report_path = str(tmp_path / "report" / "report.md")
    text = experiments.write_report(report_path, plan, {}, data, args, "python -m pointsup.experiments ...", 1.0)
    for study in experiments.STUDIES:
        assert f"## {study}" in text
        assert os.path.exists(tmp_path / "report" / f"{study}.png"), study
    rows = _table_rows(text)
    # supervision, seeds paired: Mask R-CNN masks is run 0 (seed 0) and run 9 (seed 1) of the list
    runs = plan["supervision"]
    masks = [10.0 + k + r.seed for k, r in enumerate(runs) if r.label == "Mask R-CNN masks"]
    p10 = [10.0 + k + r.seed for k, r in enumerate(runs) if r.label == "Mask R-CNN P10"]
    mean, std = experiments.mean_std([a / b for a, b in zip(p10, masks)])
    assert rows["Mask R-CNN P10"][5] == f"{mean:.2f} ± {std:.2f}"
    assert rows["Mask R-CNN masks"][1] == experiments.fmt(*experiments.mean_std(masks))
    # the IoU columns pair seeds the same way; runs without a measurement (no weights here) show n/a
    iou_masks = [50.0 + k + r.seed for k, r in enumerate(runs) if r.label == "Mask R-CNN masks"]
    iou_p10 = [50.0 + k + r.seed for k, r in enumerate(runs) if r.label == "Mask R-CNN P10"]
    assert rows["Mask R-CNN P10"][7] == experiments.fmt(*experiments.mean_std(iou_p10))
    assert rows["Mask R-CNN P10"][8] == experiments.fmt(*experiments.mean_std([a / b for a, b in zip(iou_p10, iou_masks)]), digits=2)
    assert rows["CondInst P10+aug"][7] == "n/a" and rows["CondInst P10+aug"][8] == "n/a"
    # same detector: AP 8, 9 over the masks runs' own AP (seeds paired); rows without a measurement are left out
    same = [line for line in text.splitlines() if line.startswith("| Mask R-CNN P10 |") and line.count("|") == 5]
    ratios = [(8.0 + seed) / ap for seed, ap in enumerate(masks)]
    assert same == [f"| Mask R-CNN P10 | 8.5 ± 0.7 | {experiments.fmt(*experiments.mean_std(ratios), digits=2)} | 2 |"]
    assert "mask AP on the masks model's detections" in text
    small_tables = "".join(line for line in text.splitlines() if line.count("|") == 5)
    assert "| PointRend P10+aug | 28.0 ± 0.0 |" in small_tables  # measured on its own masks model's detections
    assert "| Implicit PointRend P10+aug |" not in small_tables  # only on another model's: not in this table
    # the paired difference of the two heads on one detector: +2, +4
    assert ("Implicit PointRend P10+aug − PointRend P10+aug, both on the detections of PointRend masks (same seed): "
            "3.0 ± 1.4 mask AP per seed (+2.0, +4.0; paper +1.2): a difference beyond the std") in text
    assert "Implicit PointRend P10+aug − PointRend P10+aug" in text
    assert "annotation hours" in text
    # schedule: per seed masks then P10 (k = 0, 1 for seed 0; 2, 3 for seed 1), every evaluation
    # logged the run's final AP: masks 10, 13 and P10 11, 14 -> gap -1.0 at both iterations
    assert "masks − P10 (means over seeds), by iteration: 5: -1.0, 10: -1.0" in text


def _load_script(name: str):
    """A module of scripts/ (not a package), imported from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        name, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stability_table_counts_finished_seeds_and_names_errors(tmp_path):
    check_stability = _load_script("check_stability")
    runs = []
    for seed in range(3):
        run = experiments.Run("stability", "size160 implicit_pointrend_P10", "c.yaml", [], seed)
        run.folder = str(tmp_path / f"seed{seed}")
        os.makedirs(run.folder)
        runs.append(run)
    for run, ap, losses in zip(runs, (20.0, 30.0), ([4.0, 2.0, 6.0, 1.0], [3.0, 1.5])):
        with open(os.path.join(run.folder, "metrics.json"), "w") as f:
            json.dump({"iteration": 300, "segm": {"AP": ap}, "bbox": {"AP": 1.0}}, f)
        with open(os.path.join(run.folder, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps({"iter": 20 * (i + 1), "total_loss": loss}) + "\n" for i, loss in enumerate(losses))
    # the failed seed logged a huge loss before it stopped: not counted, it did not finish
    with open(os.path.join(runs[2].folder, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"iter": 20, "total_loss": 1.0}) + "\n" + json.dumps({"iter": 40, "total_loss": 1e22}) + "\n")
    statuses = {runs[2].key(): {"error": "FloatingPointError: non-finite loss at iteration 107"}}
    table = check_stability.stability_table(runs, statuses, 3)
    row = table.splitlines()[-1]
    # mean ± sample std of the finished seeds' AP; largest loss rise among them: 6.0 / 4.0
    assert row.startswith("| size160 | implicit_pointrend_P10 | 2 | 25.0 ± 7.1 | 1.50 |")
    assert "seed 2: FloatingPointError: non-finite loss at iteration 107" in row
    assert math.isnan(check_stability.loss_rise(str(tmp_path / "no_log")))


def test_stability_check_and_harness_cover_every_synthetic_config():
    """A new config in configs/synthetic is trained by the stability check, and every config
    a harness study names exists (and has a paper-scale counterpart for --config-set coco)."""
    check_stability = _load_script("check_stability")
    shipped = {name[: -len(".yaml")] for name in os.listdir(os.path.join(experiments.CONFIG_ROOT, "synthetic"))
               if name.endswith(".yaml") and not name.startswith("Base-")}
    assert set(check_stability.CONFIGS) == shipped
    assert set(experiments.COCO_CONFIGS) <= shipped
    for coco_name in experiments.COCO_CONFIGS.values():
        assert os.path.isfile(os.path.join(experiments.CONFIG_ROOT, "coco", coco_name + ".yaml")), coco_name


def test_gt_box_mask_ious_scores_masks_against_the_gt_and_the_box_baseline():
    import numpy as np
    import pycocotools.mask as mask_util

    from pointsup.evaluation import gt_box_mask_ious

    # One 20 x 40 image; the object is the left half of its box (x 10..30, y 0..10 of a 20 x 10 box).
    ground_truth = {"images": [{"id": 1, "height": 20, "width": 40}], "annotations": [
        {"id": 7, "image_id": 1, "bbox": [10, 0, 20, 10], "iscrowd": 0, "segmentation": [[10, 0, 20, 0, 20, 10, 10, 10]]},
        {"id": 8, "image_id": 1, "bbox": [0, 0, 40, 20], "iscrowd": 1, "segmentation": [[0, 0, 40, 0, 40, 20, 0, 20]]}]}
    assert gt_box_mask_ious(None, ground_truth).tolist() == pytest.approx([0.5])  # the crowd annotation is left out
    # a prediction of the right half of the box misses the object entirely; the left half is exact
    for x0, expected in ((20, 0.0), (10, 1.0)):
        mask = np.zeros((20, 40), np.uint8)
        mask[0:10, x0:x0 + 10] = 1
        rle = mask_util.encode(np.asfortranarray(mask))
        predicted = {"annotations": [{"id": 7, "segmentation": {"size": [20, 40], "counts": rle["counts"].decode("ascii")}}]}
        assert gt_box_mask_ious(predicted, ground_truth).tolist() == pytest.approx([expected])


def _plan(tmp_path, studies: list[str], extra: list[str] = ()):
    data_paths = generate_synthetic_dataset(str(tmp_path / "data"), num_train=6, num_val=2, image_size=64, seed=0)
    args = experiments.parse_args(["--study", *studies, "--seeds", "2", "--iters", "10", "--out", str(tmp_path / "runs"),
                                   "--train-json", data_paths["train_json"], "--train-images", data_paths["image_dir"],
                                   "--val-json", data_paths["val_json"], "--val-images", data_paths["image_dir"], *extra])
    data = experiments.Data("tiny", data_paths["train_json"], data_paths["image_dir"], data_paths["val_json"],
                            data_paths["image_dir"], args.out)
    planner = experiments.Planner(data, args)
    return args, data, {study: getattr(planner, study)() for study in studies}


def _finish(run, ap: float) -> None:
    """What a finished `pointsup.train` leaves: its resolved config and metrics."""
    from pointsup.config import load_config, save_config

    os.makedirs(run.folder, exist_ok=True)
    save_config(load_config(run.config, [*run.overrides, f"seed={run.seed}", f"output_dir={run.folder}"]),
                os.path.join(run.folder, "config.yaml"))
    with open(os.path.join(run.folder, "metrics.json"), "w") as f:
        json.dump({"iteration": 10, "bbox": {"AP": ap}, "segm": {"AP": ap, "AP50": ap, "AP75": ap}}, f)


def test_p10_without_aug_for_every_model(tmp_path):
    """The paper's protocol trains only Mask R-CNN with P10 both ways; `--p10-without-aug all`
    adds a P10 row without point aug for every model, on its own no-aug config, which the
    report pairs with the same model's masks row."""
    args, data, plan = _plan(tmp_path, ["supervision"])
    assert {r.label for r in plan["supervision"] if r.group == "P10"} == {"Mask R-CNN P10"}
    args, data, plan = _plan(tmp_path, ["supervision"], ["--p10-without-aug", "all"])
    p10 = {r.label: r for r in plan["supervision"] if r.group == "P10" and r.seed == 0}
    assert set(p10) == {f"{model} P10" for model in experiments.MODELS}
    for model, stem in experiments.MODELS.items():
        assert os.path.basename(p10[f"{model} P10"].config) == f"{stem}_P10.yaml"
        assert not load_config(p10[f"{model} P10"].config).data.point_aug
    coco = experiments.Planner(data, experiments.parse_args(["--config-set", "coco", "--p10-without-aug", "all"]))
    for run in coco.supervision():
        assert os.path.exists(run.config), run.config  # the paper-scale configs exist for every row
    for run in plan["supervision"]:
        _finish(run, {"masks": 40.0, "P10": 36.0}.get(run.group, 32.0))
    report = experiments.write_report(str(tmp_path / "report.md"), plan, {}, data, args, "cmd", 1.0)
    assert "| PointRend P10 | 36.0 ± 0.0 |" in report and "every model also with P10 without point aug" in report
    row = next(line for line in report.splitlines() if line.startswith("| CondInst P10 |"))
    assert "0.90 ± 0.00" in row  # 36 / 40, paired with CondInst masks


def test_identical_runs_of_different_studies_are_trained_once(tmp_path):
    args, data, plan = _plan(tmp_path, ["supervision"], ["--models", "mask_rcnn"])
    for run in plan["supervision"]:
        _finish(run, 30.0 + run.seed if run.label == "Mask R-CNN P10" else 50.0)
    supervision_p10 = {r.seed: r.folder for r in plan["supervision"] if r.label == "Mask R-CNN P10"}

    # A later invocation: num_points P10 and noise's clean row are the finished supervision runs
    # (same config, data and seed); every other point count / noise level is its own run.
    args, data, plan = _plan(tmp_path, ["num_points", "noise"], ["--num-points", "5", "10", "--noise-fractions", "0.05"])
    runs = [r for study_runs in plan.values() for r in study_runs]
    assert experiments.reuse_twins(runs, args.out) == 4
    for run in runs:
        if run.label in ("P10", "P10 clean"):
            assert run.folder == supervision_p10[run.seed] and run.reused_from.startswith("supervision")
            assert experiments.run_finished(run)["segm"]["AP"] == 30.0 + run.seed
        else:
            assert not run.reused_from and experiments.run_finished(run) is None
    # A different seed, data file or override is never a twin.
    assert {r.folder for r in runs if r.label == "P5"}.isdisjoint(supervision_p10.values())

    # The report reads them, says where from, and does not count their run time.
    report = experiments.write_report(str(tmp_path / "report.md"), plan, {}, data, args, "cmd", 1.0)
    assert "Read from an identical run of another study" in report and "seed 0 = supervision" in report


def test_identical_runs_planned_together_train_once(tmp_path):
    args, data, plan = _plan(tmp_path, ["num_points", "noise"], ["--num-points", "10", "--noise-fractions", "0.05"])
    runs = [r for study_runs in plan.values() for r in study_runs]
    assert experiments.reuse_twins(runs, args.out) == 2  # noise's clean row waits for num_points P10
    for run in runs:
        if run.label == "P10 clean":
            twin, = run.depends
            assert twin.study == "num_points" and twin.seed == run.seed and run.folder == twin.folder
    assert len({r.folder for r in runs}) == len(runs) - 2


def test_self_training_reads_the_teacher_from_its_twin(tmp_path):
    args, data, plan = _plan(tmp_path, ["supervision"], ["--models", "mask_rcnn"])
    for run in plan["supervision"]:
        _finish(run, 30.0)
    teacher_folder = {r.seed: r.folder for r in plan["supervision"] if r.label == "Mask R-CNN P10"}
    args, data, plan = _plan(tmp_path, ["self_training"])
    runs = plan["self_training"]
    assert experiments.reuse_twins(runs, args.out) == 2  # the teachers; the students have their own step
    for student in (r for r in runs if r.before):
        pseudo_labelling, = student.before
        config = pseudo_labelling[pseudo_labelling.index("--config") + 1]
        weights = pseudo_labelling[pseudo_labelling.index("--weights") + 1]
        assert config == os.path.join(teacher_folder[student.seed], "config.yaml") and os.path.exists(config)
        assert weights == os.path.join(teacher_folder[student.seed], "model_final.pth")
        assert not student.reused_from


@pytest.mark.parametrize("argv", [["--num-points", "0"], ["--noise-fractions", "1.5"], ["--noise-fractions", "-0.1"]])
def test_study_values_out_of_range_are_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit):
        experiments.parse_args(argv)
    assert "--num-points must be >= 1 and --noise-fractions in [0, 1]" in capsys.readouterr().err


def test_self_training_gain_is_paired_by_seed():
    """Each student learns from its own seed's teacher: the gain is the mean ± std of the
    per-seed differences, not a difference of two means judged against their stds."""
    def row(label, group, segm):
        return {"label": label, "group": group, "seeds": [0, 1, 2], "segm": segm}

    teacher = row("P10", "P10", [40.0, 36.0, 44.0])  # std 4.0: a gain of 1 looks like noise unpaired
    student = row("P10 -> pseudo masks", "self-trained", [41.0, 37.2, 44.8])
    (line,) = experiments.claims("self_training", [teacher, student])
    assert "1.0 ± 0.2 AP (+1.0, +1.2, +0.8" in line and "within noise" not in line
    student["segm"] = [42.0, 35.0, 44.0]  # gains +2, -1, 0
    (line,) = experiments.claims("self_training", [teacher, student])
    assert "0.3 ± 1.5 AP" in line and "within noise" in line



def test_noise_drops_are_paired_by_seed_for_every_level():
    """The 5% target line, then each noisy row's drop from the clean row per training seed,
    ordered by noise level (5% before 10%)."""
    def row(label, segm):
        return {"label": label, "group": label, "seeds": [0, 1, 2], "segm": segm}

    rows = [row("P10 clean", [40.0, 36.0, 44.0]), row("P10 10% random", [37.0, 34.0, 40.0]),
            row("P10 5% random", [39.0, 35.0, 43.0]), row("P10 5% boundary", [39.5, 35.5, 43.5]),
            row("P10 10% boundary", [38.0, 35.0, 42.0])]
    lines = experiments.claims("noise", rows)
    assert lines[0].startswith("- 5% noise drops: random 1.0 AP, boundary 0.5 AP") and lines[0].endswith("**not met**")
    drops = [line for line in lines if "drop from clean, per seed" in line]
    assert [line.split(":")[0] for line in drops] == ["- P10 5% boundary", "- P10 5% random", "- P10 10% boundary",
                                                      "- P10 10% random"]
    assert "3.0 ± 1.0 AP (+3.0, +2.0, +4.0)" in drops[3]
    assert "0.5 ± 0.0 AP (+0.5, +0.5, +0.5)" in drops[0]

def test_only_selects_matching_runs_and_what_they_depend_on(tmp_path):
    args, data, plan = _plan(tmp_path, ["self_training"])
    runs = plan["self_training"]
    students = [r for r in runs if r.before]
    selected = experiments.select_runs(runs, [students[0].key()])
    # The one student plus its teacher, in plan order (the teacher trains first).
    assert [r.key() for r in selected] == [students[0].depends[0].key(), students[0].key()]
    assert experiments.select_runs(runs, None) == runs
    assert experiments.select_runs(runs, ["no/such/run"]) == []
    seed1 = experiments.select_runs(runs, ["*/seed1"])
    assert seed1 and all(r.seed == 1 for r in seed1)
