"""The state of one point-labelling job: sampled points, labels and timing (paper appendix A).

Shape letters (`pointsup.structures`): P points per object (`num_points`, the paper's P_N).

A job is a COCO box file (no masks needed) plus, for every object, P points sampled once
inside its box and then labelled one by one by a person: 1 = object, 0 = background.
The points come from `pointsup.data.simulate_points.sample_points_in_box` with the same
seed, file order and box clipping as `simulate_points`, so for a file in which every
annotation has a mask they are exactly the points `simulate_points` would label from the
masks (a test checks this).

Objects. Every annotation with a non-empty box (clipped to the image) gets points; crowd
annotations get points too (to keep the random stream identical to `simulate_points`) but
are not queued, because training never uses them. Objects are asked in file order.

Persistence: nothing the browser was told is saved can be lost, even on SIGKILL.
    OUTPUT           the COCO JSON that `pointsup.train` reads unchanged: the input with
                     `point_coords` / `point_labels` (the labelled points only, see
                     `pointsup.data.points`) and `point_status` on every annotation, plus a
                     top-level "annotate" block holding the whole job (all sampled points,
                     labels with nulls, per-point milliseconds, undo history).
                     Rewritten atomically (temp file + os.replace) every `snapshot_every`
                     events, when the server starts and when it exits.
    OUTPUT.journal   one JSON line per event (label, undo, skip, flip), appended and fsynced
                     before the browser gets its answer. On start the snapshot is read, the
                     journal events newer than it (by sequence number) are replayed, and a
                     torn last line (killed mid-write, so never acknowledged) is dropped.

`point_status` (what training does with it):
    complete      all P points labelled: trained on its P points.
    partial       some points labelled: `point_coords`/`point_labels` hold those, and
                  `pointsup.train` uses them as they are (fewer points, same loss).
    unlabelled    no point labelled yet, and
    skipped       the annotator pressed "skip object" (any labels it had are not written):
                  no points are written, so the object trains its box and class only
                  (`pointsup.data.points.pad_points` gives it ignore labels, no mask loss).
    not_queued    crowd annotation or empty box: never asked, never trained on.
To train on complete objects only, drop the points of the others (filter on point_status).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pointsup.data.points import points_to_json
from pointsup.data.simulate_points import sample_points_in_box
from pointsup.utils.io import atomic_write_json

JOB_FORMAT_VERSION = 1
# Labels-per-minute and time-left use the timing of the last few labels ("current pace").
PACE_WINDOW = 20


class JobError(ValueError):
    """A request the job refuses; `status` is the HTTP status code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class AnnotatedObject:
    """One queued object: its box, its P sampled points and what the annotator said.

    coords_img: P (x, y) points in continuous image pixels, inside box_xyxy.
    labels:     P values, 1 / 0 / None (not labelled yet).
    ms:         P milliseconds from showing the point to the key press, None if unlabelled.
    """

    ann_id: int
    image_id: int
    category: str
    box_xyxy: tuple[float, float, float, float]
    coords_img: list[list[float]]
    labels: list[int | None]
    ms: list[float | None]
    skipped: bool = False

    @property
    def num_labelled(self) -> int:
        return sum(v is not None for v in self.labels)

    @property
    def is_open(self) -> bool:
        """Still has a point to ask (not skipped, not complete)."""
        return not self.skipped and None in self.labels

    @property
    def status(self) -> str:
        if self.skipped:
            return "skipped"
        n = self.num_labelled
        return "complete" if n == len(self.labels) else "partial" if n > 0 else "unlabelled"


def clipped_box_xyxy(bbox: Any, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """COCO [x, y, w, h] -> xyxy clipped to the (H, W) image, as `simulate_points` does."""
    H, W = image_size
    x, y, w, h = (float(v) for v in bbox)
    return (min(max(x, 0.0), W), min(max(y, 0.0), H), min(max(x + w, 0.0), W), min(max(y + h, 0.0), H))


def sample_job_points(
    coco: dict[str, Any], num_points: int, seed: int, source: str = "<coco>"
) -> tuple[dict[int, np.ndarray], list[int]]:
    """Sample P points in every non-empty box, in file order, with one generator.

    returns (coords_img per annotation id: (P, 2) float64, ids to ask in order: crowd
    annotations and empty boxes are left out of the queue).
    """
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    rng = np.random.default_rng(seed)
    image_sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in coco["images"]}
    coords_per_ann: dict[int, np.ndarray] = {}
    queue: list[int] = []
    seen: set[Any] = set()
    for ann in coco["annotations"]:
        ann_id = ann.get("id")
        if not isinstance(ann_id, int) or isinstance(ann_id, bool) or ann_id in seen:
            raise ValueError(f"{source}: every annotation needs a unique integer id (got {ann_id!r})")
        seen.add(ann_id)
        if ann.get("image_id") not in image_sizes:
            raise ValueError(f"{source}: annotation id {ann_id} refers to unknown image_id {ann.get('image_id')!r}")
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"{source}: annotation id {ann_id} has no valid bbox [x, y, w, h] (got {bbox!r})")
        box_xyxy = clipped_box_xyxy(bbox, image_sizes[ann["image_id"]])
        if not (box_xyxy[2] > box_xyxy[0] and box_xyxy[3] > box_xyxy[1]):
            continue  # simulate_points draws nothing for an empty box either
        coords_per_ann[ann_id] = sample_points_in_box(rng, box_xyxy, num_points)  # (P, 2)
        if not ann.get("iscrowd", 0):
            queue.append(ann_id)
    return coords_per_ann, queue


