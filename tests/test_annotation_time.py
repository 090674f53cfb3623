"""The annotation-time model against the paper: Table 6 and the Figure 6 crossovers."""

from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image

from pointsup.annotation_time import (
    COCO_TRAIN2017_INSTANCES,
    Costs,
    cheapest_interval,
    crossover,
    main,
    table6,
    total_days,
)

PAPER_FRACTIONS = {"B": 1.0, "M": 0.4, "P10": 0.5}


def test_table6_matches_the_paper():
    table = table6(Costs(), COCO_TRAIN2017_INSTANCES)
    assert {form: round(s, 6) for form, (s, _) in table.items()} == {"B": 50.2, "M": 122.4, "P10": 59.2}
    days = {form: d for form, (_, d) in table.items()}
    for form, paper in {"B": 493, "M": 1204, "P10": 582}.items():
        assert abs(days[form] - paper) < 1  # the paper truncates to whole days
        assert math.floor(days[form]) == paper


def test_figure6_crossovers_match_the_paper_and_a_brute_force_search():
    costs = Costs().form_costs()  # B 7, M 79.2, P10 16 s without the find-and-name time
    assert abs(crossover(0.5, costs["P10"], 1.0, costs["B"]) - 2) < 1
    assert abs(crossover(0.5, costs["P10"], 0.4, costs["M"]) - 237) < 1
    lo, hi = cheapest_interval("P10", costs, PAPER_FRACTIONS)
    # Oracle: on a 0.01 s grid, where is P10 strictly the cheapest of the three?
    ts = np.arange(0, 400, 0.01)
    totals = {f: np.array([total_days(PAPER_FRACTIONS[f], c, t, COCO_TRAIN2017_INSTANCES) for t in ts]) for f, c in costs.items()}
    wins = ts[(totals["P10"] < totals["B"]) & (totals["P10"] < totals["M"])]
    assert abs(wins.min() - lo) < 0.02 and abs(wins.max() - hi) < 0.02
    # Masks on half the data instead of 40%: their line is parallel to points' and always above.
    assert cheapest_interval("P10", costs, {"B": 1.0, "M": 0.5, "P10": 0.5}) == (2.0, math.inf)
    assert cheapest_interval("M", costs, PAPER_FRACTIONS)[0] == cheapest_interval("P10", costs, PAPER_FRACTIONS)[1]


def test_cli_prints_table6_and_draws_figure6(tmp_path, capsys):
    plot = tmp_path / "figure6.png"
    main(["--plot", str(plot)])
    out = capsys.readouterr().out
    assert "493.8" in out and "1204.1" in out and "582.4" in out
    assert "2.0 s < t < 236.8 s" in out
    image = np.asarray(Image.open(plot).convert("RGB"))
    assert image.shape[0] > 200 and image.std() > 10


def test_cli_uses_a_measured_speed(tmp_path, capsys):
    labels = tmp_path / "labels.json"
    block = {"num_points": 2, "objects": {"1": {"labels": [1, 0], "ms": [1500.0, 2500.0], "skipped": False},
                                          "2": {"labels": [1, None], "ms": [99000.0, None], "skipped": False}}}
    labels.write_text(json.dumps({"annotate": block}))
    main(["--timing", str(labels), "--instances", "1000"])  # N = 2 comes from the job
    out = capsys.readouterr().out
    assert "2.000 s per point over 2 points" in out  # the 99 s pause is left out
    # P2 = 43.2 + 7 + 2 * 2.0 = 54.2 s per instance.
    assert "P2          54.2" in out and "15.1" in out  # 1000 x 54.2 s = 15.1 hours
