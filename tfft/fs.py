"""Paths on any filesystem: the local disk through ``os``, every other one through ``tf.io.gfile``.

The one module that knows the difference. A path with a scheme (``gs://``, ``s3://`` with the
tensorflow-io plugin, ``ram://``, ``file://``) goes through TensorFlow's filesystem layer; a plain
path keeps the local disk's guarantees (``os.replace`` after ``fsync``, umask-respecting modes).
TensorFlow is imported only for a path with a scheme, so the local commands that start without it
(``python -m tfft.cache``, the checks before a run) still do.

gfile's errors come out as the ``OSError`` subclasses ``os`` raises (``FileNotFoundError``,
``FileExistsError``, ``OSError``), so callers handle one kind whichever filesystem it is.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO, Any

SCHEME = "://"
RAM = "ram://"  # TensorFlow's in-memory filesystem (tests)


def is_local(path: str) -> bool:
    """True for a plain path (the local disk), False for ``scheme://...``."""
    return SCHEME not in path


def _gfile() -> Any:
    import tensorflow as tf

    return tf.io.gfile


@contextlib.contextmanager
def _as_os_errors(path: str) -> Iterator[None]:
    """TensorFlow's filesystem errors as the ``OSError`` ``os`` would raise for them."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.NotFoundError as err:
        raise FileNotFoundError(2, err.message or "not found", path) from None
    except tf.errors.AlreadyExistsError as err:
        raise FileExistsError(17, err.message or "already exists", path) from None
    except tf.errors.OpError as err:
        raise OSError(5, err.message, path) from None


def abspath(path: str) -> str:
    """The absolute path of a local path; a path with a scheme is absolute already."""
    return os.path.abspath(path) if is_local(path) else path.rstrip("/")


def relpath(path: str, start: str) -> str:
    """``path`` relative to ``start`` (which holds it)."""
    if is_local(path):
        return os.path.relpath(path, start)
    prefix = start.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise ValueError(f"{path!r} is not under {start!r}")
    return path[len(prefix) :]


def exists(path: str) -> bool:
    return isfile(path) or isdir(path)


def isdir(path: str) -> bool:
    """A directory; on an object store, one that holds something or was made (``makedirs``)."""
    if is_local(path):
        return os.path.isdir(path)
    with _as_os_errors(path):
        found = _gfile().isdir(path)
    if not found or not path.startswith(RAM):
        return found
    parent, _, name = path.rstrip("/").rpartition("/")
    parent += "/" if parent.endswith(":/") else ""  # ram://name: the root is ram://
    with contextlib.suppress(FileNotFoundError):
        if name in _raw_children(parent):
            return True
    return bool(_children(path))


def isfile(path: str) -> bool:
    if is_local(path):
        return os.path.isfile(path)
    try:
        with _as_os_errors(path):
            return not _gfile().stat(path).is_directory
    except FileNotFoundError:
        return False


def makedirs(path: str) -> None:
    """Creates ``path`` and its parents; an existing directory is fine."""
    if is_local(path):
        os.makedirs(path, exist_ok=True)
        return
    with _as_os_errors(path):
        _gfile().makedirs(path)


def listdir(path: str) -> list[str]:
    """The names in a directory, sorted (raises ``FileNotFoundError`` when it is absent)."""
    if is_local(path):
        return sorted(os.listdir(path))
    if not isdir(path):
        raise FileNotFoundError(2, "no such directory", path)
    return _children(path)


def _raw_children(path: str) -> list[str]:
    with _as_os_errors(path):
        return [name.rstrip("/") for name in _gfile().listdir(path)]


def _children(path: str) -> list[str]:
    """What gfile lists in ``path``. TensorFlow's ``ram://`` lists (and finds) by name prefix,
    so ``head`` would list ``_final`` for a sibling ``head_final``: there a name counts only if
    something is found under it."""
    names = _raw_children(path)
    if path.startswith(RAM):
        gfile = _gfile()
        names = [n for n in names if gfile.exists(os.path.join(path, n))]
    return sorted(names)


def remove(path: str) -> None:
    """Deletes one file."""
    if is_local(path):
        os.remove(path)
        return
    with _as_os_errors(path):
        _gfile().remove(path)


def rmdir(path: str) -> None:
    """Deletes an empty directory (on an object store, one that lists empty is already gone)."""
    if is_local(path):
        os.rmdir(path)
    elif isdir(path):
        rmtree(path)


def rmtree(path: str) -> None:
    """Deletes a directory and everything in it; an absent one, or what fails, is left.

    Elsewhere each file is removed, then the emptied directory: gfile's own recursive delete
    stops at the first name ``ram://`` lists by prefix (see ``_children``).
    """
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        for name in listdir(path):
            child = os.path.join(path, name)
            if isfile(child):
                remove(child)
            else:
                rmtree(child)
    with contextlib.suppress(OSError), _as_os_errors(path):
        _gfile().rmtree(path)


def rename(src: str, dst: str, overwrite: bool = False) -> None:
    """Moves a file or directory. Local: one ``rename`` (atomic; ``overwrite`` replaces a
    file). Elsewhere gfile's rename, which on an object store (GCS) copies and then deletes the
    source, and a directory file by file: not atomic."""
    if is_local(src) and is_local(dst):
        (os.replace if overwrite else os.rename)(src, dst)
        return
    if not overwrite and exists(dst):
        raise FileExistsError(17, "already exists", dst)
    if isdir(src):
        _rename_tree(src, dst)
        return
    with _as_os_errors(dst):
        _gfile().rename(src, dst, overwrite=overwrite)


def _rename_tree(src: str, dst: str) -> None:
    """A directory moved file by file, as GCS does it (not every filesystem moves what is
    inside a directory with it: ``ram://`` leaves the files under the old name)."""
    makedirs(dst)
    for name in listdir(src):
        child = os.path.join(src, name)
        if isfile(child):
            with _as_os_errors(child):
                _gfile().rename(child, os.path.join(dst, name))
        else:
            _rename_tree(child, os.path.join(dst, name))
    rmtree(src)


def open(path: str, mode: str = "r") -> IO[Any]:  # noqa: A001 - the filesystem's own open
    """A file object for ``path`` (gfile's ``GFile`` reads and writes the same way; it opens
    lazily, so a missing file is looked for here, as ``open`` would)."""
    if is_local(path):
        return builtins.open(path, mode)
    if "r" in mode and not isfile(path):
        raise FileNotFoundError(2, "no such file", path)
    with _as_os_errors(path):
        return _gfile().GFile(path, mode)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def size(path: str) -> int:
    """Bytes in a file."""
    if is_local(path):
        return os.path.getsize(path)
    with _as_os_errors(path):
        return int(_gfile().stat(path).length)


def mtime(path: str) -> float:
    """Last modification, in epoch seconds (0 where the filesystem keeps none, as ram://)."""
    if is_local(path):
        return os.stat(path).st_mtime
    with _as_os_errors(path):
        return _gfile().stat(path).mtime_nsec / 1e9


def write_atomic(path: str, data: bytes | str) -> None:
    """Writes ``data`` so a reader sees the old file or the whole new one.

    The temporary name beside ``path`` is unique, so two writers never mix their bytes. Locally
    it is created with the mode ``open(path, "w")`` would give (0666 less the umask; ``mkstemp``
    would make it 0600), flushed to disk and moved by ``os.replace``. Elsewhere it is renamed
    with overwrite, which on GCS is a copy and a delete (see ``rename``).
    """
    directory = os.path.dirname(abspath(path))
    makedirs(directory)
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    binary = isinstance(data, bytes)
    try:
        if is_local(path):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb" if binary else "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        else:
            with open(tmp, "wb" if binary else "w") as f:
                f.write(data)
        rename(tmp, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(OSError):
            if exists(tmp):
                remove(tmp)
        raise


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local path holding ``path``'s file, for readers that open files themselves (h5py,
    LiteRT, ONNX Runtime): ``path`` itself when local, else a temporary copy removed after."""
    if is_local(path):
        yield path
        return
    scratch = tempfile.mkdtemp(prefix="tfft-copy-")
    try:
        local = os.path.join(scratch, os.path.basename(path.rstrip("/")))
        with _as_os_errors(path):
            _gfile().copy(path, local, overwrite=True)
        yield local
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def upload_tree(local_dir: str, target: str) -> None:
    """Copies a local directory tree to ``target`` (on any filesystem), file by file."""
    for dirpath, _, files in os.walk(local_dir):
        rel = os.path.relpath(dirpath, local_dir)
        folder = target if rel == "." else os.path.join(target, rel)
        makedirs(folder)
        for name in files:
            with _as_os_errors(folder):
                _gfile().copy(
                    os.path.join(dirpath, name), os.path.join(folder, name), overwrite=True
                )
