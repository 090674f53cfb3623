"""The HTTP side of the annotation tool: the standard library's ThreadingHTTPServer.

A single-user local tool needs no framework: a handful of fixed routes, JSON in and out,
and small JPEGs. What "done right" means here:
    * one lock around the job, so two tabs (or a double key press) can never interleave
      a check and a write: the loser gets 409 and the next unlabelled point;
    * fixed routes only: static files come from a fixed table, images only by object id
      (the file is found through the JSON, see `views.safe_image_path`), never a request path;
    * POSTs must be `application/json` (a cross-site form cannot send that without a CORS
      preflight, which this server never grants) and small;
    * on a loopback address the Host header must be a loopback name (DNS rebinding);
    * every acknowledged change is journalled first (`job.JobStore.record`).

Routes:
    GET  /  /review  /static/<file>                 page, review page, their assets
    GET  /api/next                                   the point to ask now (or done)
    GET  /api/objects   /api/object/<id>             review: all objects / one with its points
    GET  /view/<id>/context.jpg  /view/<id>/zoom/<i>.jpg
    POST /api/label {ann_id, point_index, label, ms}  /api/undo {}  /api/skip {ann_id}
    POST /api/flip {ann_id, point_index}
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from pointsup.annotate.job import AnnotatedObject, JobError, JobStore
from pointsup.annotate.views import ViewRenderer

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# Fixed table: URL path -> (file in STATIC_DIR, content type). Nothing else is served from disk.
STATIC_ROUTES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/review": ("review.html", "text/html; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/static/common.js": ("common.js", "text/javascript; charset=utf-8"),
    "/static/annotate.js": ("annotate.js", "text/javascript; charset=utf-8"),
    "/static/review.js": ("review.js", "text/javascript; charset=utf-8"),
}
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
MAX_BODY_BYTES = 16 * 1024

CONTEXT_ROUTE = re.compile(r"/view/(\d{1,18})/context\.jpg")
ZOOM_ROUTE = re.compile(r"/view/(\d{1,18})/zoom/(\d{1,6})\.jpg")
OBJECT_ROUTE = re.compile(r"/api/object/(\d{1,18})")


class AnnotateServer(ThreadingHTTPServer):
    """Holds the job store, the view renderer and the lock that serialises job access."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: JobStore, renderer: ViewRenderer,
                 check_host: bool = True, quiet: bool = True) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET  # e.g. --host ::1
        super().__init__(address, AnnotateHandler)
        self.store = store
        self.renderer = renderer
        self.lock = threading.Lock()
        self.check_host = check_host
        self.quiet = quiet

    # Everything below is called with self.lock held.
    def task(self) -> dict[str, Any]:
        """The point to ask now: its object, both views, and the progress line's numbers."""
        job = self.store.job
        progress = job.progress()
        found = job.next_open()
        if found is None:
            return {"done": True, "progress": progress, "output": self.store.output_path}
        obj, i = found
        point_xy = tuple(obj.coords_img[i])
        return {
            "done": False,
            "object": self.describe(obj),
            "point": {
                "index": i,
                "xy": list(point_xy),
                "zoom": self.renderer.zoom_geometry(point_xy, obj.box_xyxy),
                "zoom_url": f"/view/{obj.ann_id}/zoom/{i}.jpg",
            },
            "progress": progress,
        }

    def describe(self, obj: AnnotatedObject) -> dict[str, Any]:
        """An object's box, category, context view and labelled points (for both pages)."""
        job = self.store.job
        k = job.index_of[obj.ann_id]
        return {
            "ann_id": obj.ann_id,
            "index": k,
            "num_objects": len(job.objects),
            "prev_id": job.objects[k - 1].ann_id if k > 0 else None,
            "next_id": job.objects[k + 1].ann_id if k + 1 < len(job.objects) else None,
            "category": obj.category,
            "status": obj.status,
            "box_xyxy": list(obj.box_xyxy),
            "num_points": len(obj.labels),
            "points": [{"index": i, "xy": xy, "label": v} for i, (xy, v) in enumerate(zip(obj.coords_img, obj.labels))],
            "context": self.renderer.context_geometry(obj.image_id, obj.box_xyxy),
            "context_url": f"/view/{obj.ann_id}/context.jpg",
        }


