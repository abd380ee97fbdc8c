"""Library INFO chatter kept off the terminal while a model is written or converted.

The SavedModel writer logs lines per function and shard, tf2onnx logs every rewrite; users need
none of them, and tfft's own output is one line per export.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

FILTERED = ("tensorflow", "absl")
# Log through child loggers (tf2onnx.tfonnx, ...), which filters miss; tf2onnx's warnings and
# errors (an optimizer pass skipped, an op it cannot convert) are checked and reported by tfft.
PARENTS = ("tf2onnx",)


@contextlib.contextmanager
def quiet_tensorflow_logger() -> Iterator[None]:
    """Only warnings and errors of TensorFlow's and absl's loggers get through, none of tf2onnx's.

    A filter for TensorFlow's and absl's: TensorFlow's saver resets absl's verbosity while it
    runs. A level for tf2onnx's parent logger (nothing below CRITICAL), as its records come
    from child loggers and ``tfft.onnx_export`` reports what matters in one line.
    """
    loggers = [logging.getLogger(name) for name in FILTERED]
    parents = {logger: logger.level for logger in map(logging.getLogger, PARENTS)}
    only_warnings = WarningsOnly()
    for logger in loggers:
        logger.addFilter(only_warnings)
    for logger in parents:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(only_warnings)
        for logger, level in parents.items():
            logger.setLevel(level)


class WarningsOnly(logging.Filter):
    """Lets records of level WARNING and above through, except TensorFlow's notices that an
    API tfft's converters call internally is deprecated (nothing a user can act on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.levelno >= logging.WARNING
                and "is deprecated and will be removed" not in record.getMessage())


@contextlib.contextmanager
def native_stderr_discarded() -> Iterator[None]:
    """What C++ code writes to file descriptor 2 is dropped: the LiteRT converter prints its
    quantiser's settings there, and on failure an MLIR dump whose gist its exception carries
    (tfft turns that into one line)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
