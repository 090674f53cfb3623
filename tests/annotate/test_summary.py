"""Labelling speed from a job's timing."""

from __future__ import annotations

import json

import pytest

from pointsup.annotate.summary import main, summarize


def _block():
    return {"num_points": 3, "objects": {
        "1": {"labels": [1, 0, 1], "ms": [500.0, 1000.0, 1500.0], "skipped": False},  # complete, 3 s
        "2": {"labels": [0, None, None], "ms": [45000.0, None, None], "skipped": False},  # a pause
        "3": {"labels": [1, None, None], "ms": [2000.0, None, None], "skipped": True},
        "4": {"labels": [None] * 3, "ms": [None] * 3, "skipped": False},
    }}


def test_summary_numbers():
    s = summarize(_block(), pause_seconds=30, instances=100)
    assert s["status"] == {"complete": 1, "partial": 1, "unlabelled": 1, "skipped": 1}
    assert (s["num_timed"], s["num_pauses"]) == (4, 1)
    assert s["seconds_per_point"] == pytest.approx(5.0 / 4)
    assert s["median_seconds_per_point"] == pytest.approx(1.25)
    assert s["seconds_per_object"] == pytest.approx(3.0)
    assert s["open_points"] == 5  # object 2's two and object 4's three; skipped ones are not open
    assert s["seconds_left"] == pytest.approx(5 * 1.25)
    assert s["seconds_for_instances"] == pytest.approx(100 * 3 * 1.25)
    assert sum(s["histogram"]) == 4


def test_summary_cli(tmp_path, capsys):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"annotate": _block()}))
    main([str(path)])
    out = capsys.readouterr().out
    assert "5/12 points labelled" in out and "mean 1.25" in out and "1 pauses left out" in out
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not written by pointsup.annotate"):
        main([str(path)])
