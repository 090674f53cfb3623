"""Command line of the annotation tool: `python -m pointsup.annotate` (see `pointsup.annotate`).

    python -m pointsup.annotate --input boxes.json --images DIR --output labels.json \\
        [--num-points 10] [--seed 0] [--port 8000] [--host 127.0.0.1 [--allow-remote]]

The first line printed is the URL to open. Stop with Ctrl-C (or kill it: nothing
acknowledged is lost); run the same command again to continue where you stopped.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
from typing import IO

from pointsup.annotate.job import JobStore
from pointsup.annotate.server import AnnotateServer
from pointsup.annotate.views import ViewRenderer
from pointsup.data.coco import load_coco_json


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def lock_output(output_path: str) -> IO[str]:
    """Hold an exclusive lock on OUTPUT.lock for the life of the process (one server per job).

    The OS drops the lock when the process dies, SIGKILL included. Returns the open file.
    """
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    lock_file = open(output_path + ".lock", "a+")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one server per job is up to the user
        return lock_file
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"error: another pointsup.annotate server is already using {output_path}; "
                 "open its URL instead (two tabs on one server are fine)")
    return lock_file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pointsup.annotate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Label points sampled in COCO boxes as object / background in a browser (paper appendix A).")
    parser.add_argument("--input", required=True, default=argparse.SUPPRESS, help="COCO JSON with images, boxes and categories (no masks needed)")
    parser.add_argument("--images", required=True, default=argparse.SUPPRESS, help="folder the images' file_name entries are relative to")
    parser.add_argument("--output", required=True, default=argparse.SUPPRESS, help="labels JSON (read by pointsup.train); resumed if it exists")
    parser.add_argument("--num-points", type=int, default=10, help="points per object (P_N)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the point sampler")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless --allow-remote)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host: anyone who can reach it can see the images and change labels")
    parser.add_argument("--snapshot-every", type=int, default=25,
                        help="rewrite the output JSON every this many labels (each label is journalled at once); "
                             "raise it for very large files, whose rewrite pauses the page")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    loopback = is_loopback(args.host)
    if not loopback and not args.allow_remote:
        parser.error(f"--host {args.host} is not a loopback address; add --allow-remote to expose the tool")
    if not os.path.isdir(args.images):
        parser.error(f"--images {args.images} is not a folder")
    held_lock = lock_output(args.output)  # held until exit: one server per job
    try:
        coco = load_coco_json(args.input)
        store = JobStore.open(coco, args.output, args.num_points, args.seed, source=args.input,
                              snapshot_every=args.snapshot_every)
    except (ValueError, FileNotFoundError) as e:  # bad input, or an output from other arguments
        sys.exit(f"error: {e}")
    server = AnnotateServer((args.host, args.port), store, ViewRenderer(coco, args.images),
                            check_host=loopback, quiet=not args.verbose)
    # SIGTERM stops like Ctrl-C: serve_forever returns and the final snapshot is written.
    # Installed before the URL is printed, so a caller that reads it can already stop us.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    host, port = server.server_address[:2]
    url_host = f"[{host}]" if ":" in host else host
    print(f"http://{url_host}:{port}/", flush=True)  # first line: the URL (tests read it)
    if not loopback:
        print(f"warning: serving on {args.host}, reachable from other machines, without authentication",
              file=sys.stderr, flush=True)
    progress = store.job.progress()
    print(f"{progress['labelled_points']}/{progress['total_points']} points labelled in "
          f"{progress['num_objects']} objects; writing {args.output}; review at http://{url_host}:{port}/review; "
          "Ctrl-C to stop", flush=True)

    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        with server.lock:
            store.close()
        held_lock.close()
        print(f"saved {args.output}", flush=True)


if __name__ == "__main__":
    main()