@dataclass
class AnnotationJob:
    """All objects of a job plus the event log that changes them.

    Every change is an event dict with a sequence number: `apply` performs it, and the
    same `apply` replays the journal after a restart, so a live session and a resumed one
    go through exactly the same code. Not thread-safe by itself: the server holds a lock.
    """

    coco: dict[str, Any]
    num_points: int
    seed: int
    objects: list[AnnotatedObject]
    history: list[list[Any]] = field(default_factory=list)  # undo stack: ["label", id, i] / ["skip", id]
    seq: int = 0

    def __post_init__(self) -> None:
        self.by_id = {obj.ann_id: obj for obj in self.objects}
        self.index_of = {obj.ann_id: k for k, obj in enumerate(self.objects)}
        self._first_open = 0  # no open object before this queue index
        self._recount()

    def _recount(self) -> None:
        """Progress counters from scratch; `apply` then keeps them up to date in O(1)."""
        self._total_points = self._labelled_points = self._complete_objects = 0
        for obj in self.objects:
            self._count(obj, +1)

    def _count(self, obj: AnnotatedObject, sign: int) -> None:
        """Add (+1) or remove (-1) one object's share of the progress counters."""
        if not obj.skipped:
            self._total_points += sign * len(obj.labels)
            self._labelled_points += sign * obj.num_labelled
        self._complete_objects += sign * (obj.status == "complete")

    # ----------------------------------------------------------------- building
    @classmethod
    def create(cls, coco: dict[str, Any], num_points: int, seed: int, source: str = "<coco>") -> "AnnotationJob":
        """A fresh job: sample the points of every object, nothing labelled."""
        coords_per_ann, queue = sample_job_points(coco, num_points, seed, source)
        categories = {c["id"]: str(c.get("name", c["id"])) for c in coco["categories"]}
        anns = {a["id"]: a for a in coco["annotations"]}
        image_sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in coco["images"]}
        objects = []
        for ann_id in queue:
            ann = anns[ann_id]
            if ann.get("category_id") not in categories:
                raise ValueError(f"{source}: annotation id {ann_id} has unknown category_id {ann.get('category_id')!r}")
            objects.append(
                AnnotatedObject(
                    ann_id=ann_id,
                    image_id=ann["image_id"],
                    category=categories[ann["category_id"]],
                    box_xyxy=clipped_box_xyxy(ann["bbox"], image_sizes[ann["image_id"]]),
                    coords_img=coords_per_ann[ann_id].tolist(),
                    labels=[None] * num_points,
                    ms=[None] * num_points,
                )
            )
        return cls(coco=coco, num_points=num_points, seed=seed, objects=objects)

    @classmethod
    def from_output(cls, saved: dict[str, Any], coco: dict[str, Any], num_points: int, seed: int, source: str) -> "AnnotationJob":
        """Rebuild a job from its own output file; refuse one made from other input or settings."""
        block = saved.get("annotate")
        if not isinstance(block, dict) or block.get("version") != JOB_FORMAT_VERSION:
            raise ValueError(f"{source} exists but was not written by pointsup.annotate (no 'annotate' block); "
                             "choose another --output")
        if (block["num_points"], block["seed"]) != (num_points, seed):
            raise ValueError(
                f"{source} was started with --num-points {block['num_points']} --seed {block['seed']}, "
                f"not {num_points} / {seed}: restart with the same arguments or choose another --output"
            )
        fresh = cls.create(coco, num_points, seed, source)
        stored = {int(k): v for k, v in block["objects"].items()}
        if [o.ann_id for o in fresh.objects] != [int(k) for k in block["queue"]]:
            raise ValueError(f"{source} was made from a different input file (other objects); choose another --output")
        for obj in fresh.objects:
            s = stored[obj.ann_id]
            # The stored points win: they are the ones the annotator saw.
            obj.coords_img, obj.labels, obj.ms, obj.skipped = s["coords"], s["labels"], s["ms"], s["skipped"]
        fresh.history = block["history"]
        fresh.seq = block["seq"]
        fresh._recount()
        return fresh

    # ------------------------------------------------------------------ queries
    def next_open(self) -> tuple[AnnotatedObject, int] | None:
        """(object, index of its first unlabelled point) to ask next, or None when done."""
        for k in range(self._first_open, len(self.objects)):
            obj = self.objects[k]
            if obj.is_open:
                self._first_open = k
                return obj, obj.labels.index(None)
        self._first_open = len(self.objects)
        return None

    def get(self, ann_id: Any) -> AnnotatedObject:
        """The queued object with this id, or a 404 JobError."""
        if isinstance(ann_id, bool) or not isinstance(ann_id, int) or ann_id not in self.by_id:
            raise JobError(404, f"unknown object id {ann_id!r}: not an annotation of this job")
        return self.by_id[ann_id]

    def progress(self) -> dict[str, Any]:
        """Counts and the current pace (labels per minute, seconds left for the open points)."""
        total, labelled = self._total_points, self._labelled_points
        recent_ms = [self.by_id[h[1]].ms[h[2]] for h in self.history[-PACE_WINDOW:] if h[0] == "label"]
        mean_ms = sum(recent_ms) / len(recent_ms) if recent_ms else None
        return {
            "labelled_points": labelled,
            "total_points": total,
            "complete_objects": self._complete_objects,
            "num_objects": len(self.objects),
            "labels_per_minute": None if not mean_ms else 60000.0 / mean_ms,
            "seconds_left": None if mean_ms is None else (total - labelled) * mean_ms / 1000.0,
        }

    # ------------------------------------------------------------------- events
    def make_event(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """Validate a browser request and turn it into an event (JobError if refused)."""
        if op == "label":
            obj = self.get(body.get("ann_id"))
            i, label, ms = body.get("point_index"), body.get("label"), body.get("ms")
            if isinstance(label, bool) or label not in (0, 1):
                raise JobError(400, f"label must be 0 (background) or 1 (object), got {label!r}")
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(obj.labels):
                raise JobError(400, f"point_index must be an integer in [0, {len(obj.labels)}), got {i!r}")
            if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not (0 <= ms < 8.64e7):
                raise JobError(400, f"ms must be the milliseconds from display to key (0 <= ms < 1 day), got {ms!r}")
            if obj.skipped or obj.labels[i] is not None or obj.labels.index(None) != i:
                # Another tab answered first (or this tab is stale): never label twice.
                raise JobError(409, f"point {i + 1} of object {obj.ann_id} is not the next unlabelled point "
                                    "(labelled in another tab?); showing the next one")
            return {"op": "label", "ann": obj.ann_id, "i": i, "label": label, "ms": float(ms)}
        if op == "undo":
            if not self.history:
                raise JobError(409, "nothing to undo")
            return {"op": "undo"}
        if op == "skip":
            obj = self.get(body.get("ann_id"))
            if not obj.is_open:
                raise JobError(409, f"object {obj.ann_id} is already {obj.status}")
            return {"op": "skip", "ann": obj.ann_id}
        if op == "flip":
            obj = self.get(body.get("ann_id"))
            i = body.get("point_index")
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(obj.labels):
                raise JobError(400, f"point_index must be an integer in [0, {len(obj.labels)}), got {i!r}")
            if obj.labels[i] is None:
                raise JobError(409, f"point {i + 1} of object {obj.ann_id} has no label to flip")
            return {"op": "flip", "ann": obj.ann_id, "i": i}
        raise JobError(404, f"unknown operation {op!r}")

    def apply(self, event: dict[str, Any]) -> None:
        """Perform one validated event and give it the next sequence number."""
        op = event["op"]
        if op not in ("label", "skip", "flip", "undo"):
            raise ValueError(f"unknown event {event!r}")
        last = self.history[-1] if op == "undo" else None
        obj = self.by_id[last[1] if op == "undo" else event["ann"]]
        self._count(obj, -1)
        if op == "label":
            obj.labels[event["i"]] = event["label"]
            obj.ms[event["i"]] = event["ms"]
            self.history.append(["label", obj.ann_id, event["i"]])
        elif op == "skip":
            obj.skipped = True
            self.history.append(["skip", obj.ann_id])
        elif op == "flip":
            obj.labels[event["i"]] = 1 - obj.labels[event["i"]]  # a review fix: not undoable, keeps its timing
        else:  # undo the last label or skip
            self.history.pop()
            if last[0] == "label":
                obj.labels[last[2]] = None
                obj.ms[last[2]] = None
            else:
                obj.skipped = False
            self._first_open = min(self._first_open, self.index_of[obj.ann_id])
        self._count(obj, +1)
        self.seq = event.get("seq", self.seq + 1)

    # ------------------------------------------------------------------- output
    def to_output(self) -> dict[str, Any]:
        """The output COCO dict: training fields on the annotations + the job block."""
        out = {k: v for k, v in self.coco.items() if k not in ("annotations", "annotate")}
        out["annotations"] = []
        for ann in self.coco["annotations"]:
            new_ann = {k: v for k, v in ann.items() if k not in ("point_coords", "point_labels", "point_status")}
            obj = self.by_id.get(ann["id"])
            if obj is None:
                new_ann["point_status"] = "not_queued"
            else:
                new_ann["point_status"] = obj.status
                if not obj.skipped and obj.num_labelled > 0:
                    done = [i for i, v in enumerate(obj.labels) if v is not None]
                    new_ann.update(points_to_json(np.asarray([obj.coords_img[i] for i in done]).reshape(-1, 2),
                                                  np.asarray([obj.labels[i] for i in done])))
            out["annotations"].append(new_ann)
        out["annotate"] = {
            "version": JOB_FORMAT_VERSION,
            "num_points": self.num_points,
            "seed": self.seed,
            "seq": self.seq,
            "queue": [o.ann_id for o in self.objects],
            "objects": {
                str(o.ann_id): {"coords": o.coords_img, "labels": o.labels, "ms": o.ms, "skipped": o.skipped}
                for o in self.objects
            },
            "history": copy.deepcopy(self.history),
        }
        return out


class JobStore:
    """An `AnnotationJob` bound to its output file and journal (see the module docstring)."""

    def __init__(self, job: AnnotationJob, output_path: str, snapshot_every: int = 25) -> None:
        self.job = job
        self.output_path = output_path
        self.journal_path = output_path + ".journal"
        self.snapshot_every = snapshot_every
        self._since_snapshot = 0
        self._journal_fd: int | None = None  # the journal, opened O_APPEND on first use

    @classmethod
    def open(cls, coco: dict[str, Any], output_path: str, num_points: int, seed: int,
             source: str = "<coco>", snapshot_every: int = 25) -> "JobStore":
        """Start a new job or resume the one in `output_path` (+ its journal); writes a snapshot."""
        if os.path.exists(output_path):
            try:
                with open(output_path) as f:
                    saved = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{output_path} is not valid JSON ({e}); was it edited by hand?") from None
            job = AnnotationJob.from_output(saved, coco, num_points, seed, output_path)
        else:
            job = AnnotationJob.create(coco, num_points, seed, source)
        store = cls(job, output_path, snapshot_every)
        for event in read_journal(store.journal_path):
            if event["seq"] > job.seq:
                job.apply(event)
        store.snapshot()  # also drops a torn journal tail before anything is appended
        return store

    def record(self, event: dict[str, Any]) -> None:
        """Journal (fsync) then apply one event; snapshot every `snapshot_every` events.

        Raises OSError, with the job unchanged, when the event cannot be journalled.
        """
        event = {"seq": self.job.seq + 1, **event}
        self._append_to_journal((json.dumps(event, separators=(",", ":")) + "\n").encode("utf-8"))
        self.job.apply(event)
        self._since_snapshot += 1
        if self._since_snapshot >= self.snapshot_every:
            try:
                self.snapshot()
            except OSError as e:
                # The event is safe in the journal; the snapshot is tried again next event.
                warnings.warn(f"could not rewrite {self.output_path} ({e}); the journal keeps the labels")

    def _append_to_journal(self, line: bytes) -> None:
        if self._journal_fd is None:
            self._journal_fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        start = os.lseek(self._journal_fd, 0, os.SEEK_END)
        try:
            written = 0
            while written < len(line):
                written += os.write(self._journal_fd, line[written:])
            os.fsync(self._journal_fd)
        except OSError:
            # Cut off a partial line, so that the next event does not follow a torn one.
            os.ftruncate(self._journal_fd, start)
            raise

    def snapshot(self) -> None:
        """Atomically rewrite the output, then empty the journal it now contains."""
        atomic_write_json(self.output_path, self.job.to_output())
        # Killed between these two lines: the journal's events are all <= the snapshot's
        # seq and are skipped on replay.
        if self._journal_fd is not None:
            os.ftruncate(self._journal_fd, 0)
        else:
            with open(self.journal_path, "w"):
                pass
        self._since_snapshot = 0

    def close(self) -> None:
        """Final snapshot; the store is not used afterwards."""
        self.snapshot()
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None


def read_journal(path: str) -> list[dict[str, Any]]:
    """Events of a journal file; a torn last line (no newline or bad JSON) is dropped."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    # A complete file ends with "\n", so the last element is "" unless the tail is torn.
    events = []
    for n, line in enumerate(lines[:-1]):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}: line {n + 1} is not a JSON event; the journal is damaged") from None
    return events
