"""File-system steps shared by the stores on a local directory (LocalStore, LocalLogStore).

Invariant: after :func:`fsync_dir` returns, the directory entries made or removed in that
directory before the call (a rename, a link, an unlink, a new subdirectory) survive a power cut.

:class:`SharedDirSync` lets concurrent writers of one directory share its fsync.

Callers: the modules of :mod:`dn.store` that write files; any thread.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` durable (``fsync`` of the directory itself).
    Raises the ``OSError`` of the open or the sync."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SharedDirSync:
    """:func:`fsync_dir` shared by concurrent callers of one directory (a group commit for
    directory entries): a caller whose entry was made before another caller's directory fsync
    *began* is covered by it, and waits for it instead of running its own.

    Each caller takes a ticket after making its entry. A sync reads the newest ticket before it
    starts the fsync, and covers every ticket up to that one: their entries were made before
    the fsync began. A caller returns once a successful sync covers its ticket; while a sync is
    running it waits, then runs the next one itself if that one did not cover it. A failed sync
    covers nobody: each of its waiters runs (and may fail) its own. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # a directory's state lives while a caller holds it: no entry stays for every
        # directory ever written (a new state covers only the tickets it hands out)
        self._dirs: weakref.WeakValueDictionary[Path, _DirState] = weakref.WeakValueDictionary()

    def sync(self, path: Path, fsync: Callable[[Path], None] = fsync_dir) -> None:
        with self._lock:
            st = self._dirs.get(path)
            if st is None:
                st = self._dirs[path] = _DirState()
        with st.cv:
            st.ticket += 1
            mine = st.ticket
            while st.synced < mine and st.running:
                st.cv.wait()
            if st.synced >= mine:
                return
            st.running = True
            covers = st.ticket
        ok = False
        try:
            fsync(path)
            ok = True
        finally:
            with st.cv:
                st.running = False
                if ok:
                    st.synced = max(st.synced, covers)
                st.cv.notify_all()


class _DirState:
    __slots__ = ("cv", "ticket", "synced", "running", "__weakref__")

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.ticket = 0  # tickets handed out: one per entry made
        self.synced = 0  # every ticket up to this one is durable
        self.running = False
