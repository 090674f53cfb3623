"""The README's "Label your own data with points" commands, run as written (the server on
a free port), in a folder holding boxes.json and images/ like the README's."""

from __future__ import annotations

import json
import os
import re
import shlex
import urllib.request

from pointsup.annotate import summary
from tests.annotate.helpers import ToolProcess, box_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _readme_block(first_command: str) -> list[list[str]]:
    """Token lists of the commands in the README's ```bash block containing `first_command`."""
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S)
    (block,) = [b for b in blocks if first_command in b]
    lines = block.replace("\\\n", " ").splitlines()
    return [tokens for tokens in (shlex.split(line, comments=True) for line in lines) if tokens]


def test_readme_label_summary_train_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    box_dataset(str(tmp_path))  # boxes.json + images/
    annotate, show_summary, train = _readme_block("python -m pointsup.annotate ")
    assert annotate[:3] == ["python", "-m", "pointsup.annotate"]

    with ToolProcess(annotate[3:]) as tool:  # ToolProcess adds --port 0
        while True:
            with urllib.request.urlopen(tool.url + "api/next") as response:
                task = json.load(response)
            if task["done"]:
                break
            body = {"ann_id": task["object"]["ann_id"], "point_index": task["point"]["index"], "label": 1, "ms": 800}
            request = urllib.request.Request(tool.url + "api/label", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request).close()
        assert tool.stop() == 0

    assert show_summary[:3] == ["python", "-m", "pointsup.annotate.summary"]
    summary.main(show_summary[3:])
    assert "40/40 points labelled" in capsys.readouterr().out  # 4 objects x --num-points 10

    # The train command reads that file (running it needs the R50 config's compute).
    assert train[:3] == ["python", "-m", "pointsup.train"]
    assert "data.train_json=labels.json" in train
    assert os.path.isfile(os.path.join(REPO, train[train.index("--config") + 1]))
    with open("labels.json") as f:
        assert all(a["point_status"] in ("complete", "not_queued") for a in json.load(f)["annotations"])
