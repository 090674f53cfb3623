"""The job without a browser: sampling, events, atomic snapshot + journal resume, validation."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

from pointsup.annotate.job import AnnotationJob, JobError, JobStore, read_journal
from pointsup.data.coco import CocoInstanceDataset
from pointsup.data.simulate_points import simulate_points
from tests.annotate.helpers import QUEUED_IDS, box_dataset


@pytest.fixture
def boxes(tmp_path):
    json_path, image_dir = box_dataset(str(tmp_path))
    with open(json_path) as f:
        return json.load(f), image_dir


def _label(store, value, ms=700.0):
    """Answer the point the job asks now."""
    obj, i = store.job.next_open()
    store.record(store.job.make_event("label", {"ann_id": obj.ann_id, "point_index": i, "label": value, "ms": ms}))


def test_points_are_those_simulate_points_draws(boxes):
    coco, _ = boxes
    with_masks = copy.deepcopy(coco)
    for ann in with_masks["annotations"]:  # a mask = the box, so simulate_points samples every box
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    simulated = {a["id"]: a["point_coords"] for a in simulate_points(with_masks, num_points=6, seed=3)["annotations"]}
    job = AnnotationJob.create(coco, num_points=6, seed=3)
    assert [o.ann_id for o in job.objects] == QUEUED_IDS  # the crowd box 3 is sampled but not asked
    for obj in job.objects:
        assert obj.coords_img == simulated[obj.ann_id]
        x0, y0, x1, y1 = obj.box_xyxy
        coords = np.asarray(obj.coords_img)
        assert ((coords >= (x0, y0)) & (coords <= (x1, y1))).all()
    other_seed = AnnotationJob.create(coco, num_points=6, seed=4)
    assert other_seed.objects[0].coords_img != job.objects[0].coords_img


def test_box_is_clipped_and_empty_boxes_are_not_queued(boxes):
    coco, _ = boxes
    coco["annotations"][0]["bbox"] = [-10, 100, 300, 50]  # reaches past the 160x120 image
    coco["annotations"][1]["bbox"] = [170, 10, 5, 5]  # entirely outside: empty after clipping
    job = AnnotationJob.create(coco, num_points=50, seed=0)
    assert job.by_id[1].box_xyxy == (0.0, 100.0, 160.0, 120.0)
    coords = np.asarray(job.by_id[1].coords_img)
    assert coords[:, 0].min() >= 0 and coords[:, 0].max() <= 160 and coords[:, 1].max() <= 120
    assert 2 not in job.by_id
    assert job.to_output()["annotations"][1]["point_status"] == "not_queued"


def test_label_undo_skip_flip_and_training_reads_the_output(boxes, tmp_path):
    coco, image_dir = boxes
    output = str(tmp_path / "labels.json")
    store = JobStore.open(coco, output, num_points=3, seed=0)
    for value in (1, 0, 1):
        _label(store, value)  # object 1 complete: [1, 0, 1]
    _label(store, 0)  # object 2: [0, ., .]
    _label(store, 1)  # object 2: [0, 1, .]
    store.record(store.job.make_event("undo", {}))  # object 2: [0, ., .]
    assert store.job.next_open()[0].ann_id == 2 and store.job.next_open()[1] == 1
    store.record(store.job.make_event("skip", {"ann_id": 4}))
    store.record(store.job.make_event("flip", {"ann_id": 1, "point_index": 1}))  # object 1: [1, 1, 1]
    store.close()

    with open(output) as f:
        saved = json.load(f)
    anns = {a["id"]: a for a in saved["annotations"]}
    assert anns[1]["point_labels"] == [1, 1, 1] and anns[1]["point_status"] == "complete"
    assert anns[2]["point_labels"] == [0] and anns[2]["point_status"] == "partial"
    assert anns[2]["point_coords"] == [store.job.by_id[2].coords_img[0]]
    assert "point_labels" not in anns[4] and anns[4]["point_status"] == "skipped"
    assert "point_labels" not in anns[5] and anns[5]["point_status"] == "unlabelled"
    assert saved["annotate"]["objects"]["1"]["ms"] == [700.0] * 3

    dataset = CocoInstanceDataset(output, image_dir, use_masks=False)
    targets = dataset.load_targets(0)  # objects 1 (3 points) and 2 (1 point, padded with -1)
    assert targets.point_labels.tolist() == [[1, 1, 1], [0, -1, -1]]
    assert targets.point_coords[1, 0].tolist() == pytest.approx(anns[2]["point_coords"][0])
    assert dataset.load_targets(1).point_labels is None  # image 2: box-only objects, no point targets


def test_resume_after_kill_loses_nothing_and_duplicates_nothing(boxes, tmp_path):
    coco, _ = boxes
    output = str(tmp_path / "labels.json")
    store = JobStore.open(coco, output, num_points=4, seed=0, snapshot_every=4)
    for value in (1, 0, 0, 1, 1):  # a snapshot after 4 events, the rest only in the journal
        _label(store, value)
    store.record(store.job.make_event("undo", {}))
    assert len(read_journal(output + ".journal")) == 2
    expected = store.job.to_output()
    # "SIGKILL": the store is dropped without close(); the OS keeps what was written.
    resumed = JobStore.open(coco, output, num_points=4, seed=0)
    assert resumed.job.to_output() == expected
    assert resumed.job.next_open()[0].ann_id == 2 and resumed.job.next_open()[1] == 0
    assert read_journal(output + ".journal") == []  # folded into the snapshot at start

    # Killed between writing a snapshot and emptying the journal: the old events are
    # replayed only if newer than the snapshot, so nothing is applied twice.
    _label(resumed, 0)
    events = read_journal(output + ".journal")
    resumed.snapshot()
    with open(output + ".journal", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in events)
        f.write('{"seq": 99, "op": "lab')  # and a torn last line: never acknowledged
    again = JobStore.open(coco, output, num_points=4, seed=0)
    assert again.job.to_output() == resumed.job.to_output()
    assert again.job.by_id[2].labels == [0, None, None, None]
    assert len(again.job.history) == 5


def test_snapshot_is_atomic(boxes, tmp_path, monkeypatch):
    coco, _ = boxes
    output = str(tmp_path / "labels.json")
    store = JobStore.open(coco, output, num_points=2, seed=0, snapshot_every=1000)
    _label(store, 1)
    store.snapshot()
    with open(output) as f:
        before = f.read()
    _label(store, 0)

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)  # the write of the new snapshot fails
    with pytest.raises(OSError, match="disk full"):
        store.snapshot()
    with open(output) as f:
        assert f.read() == before  # the old file is intact, not half written
    assert sorted(os.listdir(tmp_path)) == ["boxes.json", "images", "labels.json", "labels.json.journal"]


def test_restart_with_other_arguments_is_refused(boxes, tmp_path):
    coco, _ = boxes
    output = str(tmp_path / "labels.json")
    JobStore.open(coco, output, num_points=4, seed=0).close()
    with pytest.raises(ValueError, match="--num-points 4 --seed 0"):
        JobStore.open(coco, output, num_points=5, seed=0)
    with pytest.raises(ValueError, match="different input"):
        JobStore.open({**coco, "annotations": coco["annotations"][:2]}, output, num_points=4, seed=0)
    with open(output, "w") as f:
        json.dump(coco, f)  # someone's COCO file given as --output
    with pytest.raises(ValueError, match="not written by pointsup.annotate"):
        JobStore.open(coco, output, num_points=4, seed=0)


@pytest.mark.parametrize(
    "op, body, status",
    [
        ("label", {"ann_id": 1, "point_index": 0, "label": 2, "ms": 1.0}, 400),
        ("label", {"ann_id": 1, "point_index": 0, "label": True, "ms": 1.0}, 400),
        ("label", {"ann_id": 1, "point_index": 0, "label": "1", "ms": 1.0}, 400),
        ("label", {"ann_id": 1, "point_index": 0, "label": 1, "ms": -5}, 400),
        ("label", {"ann_id": 1, "point_index": 0, "label": 1}, 400),
        ("label", {"ann_id": 1, "point_index": 7, "label": 1, "ms": 1.0}, 400),
        ("label", {"ann_id": 999, "point_index": 0, "label": 1, "ms": 1.0}, 404),
        ("label", {"ann_id": "1", "point_index": 0, "label": 1, "ms": 1.0}, 404),
        ("label", {"ann_id": 3, "point_index": 0, "label": 1, "ms": 1.0}, 404),  # crowd: not in the job
        ("label", {"ann_id": 1, "point_index": 2, "label": 1, "ms": 1.0}, 409),  # not the next point
        ("label", {"ann_id": 1, "point_index": 0, "label": 1, "ms": 1.0}, 409),  # already labelled
        ("flip", {"ann_id": 2, "point_index": 0}, 409),  # nothing to flip
        ("skip", {"ann_id": 42}, 404),
        ("erase", {}, 404),
    ],
)
def test_requests_are_validated(boxes, op, body, status):
    coco, _ = boxes
    job = AnnotationJob.create(coco, num_points=4, seed=0)
    job.apply(job.make_event("label", {"ann_id": 1, "point_index": 0, "label": 1, "ms": 500}))
    before = job.to_output()
    with pytest.raises(JobError) as error:
        job.make_event(op, body)
    assert error.value.status == status
    assert job.to_output() == before


def test_undo_with_empty_history_is_refused(boxes):
    job = AnnotationJob.create(boxes[0], num_points=2, seed=0)
    with pytest.raises(JobError, match="nothing to undo"):
        job.make_event("undo", {})


def test_progress_counters_match_a_recount_after_random_events(boxes):
    job = AnnotationJob.create(boxes[0], num_points=3, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        op = ["label", "label", "label", "undo", "skip", "flip"][rng.integers(6)]
        found = job.next_open()
        obj = job.objects[rng.integers(len(job.objects))]
        body = {"ann_id": obj.ann_id, "point_index": int(rng.integers(3)), "label": int(rng.integers(2)), "ms": 5.0}
        if op == "label" and found is not None:
            body.update(ann_id=found[0].ann_id, point_index=found[1])
        try:
            job.apply(job.make_event(op, body))
        except JobError:
            continue
        progress = job.progress()
        not_skipped = [o for o in job.objects if not o.skipped]
        assert progress["total_points"] == 3 * len(not_skipped)
        assert progress["labelled_points"] == sum(v is not None for o in not_skipped for v in o.labels)
        assert progress["complete_objects"] == sum(o.status == "complete" for o in job.objects)
    assert job.history  # the walk did label things


def test_a_failed_journal_write_leaves_no_torn_line(boxes, tmp_path, monkeypatch):
    coco, _ = boxes
    output = str(tmp_path / "labels.json")
    store = JobStore.open(coco, output, num_points=4, seed=0, snapshot_every=1000)
    _label(store, 1)
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match="No space"):
        _label(store, 0)
    monkeypatch.setattr(os, "write", real_write)
    assert store.job.by_id[1].labels == [1, None, None, None]  # not applied either
    _label(store, 1)  # space again: the next event follows a complete line
    assert [e["seq"] for e in read_journal(output + ".journal")] == [1, 2]
    assert JobStore.open(coco, output, num_points=4, seed=0).job.by_id[1].labels == [1, 1, None, None]
