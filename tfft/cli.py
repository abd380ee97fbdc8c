"""What every ``python -m tfft.*`` command shares: flag parsing and one-line errors.

User errors end as one line on stderr and a non-zero exit status, never a traceback:
2 for bad input, 3 for a diverged loss, 4 for a test accuracy below --assert_min_accuracy.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

from tfft.errors import AccuracyBelowMinimum, TrainingDiverged, UserError  # noqa: E402

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_ACCURACY = 4


def fail(message: str, status: int = EXIT_USER_ERROR) -> None:
    """Prints one line on stderr and exits."""
    line = " ".join(str(message).split())
    sys.stderr.write(f"tfft: error: {line}\n")
    sys.stderr.flush()
    sys.exit(status)


def resolve_flagfile(arg: str) -> str:
    """``--flagfile=NAME`` not found in the cwd falls back to the configs shipped with tfft."""
    prefix = "--flagfile="
    if not arg.startswith(prefix):
        return arg
    path = arg[len(prefix):]
    if os.path.exists(path):
        return arg
    shipped = shipped_config(os.path.basename(path))
    if shipped:
        return prefix + shipped
    fail(f"--flagfile: file {path!r} does not exist (nor among the shipped configs).")
    return arg


def shipped_config(name: str) -> str | None:
    """Path of a config shipped with the package, or None."""
    import importlib.resources

    candidate = importlib.resources.files("tfft") / "configs" / name
    return str(candidate) if candidate.is_file() else None


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl parsing whose errors are one line and exit status 2 (absl's own is 1)."""
    argv = [argv[0]] + [resolve_flagfile(a) for a in argv[1:]]
    try:
        rest = flag_values(argv)
    except flags.Error as err:
        fail(str(err).strip().splitlines()[0])
    if len(rest) > 1:
        fail(f"unexpected argument(s) {' '.join(rest[1:])}; flags are written --name=value.")
    return rest


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its C++ start-up banner kept off the terminal.

    TensorFlow's runtime prints oneDNN/CUDA notices on stderr before any log level applies, which
    would bury tfft's one-line errors. They are shown after all if the import itself fails.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quiet_library_logs() -> None:
    """Library INFO logs (TensorFlow's checkpoint notices, TFDS's progress) off the terminal.

    absl raises logging to INFO under ``app.run``; tfft's own output is its summary and progress
    bars. Python logger levels are set directly: ``absl.logging.set_verbosity`` would rewrite
    ``--verbosity``, which tfft reads as its own flag.
    """
    for name in ("", "absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run(main: Callable[..., None], parser: Callable[[list[str]], list[str]] = parse_flags,
        check: Callable[[], Any] | None = None) -> None:
    """Runs ``main`` under absl with tfft's error handling.

    ``check`` (pure Python, no TensorFlow) runs first, so bad input is reported in about a second
    instead of after TensorFlow's multi-second import; ``main`` then gets what it returned.
    """

    def wrapped(_argv: list[str]) -> None:
        try:
            checked = check() if check is not None else None
            import_tensorflow_quietly()
            quiet_library_logs()
            if check is None:
                main()
            else:
                main(checked)
        except UserError as err:
            fail(str(err))
        except TrainingDiverged as err:
            fail(str(err), EXIT_DIVERGED)
        except AccuracyBelowMinimum as err:
            fail(str(err), EXIT_ACCURACY)

    app.run(wrapped, flags_parser=parser)
