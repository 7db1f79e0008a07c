"""File-system steps shared by the stores on a local directory (LocalStore, LocalLogStore).

Invariant: after :func:`fsync_dir` returns, the directory entries made or removed in that
directory before the call (a rename, a link, an unlink, a new subdirectory) survive a power cut.

Callers: the modules of :mod:`dn.store` that write files; any thread.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` durable (``fsync`` of the directory itself).
    Raises the ``OSError`` of the open or the sync."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
