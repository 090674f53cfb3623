"""The HTTP server in-process (and the CLI as a subprocess): locking, validation, routes."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from pointsup.annotate.job import JobStore, read_journal
from pointsup.annotate.server import AnnotateServer
from pointsup.annotate.views import ViewRenderer
from tests.annotate.helpers import ToolProcess, box_dataset, tool_args


def _request(port, method, path, body=None, headers=None, raw=None):
    """(status, parsed JSON or raw bytes) of one request to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    all_headers = {"Content-Type": "application/json"} if data is not None else {}
    all_headers.update(headers or {})
    conn.request(method, path, body=data, headers=all_headers)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    is_json = response.getheader("Content-Type", "").startswith("application/json")
    return response.status, json.loads(payload) if is_json else payload


@pytest.fixture
def served(tmp_path):
    """A server on a free port over the tiny box data set: yields (port, store)."""
    json_path, image_dir = box_dataset(str(tmp_path))
    with open(json_path) as f:
        coco = json.load(f)
    store = JobStore.open(coco, str(tmp_path / "labels.json"), num_points=3, seed=0)
    server = AnnotateServer(("127.0.0.1", 0), store, ViewRenderer(coco, image_dir))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], store
    server.shutdown()
    server.server_close()


def test_two_tabs_never_label_a_point_twice(served):
    port, store = served
    _, task = _request(port, "GET", "/api/next")
    point = {"ann_id": task["object"]["ann_id"], "point_index": task["point"]["index"], "ms": 600}

    # Eight tabs answer the same point at once: exactly one wins, the others get 409 and
    # the point that is really next.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda v: _request(port, "POST", "/api/label", {**point, "label": v % 2}), range(8)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] + [409] * 7
    for status, body in answers:
        assert body["next"]["point"]["index"] == 1
        if status == 409:
            assert "another tab" in body["error"]
    assert [e["op"] for e in read_journal(store.journal_path)] == ["label"]
    assert store.job.by_id[1].labels.count(None) == 2


@pytest.mark.parametrize(
    "method, path, body, headers, status",
    [
        ("POST", "/api/label", {"ann_id": 1, "point_index": 0, "label": 5, "ms": 1}, None, 400),
        ("POST", "/api/label", {"ann_id": 12345, "point_index": 0, "label": 1, "ms": 1}, None, 404),
        ("POST", "/api/label", [1, 2], None, 400),
        ("POST", "/api/label", {"ann_id": 1, "point_index": 0, "label": 1, "ms": 1}, {"Content-Type": "text/plain"}, 415),
        ("POST", "/api/erase", {}, None, 404),
        ("GET", "/static/../job.py", None, None, 404),
        ("GET", "/static/%2e%2e/job.py", None, None, 404),
        ("GET", "/view/3/context.jpg", None, None, 404),  # the crowd box: not part of the job
        ("GET", "/view/1/zoom/3.jpg", None, None, 404),  # only 3 points: 0, 1, 2
        ("GET", "/view/1/../../boxes.json", None, None, 404),
        ("GET", "/api/next", None, {"Host": "evil.example:80"}, 403),  # DNS rebinding
    ],
)
def test_bad_requests_get_a_clear_4xx(served, method, path, body, headers, status):
    port, store = served
    answer_status, answer = _request(port, method, path, body, headers)
    assert answer_status == status
    assert isinstance(answer, dict) and answer["error"]
    assert read_journal(store.journal_path) == []  # nothing was recorded


def test_malformed_and_oversized_bodies(served):
    port, _ = served
    assert _request(port, "POST", "/api/label", raw=b"{not json")[0] == 400
    assert _request(port, "POST", "/api/label", raw=b"{}", headers={"Content-Length": "99999999"})[0] == 413


def test_pages_and_views_are_served(served):
    port, _ = served
    status, page = _request(port, "GET", "/")
    assert status == 200 and b'press "f"' in page and b"/static/annotate.js" in page
    assert _request(port, "GET", "/review?ann=1")[0] == 200
    status, jpeg = _request(port, "GET", "/view/1/context.jpg")
    assert status == 200 and jpeg[:2] == b"\xff\xd8"
    status, obj = _request(port, "GET", "/api/object/2")
    assert status == 200 and obj["category"] == "block" and len(obj["points"]) == 3


def test_images_outside_the_folder_are_never_served(tmp_path):
    json_path, image_dir = box_dataset(str(tmp_path))
    with open(json_path) as f:
        coco = json.load(f)
    coco["images"][0]["file_name"] = "../boxes.json"  # a hostile JSON
    store = JobStore.open(coco, str(tmp_path / "labels.json"), num_points=2, seed=0)
    server = AnnotateServer(("127.0.0.1", 0), store, ViewRenderer(coco, image_dir))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, body = _request(server.server_address[1], "GET", "/view/1/context.jpg")
        assert status == 500 and "outside the image folder" in body["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_cli_resumes_after_sigkill_and_refuses_a_second_server(tmp_path):
    json_path, image_dir = box_dataset(str(tmp_path))
    output = str(tmp_path / "labels.json")
    args = tool_args(json_path, image_dir, output, num_points=2)
    with ToolProcess(args) as tool:
        port = int(tool.url.rsplit(":", 1)[1].strip("/"))
        for i, value in enumerate([1, 0]):
            assert _request(port, "POST", "/api/label", {"ann_id": 1, "point_index": i, "label": value, "ms": 10})[0] == 200
        second = subprocess.run([sys.executable, "-m", "pointsup.annotate", *args, "--port", "0"],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode != 0 and "already using" in second.stderr
        tool.kill()
    with ToolProcess(args) as tool:
        port = int(tool.url.rsplit(":", 1)[1].strip("/"))
        _, task = _request(port, "GET", "/api/next")
        assert (task["object"]["ann_id"], task["point"]["index"]) == (2, 0)
        assert [p["label"] for p in _request(port, "GET", "/api/object/1")[1]["points"]] == [1, 0]
        assert tool.stop() == 0


def test_cli_refuses_a_public_host_without_the_flag(tmp_path):
    json_path, image_dir = box_dataset(str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "pointsup.annotate", *tool_args(json_path, image_dir, str(tmp_path / "o.json")),
                             "--host", "0.0.0.0"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--allow-remote" in result.stderr


def test_cli_explains_a_restart_with_other_arguments(tmp_path):
    json_path, image_dir = box_dataset(str(tmp_path))
    output = str(tmp_path / "labels.json")
    with ToolProcess(tool_args(json_path, image_dir, output, num_points=2)) as tool:
        assert tool.stop() == 0
    result = subprocess.run([sys.executable, "-m", "pointsup.annotate", *tool_args(json_path, image_dir, output, num_points=3)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--num-points 2 --seed 0" in result.stderr and "Traceback" not in result.stderr


def test_a_failed_save_is_reported_not_acknowledged(served, monkeypatch):
    port, store = served

    def disk_full(event):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "record", disk_full)
    status, body = _request(port, "POST", "/api/label", {"ann_id": 1, "point_index": 0, "label": 1, "ms": 5})
    assert status == 507 and "No space left" in body["error"]
    assert store.job.by_id[1].labels[0] is None