class AnnotateHandler(BaseHTTPRequestHandler):
    server: AnnotateServer
    server_version = "pointsup-annotate"
    protocol_version = "HTTP/1.1"

    # ----------------------------------------------------------------- plumbing
    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def send_body(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, obj: Any) -> None:
        self.send_body(status, json.dumps(obj).encode("utf-8"), "application/json")

    def send_error_json(self, status: int, message: str, **extra: Any) -> None:
        self.send_json(status, {"error": message, **extra})

    def host_allowed(self) -> bool:
        """On a loopback bind, only loopback Host headers (blocks DNS-rebinding pages)."""
        if not self.server.check_host:
            return True
        host = urlsplit("//" + (self.headers.get("Host") or "")).hostname
        return host in LOOPBACK_NAMES

    # ------------------------------------------------------------------- routes
    def do_GET(self) -> None:
        if not self.host_allowed():
            return self.send_error_json(HTTPStatus.FORBIDDEN, "Host header is not a loopback name")
        path = urlsplit(self.path).path
        try:
            if path in STATIC_ROUTES:
                file_name, content_type = STATIC_ROUTES[path]
                with open(os.path.join(STATIC_DIR, file_name), "rb") as f:
                    return self.send_body(HTTPStatus.OK, f.read(), content_type)
            if path == "/api/next":
                with self.server.lock:
                    return self.send_json(HTTPStatus.OK, self.server.task())
            if path == "/api/objects":
                with self.server.lock:
                    objects = [{"ann_id": o.ann_id, "status": o.status, "num_labelled": o.num_labelled}
                               for o in self.server.store.job.objects]
                return self.send_json(HTTPStatus.OK, {"objects": objects})
            if m := OBJECT_ROUTE.fullmatch(path):
                with self.server.lock:
                    obj = self.server.store.job.get(int(m.group(1)))
                    return self.send_json(HTTPStatus.OK, self.server.describe(obj))
            if m := CONTEXT_ROUTE.fullmatch(path):
                with self.server.lock:
                    obj = self.server.store.job.get(int(m.group(1)))
                jpeg = self.server.renderer.context(obj.image_id, obj.box_xyxy)
                return self.send_body(HTTPStatus.OK, jpeg, "image/jpeg", cache=True)
            if m := ZOOM_ROUTE.fullmatch(path):
                with self.server.lock:
                    obj = self.server.store.job.get(int(m.group(1)))
                i = int(m.group(2))
                if i >= len(obj.coords_img):
                    raise JobError(HTTPStatus.NOT_FOUND, f"object {obj.ann_id} has no point {i}")
                jpeg = self.server.renderer.zoom(obj.image_id, tuple(obj.coords_img[i]), obj.box_xyxy)
                return self.send_body(HTTPStatus.OK, jpeg, "image/jpeg", cache=True)
            self.send_error_json(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        except JobError as e:
            self.send_error_json(e.status, str(e))
        except (OSError, ValueError) as e:  # a missing / unreadable image of the job
            self.send_error_json(HTTPStatus.INTERNAL_SERVER_ERROR, str(e))

    def do_POST(self) -> None:
        if not self.host_allowed():
            return self.send_error_json(HTTPStatus.FORBIDDEN, "Host header is not a loopback name")
        op = {"/api/label": "label", "/api/undo": "undo", "/api/skip": "skip", "/api/flip": "flip"}.get(
            urlsplit(self.path).path)
        if op is None:
            return self.send_error_json(HTTPStatus.NOT_FOUND, f"no such action: {self.path}")
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            return self.send_error_json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "POST bodies must be application/json")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            return self.send_error_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body must be 0..{MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self.send_error_json(HTTPStatus.BAD_REQUEST, "body is not valid JSON")
        if not isinstance(body, dict):
            return self.send_error_json(HTTPStatus.BAD_REQUEST, "body must be a JSON object")

        server = self.server
        with server.lock:  # check and write as one step: two tabs cannot both label a point
            try:
                event = server.store.job.make_event(op, body)
            except JobError as e:
                return self.send_error_json(e.status, str(e), next=server.task())
            try:
                server.store.record(event)  # journalled and fsynced before we answer
            except OSError as e:  # e.g. disk full: say so rather than drop the connection
                return self.send_error_json(HTTPStatus.INSUFFICIENT_STORAGE, f"could not save the label: {e}")
            if op == "flip":
                return self.send_json(HTTPStatus.OK, server.describe(server.store.job.by_id[event["ann"]]))
            return self.send_json(HTTPStatus.OK, {"next": server.task()})
