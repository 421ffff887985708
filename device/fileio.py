"""Helper: the one atomic file write (state files, manifests, run records, reports).

Contract: :func:`write_atomic` leaves either the old content or the whole new content at
``path``, never a mix, even across a power cut: the bytes go to ``<name>.tmp`` in the same
folder (so the rename stays on one file system), are fsynced, and replace ``path`` with
``os.replace``; the folder is fsynced too, so the rename itself is durable. On failure the
temporary file is removed and the ``OSError`` is raised. Thread-safe for different paths; writers
of one path in one process must be serialised by their owner.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(
    path: str | Path, data: str | bytes, *, encoding: str = "utf-8", concurrent: bool = False
) -> None:
    """Replace ``path`` with ``data`` (text is encoded with ``encoding``) atomically.

    concurrent: several processes may write ``path`` at once (the same content), so each
    writes its own temporary file (``.<name>.<pid>.tmp``); otherwise the temporary file is
    ``<name>.tmp``, and one left by a kill mid-write is simply overwritten next time.
    """
    path = Path(path)
    content = data.encode(encoding) if isinstance(data, str) else data
    name = f".{path.name}.{os.getpid()}.tmp" if concurrent else f"{path.name}.tmp"
    tmp = path.with_name(name)
    try:
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        except OSError:
            pass
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; best effort (some file systems refuse it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
