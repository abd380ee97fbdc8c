"""tfft: transfer learning of image classifiers with TensorFlow/Keras.

Library entry points (the command line and the notebooks use the same ones)::

    from tfft import Config, train_and_evaluate
    result = train_and_evaluate(validate(Config()), "runs/demo")
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tfft.config import Config, validate
from tfft.errors import UserError

if TYPE_CHECKING:
    import tensorflow as tf

    from tfft.callbacks import RunCallback, RunResult

__version__ = "0.1.0"


def train_and_evaluate(config: Config, workdir: str, strategy: tf.distribute.Strategy | None = None,
                       callbacks: Sequence[RunCallback] = (), overwrite: bool = False) -> RunResult:
    """Two-phase training and test evaluation; see ``tfft.train_lib.train_and_evaluate``.

    Imported lazily so that ``import tfft`` stays cheap (no TensorFlow until a run starts).
    """
    from tfft import train_lib

    return train_lib.train_and_evaluate(config, workdir, strategy, callbacks=tuple(callbacks),
                                        overwrite=overwrite)


def _runs_as_command() -> bool:
    """Whether Python is importing this package to run ``python -m tfft.<command>``.

    runpy imports the parent package before the command module, while ``sys.argv[0]`` is still
    ``"-m"``; ``sys.orig_argv`` names the module. A plain ``import tfft`` (a notebook, a test,
    ``python -m pytest``) is left alone, logging included.
    """
    if sys.argv[:1] != ["-m"] or "-m" not in sys.orig_argv:
        return False
    module = sys.orig_argv[sys.orig_argv.index("-m") + 1:][:1]
    return bool(module) and module[0].startswith("tfft.")


if _runs_as_command():
    # Every command's one start-up path: TensorFlow's C++ start-up lines are kept off stderr
    # even for commands (predict, evaluate, export) that import TensorFlow at their top.
    from tfft import cli

    cli.quiet_tensorflow_import()

__all__ = ["Config", "UserError", "train_and_evaluate", "validate", "__version__"]
