"""LocalStore: the object store on a local (or mounted) directory, the default backend.

Key ``a/b/c`` is the file ``<root>/a/b/c``; subdirectories are created as needed.

Invariants:

- ``put`` writes a fresh temp file (``.tmp-*``) in the key's directory, fsyncs it, renames it
  over the final name with ``os.replace`` and fsyncs the directory, so a reader sees the old
  bytes or the new bytes, never a mix, and an acknowledged put survives a power cut. Puts into
  one directory at once share its fsync (:class:`dn.store.files.SharedDirSync`): one that
  began after a put's rename covers it.
- ``put_if_absent`` writes and fsyncs a temp file, then ``os.link``\\s it to the final name. The
  link fails atomically if the name exists (``ObjectExists``), so concurrent creators from any
  thread or process on this host have exactly one winner.
- Directories created for a key are fsynced into their parents before the key is written.
- ``list`` never returns temp files, and walks only the directories the prefix can be in.

Key rules (shared by every store, see :func:`check_key`): ``/``-separated, non-empty segments,
no leading ``/``, no ``.`` or ``..`` segments, no backslashes or NUL bytes, no segment starting
with ``.tmp-``. A key that works on one store works on all.

Errors: a missing file is ``ObjectNotFound``; a key that would need a file where a directory is
(or the reverse) is ``InvalidArgument``; every other ``OSError`` is ``Unavailable`` naming the
path (a full or failing disk may recover). A put that fails after its rename or link is
``Unavailable(outcome_unknown=True)``.

Not done: cleanup of temp files left by a crash (they are ignored), removal of empty
directories after ``delete``, locking across hosts (a network file system must provide atomic
``link`` and ``rename`` itself).

Callers: any thread; instances are picklable (only the root path is kept).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import secrets
from pathlib import Path

from dn.errors import InvalidArgument, ObjectExists, ObjectNotFound, Unavailable
from dn.store.files import SharedDirSync
from dn.store.files import fsync_dir as _fsync_dir  # called by this name: a fault test replaces it

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
#: Concurrent puts into one directory share its fsync (the committer's decisions, a shard's
#: range objects): one fsync of the directory covers every entry made before it began.
_DIR_SYNCS = SharedDirSync()


def _sync_entry(directory: Path) -> None:
    """Make an entry just made in ``directory`` durable (a shared directory fsync)."""
    _DIR_SYNCS.sync(directory, lambda p: _fsync_dir(p))


_temp_counter = itertools.count()


def check_key(key: str, *, is_prefix: bool = False) -> str:
    """Return ``key`` if it follows the key rules of every store, else raise InvalidArgument.

    With ``is_prefix`` the value may be empty, end with ``/`` or end inside a segment.

    >>> check_key("20/3/00000000000000000001_00000000000000000002")
    '20/3/00000000000000000001_00000000000000000002'
    >>> check_key("20/3/", is_prefix=True)
    '20/3/'
    """
    if not isinstance(key, str):
        raise InvalidArgument(f"object key must be a str, got {type(key).__name__}")
    if is_prefix and key == "":
        return key
    what = "prefix" if is_prefix else "key"
    if key == "":
        raise InvalidArgument("object key must not be empty")
    if key.startswith("/"):
        raise InvalidArgument(f"object {what} {key!r} must not start with '/'")
    if "\\" in key or "\x00" in key:
        raise InvalidArgument(f"object {what} {key!r} must not contain a backslash or NUL byte")
    segments = key.split("/")
    partial_tail = is_prefix and segments[-1] != ""  # "a/b" may match "a/bc"; "a/b/" may not
    if is_prefix and not partial_tail:
        segments.pop()  # "a/b/" names a directory
    for i, segment in enumerate(segments):
        last_partial = partial_tail and i == len(segments) - 1
        if segment == "":
            raise InvalidArgument(f"object {what} {key!r} has an empty path segment")
        if segment in (".", "..") and not last_partial:
            raise InvalidArgument(f"object {what} {key!r} must not contain '.' or '..' segments")
        if segment.startswith(TEMP_PREFIX):
            raise InvalidArgument(
                f"object {what} {key!r}: segments starting with {TEMP_PREFIX!r} are reserved"
            )
    return key


def _temp_name(final: Path) -> Path:
    token = f"{os.getpid()}-{next(_temp_counter)}-{secrets.token_hex(4)}"
    return final.with_name(f"{TEMP_PREFIX}{token}-{final.name}")


class LocalStore:
    """Objects as files under ``root``. See the module docstring for the guarantees."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        try:
            self.url = self.root.as_uri()
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError as e:
            raise InvalidArgument(f"store root {self.root} exists and is not a directory") from e
        except OSError as e:
            raise Unavailable(f"cannot create store root {self.root}: {e}") from e
        except ValueError as e:  # a NUL byte or a lone surrogate: no file system takes it
            raise InvalidArgument(f"store root {str(self.root)!r} is not a valid path: {e}") from e

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def __getstate__(self) -> dict[str, object]:
        return {"root": str(self.root)}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["root"])  # type: ignore[misc]

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _make_parents(self, path: Path) -> None:
        """Create the missing directories between root and ``path`` and fsync each parent."""
        missing: list[Path] = []
        parent = path.parent
        while parent != self.root and not parent.is_dir():
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:
                if not directory.is_dir():
                    raise InvalidArgument(
                        f"cannot store under {directory}: an object of that name exists"
                    ) from None
                continue  # a concurrent writer made it; it fsyncs its own parent
            _fsync_dir(directory.parent)

    def _write_temp(self, path: Path, data: bytes) -> Path:
        """Write ``data`` to a fresh fsynced temp file next to ``path`` and return its name."""
        self._make_parents(path)
        tmp = _temp_name(path)
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"object {key!r} not found in {self.url}", key=key) from None
        except OSError as e:
            raise Unavailable(f"cannot read {path}: {e}") from e

    reads_ranges = True

    def get_range(self, key: str, start: int, length: int) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(start)
                return f.read(max(0, min(length, size - start)))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"object {key!r} not found in {self.url}", key=key) from None
        except OSError as e:
            raise Unavailable(f"cannot read {path}: {e}") from e

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        landed = False
        try:
            tmp = self._write_temp(path, bytes(data))
            try:
                os.replace(tmp, path)
            except BaseException:
                _unlink_quietly(tmp)
                raise
            landed = True
            _sync_entry(path.parent)
        except (IsADirectoryError, NotADirectoryError) as e:
            raise InvalidArgument(f"cannot put {key!r}: a directory is in the way ({e})") from e
        except OSError as e:
            raise Unavailable(f"cannot write {path}: {e}", outcome_unknown=landed) from e

    def put_if_absent(self, key: str, data: bytes) -> None:
        path = self._path(key)
        landed = False
        try:
            tmp = self._write_temp(path, bytes(data))
            try:
                os.link(tmp, path)
            except FileExistsError:
                if path.is_dir():
                    raise InvalidArgument(
                        f"cannot put {key!r}: a directory of that name exists"
                    ) from None
                raise ObjectExists(
                    f"object {key!r} already exists in {self.url}", key=key
                ) from None
            finally:
                _unlink_quietly(tmp)
            landed = True
            _sync_entry(path.parent)
        except (IsADirectoryError, NotADirectoryError) as e:
            raise InvalidArgument(f"cannot put {key!r}: a directory is in the way ({e})") from e
        except OSError as e:
            raise Unavailable(f"cannot write {path}: {e}", outcome_unknown=landed) from e

    def list(self, prefix: str) -> list[str]:
        check_key(prefix, is_prefix=True)
        dir_part, _, name_part = prefix.rpartition("/")
        start = self.root.joinpath(*dir_part.split("/")) if dir_part else self.root
        base = dir_part + "/" if dir_part else ""
        keys: list[str] = []
        try:
            self._walk(start, base, name_part, keys)
        except OSError as e:
            raise Unavailable(f"cannot list {start}: {e}") from e
        keys.sort()
        return keys

    def _walk(self, directory: Path, base: str, name_prefix: str, out: list[str]) -> None:
        """Append every key under ``directory`` (whose key prefix is ``base``) to ``out``."""
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing under this prefix (or a concurrent change); not an error
        for entry in entries:
            name = entry.name
            if name.startswith(TEMP_PREFIX) or not name.startswith(name_prefix):
                continue
            if entry.is_dir(follow_symlinks=False):
                self._walk(Path(entry.path), f"{base}{name}/", "", out)
            else:
                out.append(base + name)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as e:
            if e.errno == errno.EISDIR or (e.errno == errno.EPERM and path.is_dir()):
                return  # a directory is not an object: nothing to delete
            raise Unavailable(f"cannot delete {path}: {e}") from e
        try:
            _fsync_dir(path.parent)
        except OSError as e:
            raise Unavailable(f"cannot sync {path.parent} after delete: {e}") from e

    def close(self) -> None:
        """Nothing to release; the store stays usable."""


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:  # a leftover temp file is harmless: list() ignores it
        log.warning("could not remove temp file %s: %s", path, e)
