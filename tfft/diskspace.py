"""Disk space: checked before large writes, and a full disk reported as one line.

A run that fills the disk half-way through writing a checkpoint, a feature-cache entry, a record
or an export must end as a user error (one line, exit 2) that names the path, never a traceback:
the last good checkpoint and records stay valid (every write goes to a temporary name first), and
the same command continues once space is freed. Before the large writes, the size is estimated
and compared with the free space where it goes, so the work that would be lost is not started.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator

from tfft import fs
from tfft.errors import UserError

# Headroom kept free beyond an estimate: filesystem metadata, the records written beside it.
MARGIN_BYTES = 16 << 20


def free_bytes(path: str) -> int:
    """Free bytes (for this user) on the filesystem that holds ``path`` or would hold it."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return shutil.disk_usage(existing).free


class DiskSpaceError(UserError):
    """Not enough disk space (refused up front, or the disk filled up): what happened where,
    and what to run once space is freed."""

    def __init__(self, problem: str, then: str = "run the same command again"):
        self.problem = problem
        super().__init__(f"{problem}: free some space (or write elsewhere) and {then}.")

    def retry_with(self, then: str) -> DiskSpaceError:
        """The same problem, with another command to run once space is freed."""
        return DiskSpaceError(self.problem, then)


def check_free(path: str, needed: int, what: str) -> None:
    """Refuses, before writing, ``needed`` bytes of ``what`` at ``path`` that would not fit.

    A path on another filesystem (``gs://...``) has no free space to ask for: not checked.
    """
    if not fs.is_local(path):
        return
    free = free_bytes(path)
    if needed + MARGIN_BYTES > free:
        raise DiskSpaceError(f"{path}: not enough free space for {what}: needs about "
                             f"{format_bytes(needed + MARGIN_BYTES)}, {format_bytes(free)} free")


def format_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as ``df -H`` prints them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC from Python's own I/O, or TensorFlow's error for it (a checkpoint, a SavedModel)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return type(err).__name__ == "ResourceExhaustedError" and "No space" in str(err)


@contextlib.contextmanager
def reporting_full_disk(path: str, what: str,
                        kept: str = "the last complete checkpoint and records are kept",
                        ) -> Iterator[None]:
    """Turns a full disk while writing ``what`` at ``path`` into one line (exit 2) that says
    what is ``kept``."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise DiskSpaceError(f"{path}: the disk is full (writing {what}); {kept}") from None
