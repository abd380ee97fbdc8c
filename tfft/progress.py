"""What a run prints while it works: summary lines and progress bars.

Live bars redraw in place, which only a terminal or a notebook shows as one line; written to a
file (CI logs, ``nohup``, ``> train.log``) every redraw stays, so one quickstart log grew to
~200 KB of bars. Off a terminal each bar prints one line when it completes instead (Keras's own
``verbose=2`` convention).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import keras

Say = Callable[[str], None]


def printer(verbosity: int) -> Say:
    """``print`` at verbosity >= 1, else a function that prints nothing."""
    return print if verbosity >= 1 else _silent


def _silent(_message: str) -> None:
    """Prints nothing (``--verbosity=0``)."""


def interactive() -> bool:
    """True when stdout redraws a line in place: a terminal, or a notebook's output cell.

    Keras's Progbar decides this itself, but counts every POSIX system as dynamic, so its bars
    redraw into log files too.
    """
    return bool(getattr(sys.stdout, "isatty", lambda: False)()) or "ipykernel" in sys.modules


def progress_bar(steps: int | None, title: str, verbosity: int,
                 metrics: tuple[str, ...] = ("loss", "accuracy")) -> keras.utils.Progbar | None:
    """A titled bar with rate and ETA (None at verbosity 0): live in terminals and notebooks,
    one line at the end elsewhere."""
    if verbosity < 1:
        return None
    print(title)
    return keras.utils.Progbar(steps, stateful_metrics=list(metrics),
                               verbose=1 if interactive() else 2)
