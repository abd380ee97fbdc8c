"""Versioned, atomic publication of export directories: ``EXPORT_DIR/<version>/``.

TF Serving polls ``EXPORT_DIR`` and loads the highest integer version. A version is written into a
temporary directory beside the versions (``staging_dir``), flushed to disk, and appears by one
``rename`` (``publish``), so a reader never sees a half-written version and an existing version
is never replaced. Temporary directories of exports that were killed are removed by the next one.

An export directory on another filesystem (``gs://...``, through ``tfft.fs``) is staged in a local
temporary directory, copied beside the versions under a hidden name, and renamed; on GCS that
rename copies object by object, so a poller may see a version appear file by file.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import uuid

from tfft import fs
from tfft.errors import UserError

TMP_PREFIX = ".tmp-export-"


def versions(export_dir: str) -> list[int]:
    """Integer version directories of an export base directory, ascending."""
    if not fs.isdir(export_dir):
        return []
    return sorted(int(n) for n in fs.listdir(export_dir)
                  if re.fullmatch(r"\d+", n) and fs.isdir(os.path.join(export_dir, n)))


def resolve_version_dir(path: str, flag: str = "--model") -> str:
    """A SavedModel dir as given, or the newest version of an export base directory."""
    if fs.isfile(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if found:
        return os.path.join(path, str(found[-1]))
    raise UserError(f"{flag}: expected a SavedModel directory (EXPORT_DIR/<version>) or an "
                    f"export directory holding versions; {path!r} is neither.")


def staging_dir(export_dir: str) -> str:
    """Creates ``export_dir`` if need be and names a new temporary directory in it.

    The directory itself is left to the SavedModel writer. Its name carries host and process id,
    so a later export can tell a killed exporter's leftovers from a running one's. For an
    ``export_dir`` on another filesystem it is a local temporary directory (the converters and
    the SavedModel writer then write local files only).
    """
    fs.makedirs(export_dir)
    remove_stale_temp_dirs(export_dir)
    if not fs.is_local(export_dir):
        return tempfile.mkdtemp(prefix=TMP_PREFIX)
    return _temp_name(export_dir)


def _temp_name(export_dir: str) -> str:
    owner = f"{socket.gethostname()}-{os.getpid()}"
    return os.path.join(export_dir, f"{TMP_PREFIX}{owner}-{uuid.uuid4().hex[:8]}")


def publish(tmp: str, export_dir: str) -> str:
    """Renames a finished temp dir to the next free version; never replaces an existing one."""
    if not fs.is_local(export_dir):
        return _publish_remote(tmp, export_dir)
    _fsync_tree(tmp)
    version = (versions(export_dir) or [0])[-1] + 1
    while True:
        target = os.path.join(export_dir, str(version))
        if not os.path.lexists(target):
            try:
                os.rename(tmp, target)
            except OSError:
                if not os.path.lexists(target):
                    raise
            else:
                _fsync_dir(export_dir)
                return target
        version += 1


def _publish_remote(local_tmp: str, export_dir: str) -> str:
    """Copies a locally staged version beside the versions under a hidden name, then renames it
    to the next free version (the rename refuses an existing target)."""
    tmp = _temp_name(export_dir)
    try:
        fs.upload_tree(local_tmp, tmp)
        version = (versions(export_dir) or [0])[-1] + 1
        while True:
            target = os.path.join(export_dir, str(version))
            try:
                fs.rename(tmp, target)
                return target
            except FileExistsError:
                version += 1
    finally:
        fs.rmtree(tmp)


def discard(tmp: str) -> None:
    """Removes a temp dir that was not published (the export failed); no-op once published."""
    if os.path.isdir(tmp):
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temp_dirs(export_dir: str) -> None:
    """Deletes temp dirs left by killed exports of this host (their process is gone)."""
    host = socket.gethostname()
    pattern = re.compile(re.escape(TMP_PREFIX + host) + r"-(\d+)-[0-9a-f]+")
    for name in fs.listdir(export_dir):
        match = pattern.fullmatch(name)
        if match and not _process_alive(int(match.group(1))):
            fs.rmtree(os.path.join(export_dir, name))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(root: str) -> None:
    """Flushes every file and directory so a crash after the rename cannot lose contents."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
