"""Atomic file writes: write to a temporary file in the same folder, then `os.replace`.

A reader (another process, a crashed run being resumed, a DataLoader worker) therefore
sees either the old file or the complete new one, never a half-written file.
`os.replace` is atomic when source and destination are on the same file system, which is
why the temporary file is created next to the destination.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable


def atomic_save(path: str | os.PathLike, write_fn: Callable[[str], Any]) -> None:
    """Call `write_fn(tmp_path)` to write the content, then atomically move it to `path`.

    `write_fn` receives the path of a temporary file (in the same folder as `path`, with the
    same extension so that e.g. `torch.save` / `PIL.Image.save` pick the right format) and
    must write the complete file there. On any exception the temporary file is removed and
    `path` is left untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp_path = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    # mkstemp creates the file with mode 0600; give the result the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        write_fn(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write raw bytes to `path`."""

    def write(tmp_path: str) -> None:
        with open(tmp_path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_save(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Atomically write `obj` as JSON (compact unless `indent` is given)."""
    separators = None if indent is not None else (",", ":")
    atomic_write_text(path, json.dumps(obj, indent=indent, separators=separators))


def atomic_save_png(path: str | os.PathLike, image: Any, compress_level: int = 6) -> None:
    """Atomically write a PNG from a PIL image or an (H, W, 3) / (H, W) uint8 numpy array.

    compress_level: zlib level 0-9 (1 is much faster and only slightly larger).
    """
    from PIL import Image
    import numpy as np

    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    atomic_save(path, lambda tmp_path: pil.save(tmp_path, format="PNG", compress_level=compress_level))
