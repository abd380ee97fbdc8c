"""Housekeeping of the disk feature cache: where it lives, what it holds, what goes first.

An entry is a directory of files (``tfft.feature_cache`` writes and reads them); this module
needs neither TensorFlow nor NumPy, so ``python -m tfft.cache`` can list and clear entries.

Each entry records its last use as the modification time of its ``last_used`` file, set by one
``utime`` (atomic) whenever the entry is written or read. Beyond the size limit the least
recently used entries go first. A process using an entry holds a shared ``flock`` on its
``meta.json`` for as long as it may read the features (training reopens the file every epoch);
removal takes the exclusive lock without waiting and leaves an entry in use alone, so neither
another run nor ``tfft.cache clear`` pulls an entry from under a running head phase. A removed
entry is first renamed to a hidden name, so readers see whole entries or none.

A cache on another filesystem (``--cache_dir=gs://...``, through ``tfft.fs``) has no locks: an
entry is held by nothing there, so removing it (the size limit, ``clear``) may pull it from under
a run using it; keep ``--cache_max_gb=0`` on a cache that runs share, and clear it between runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tfft import fs

FEATURES_FILE = "features.bin"
LABELS_FILE = "labels.bin"
META_FILE = "meta.json"
LAST_USED_FILE = "last_used"
TMP_PREFIX = ".tmp-"
DELETED_PREFIX = ".del-"
# A temporary entry nobody has written to for this long was left by a killed run.
STALE_SECONDS = 3600.0
BYTES_PER_GB = 1e9


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/tfft/features``, else ``~/.cache/tfft/features``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfft", "features")


def cache_root(cache_dir: str) -> str:
    """The absolute cache directory of ``--cache_dir`` (empty = the default)."""
    return fs.abspath(os.path.expanduser(cache_dir or default_cache_dir()))


@dataclass(frozen=True)
class Entry:
    """A complete entry: its directory, bytes on disk, last use (epoch seconds) and meta.json."""

    path: str
    size: int
    last_used: float
    meta: dict[str, Any]

    @property
    def fields(self) -> dict[str, Any]:
        """The key fields that say what the features are (split, dataset, backbone, ...)."""
        fields = self.meta.get("fields")
        return fields if isinstance(fields, dict) else {}


@dataclass(frozen=True)
class Leftover:
    """A temporary directory: an entry being written, or one a killed process left behind."""

    path: str
    size: int
    modified: float


@dataclass(frozen=True)
class Cleared:
    """What ``clear`` did: entries and leftovers removed, bytes freed, entries kept in use."""

    entries: int
    leftovers: int
    freed: int
    kept: int


def temporary_entry(parent: str, name: str) -> str:
    """Creates a new, uniquely named directory in ``parent`` for the entry ``name`` to be."""
    prefix = f"{TMP_PREFIX}{name}-"
    if fs.is_local(parent):
        os.makedirs(parent, exist_ok=True)
        return tempfile.mkdtemp(dir=parent, prefix=prefix)
    path = os.path.join(parent, prefix + secrets.token_hex(4))
    fs.makedirs(path)
    return path


def touch(entry: str) -> None:
    """Marks ``entry`` as used now; a read-only (shared) cache stays usable without the mark."""
    with contextlib.suppress(OSError):
        if fs.is_local(entry):
            Path(entry, LAST_USED_FILE).touch()
        else:  # a new object is the only way to set a time there
            with fs.open(os.path.join(entry, LAST_USED_FILE), "wb"):
                pass


def hold(entry: str) -> IO[bytes] | None:
    """``entry``'s meta.json, open and share-locked until closed, or None when it is absent.

    Blocks only while another process removes the entry (the caller then finds it gone). An
    entry on another filesystem is opened without a lock (there are none).
    """
    try:
        meta = fs.open(os.path.join(entry, META_FILE), "rb")  # noqa: SIM115 (caller closes it)
    except OSError:
        return None
    if not fs.is_local(entry):
        return meta
    with contextlib.suppress(OSError):  # a filesystem without locks: used all the same
        fcntl.flock(meta, fcntl.LOCK_SH)
    return meta


def remove(entry: str) -> bool:
    """Deletes ``entry`` unless a process holds it (or it is gone or not ours to delete)."""
    if not fs.is_local(entry):
        return _remove_unlocked(entry)
    meta_path = os.path.join(entry, META_FILE)
    try:
        lock = open(meta_path, "rb")  # noqa: SIM115 (closed below, before the deletion)
    except OSError:
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:  # no locks on this filesystem: nothing can say it is in use
            pass
        doomed = _doomed_name(entry)
        try:
            if not os.path.samestat(os.fstat(lock.fileno()), os.stat(meta_path)):
                return False  # replaced by a new entry since we opened it
            os.rename(entry, doomed)
        except OSError:
            return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def _remove_unlocked(entry: str) -> bool:
    """Deletes an entry on a filesystem without locks: hidden first, then removed."""
    if not fs.exists(os.path.join(entry, META_FILE)):
        return False
    doomed = _doomed_name(entry)
    try:
        fs.rename(entry, doomed)
    except OSError:
        return False
    fs.rmtree(doomed)
    return True


def _doomed_name(entry: str) -> str:
    return os.path.join(os.path.dirname(entry),
                        f"{DELETED_PREFIX}{os.path.basename(entry)}-{secrets.token_hex(4)}")


def scan(root: str) -> list[Entry]:
    """The complete entries under ``root``, least recently used first."""
    found = []
    for name in _names(root):
        path = os.path.join(root, name)
        if name.startswith(".") or not fs.isdir(path):
            continue
        try:
            meta = json.loads(fs.read_text(os.path.join(path, META_FILE)))
            found.append(Entry(path, dir_bytes(path), last_used(path), meta))
        except (OSError, ValueError):  # not an entry, or removed meanwhile
            continue
    return sorted(found, key=lambda e: (e.last_used, e.path))


def unfinished(root: str) -> list[Leftover]:
    """Temporary directories under ``root``: entries being written or being deleted, or left
    behind by a process killed meanwhile."""
    found = []
    for name in _names(root):
        path = os.path.join(root, name)
        if not name.startswith((TMP_PREFIX, DELETED_PREFIX)) or not fs.isdir(path):
            continue
        with contextlib.suppress(OSError):
            times = [fs.mtime(path)] + [fs.mtime(os.path.join(path, n)) for n in fs.listdir(path)]
            found.append(Leftover(path, dir_bytes(path), max(times)))
    return found


def last_used(entry: str) -> float:
    """When ``entry`` was last written or read (its meta.json's time for an entry from before
    last-use stamps)."""
    try:
        return fs.mtime(os.path.join(entry, LAST_USED_FILE))
    except FileNotFoundError:
        return fs.mtime(os.path.join(entry, META_FILE))


def dir_bytes(path: str) -> int:
    """Bytes of the files in one (flat) entry directory."""
    if not fs.is_local(path):
        files = [os.path.join(path, n) for n in fs.listdir(path)]
        return sum(fs.size(f) for f in files if not fs.isdir(f))
    with os.scandir(path) as it:
        return sum(e.stat().st_size for e in it if e.is_file(follow_symlinks=False))


def evict(root: str, max_gb: float, keep: str) -> list[Entry]:
    """Removes least recently used entries until those under ``root`` total ``max_gb`` at
    most (0 = no limit); never ``keep`` (the entry just written) nor an entry in use."""
    if max_gb <= 0:
        return []
    entries = scan(root)
    total, limit = sum(e.size for e in entries), max_gb * BYTES_PER_GB
    removed = []
    for entry in entries:
        if total <= limit:
            break
        if fs.abspath(entry.path) != fs.abspath(keep) and remove(entry.path):
            removed.append(entry)
            total -= entry.size
    return removed


def clear(root: str, older_than: float, now: float | None = None) -> Cleared:
    """Removes the entries last used ``older_than`` seconds ago or earlier (0 = all), and the
    leftovers no process is writing any more."""
    now = time.time() if now is None else now
    doomed = [e for e in scan(root) if older_than <= 0 or e.last_used <= now - older_than]
    removed = [e for e in doomed if remove(e.path)]
    stale = max(older_than, STALE_SECONDS)
    leftovers = [t for t in unfinished(root) if os.path.basename(t.path).startswith(
        DELETED_PREFIX) or t.modified <= now - stale]
    for leftover in leftovers:
        fs.rmtree(leftover.path)
    return Cleared(len(removed), len(leftovers),
                   sum(e.size for e in removed) + sum(t.size for t in leftovers),
                   len(doomed) - len(removed))


def _names(root: str) -> list[str]:
    try:
        return fs.listdir(root)
    except FileNotFoundError:
        return []
