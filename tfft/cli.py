"""What every ``python -m tfft.*`` command shares: a quiet start, flag parsing, ``--help`` and
one-line errors.

User errors end as one line on stderr and a non-zero exit status, never a traceback:
2 for bad input, 3 for a diverged loss, 4 for a test accuracy below --assert_min_accuracy.
Importing this module changes nothing; ``tfft/__init__.py`` calls ``quiet_tensorflow_import``
when Python runs a ``python -m tfft.<command>``, before the command's own imports.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from absl import app, flags

from tfft import fs
from tfft.config import flag_fields
from tfft.errors import AccuracyBelowMinimum, TrainingDiverged, UserError
from tfft.flags import FlagHelp, config_flag_help

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_ACCURACY = 4
FLAGFILE = "--flagfile="


def fail(message: str, status: int = EXIT_USER_ERROR) -> None:
    """Prints one line on stderr and exits."""
    line = " ".join(str(message).split())
    sys.stderr.write(f"tfft: error: {line}\n")
    sys.stderr.flush()
    sys.exit(status)


def expand_flagfiles(args: list[str]) -> list[str]:
    """``args`` with each ``--flagfile=`` on another filesystem (``gs://...``) replaced by its
    flags, read through ``tfft.fs`` (absl opens flagfiles with ``open``); a local one is left to
    absl, found in the shipped configs when it is not in the cwd (``resolve_flagfile``)."""
    expanded: list[str] = []
    for arg in args:
        path = arg[len(FLAGFILE):] if arg.startswith(FLAGFILE) else ""
        if not path or fs.is_local(path):
            expanded.append(resolve_flagfile(arg))
            continue
        try:
            text = fs.read_text(path)
        except OSError as err:
            fail(f"--flagfile: could not read {path!r} ({err.strerror or err}).")
        expanded.extend(expand_flagfiles(flagfile_lines(text)))
    return expanded


def flagfile_lines(text: str) -> list[str]:
    """A flagfile's flags as absl reads them: one a line, blank and ``#``/``//`` lines skipped."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.startswith(("#", "//"))]


def resolve_flagfile(arg: str) -> str:
    """``--flagfile=NAME`` not found in the cwd falls back to the configs shipped with tfft."""
    if not arg.startswith(FLAGFILE):
        return arg
    path = arg[len(FLAGFILE):]
    if os.path.exists(path):
        return arg
    shipped = shipped_config(os.path.basename(path))
    if shipped:
        return FLAGFILE + shipped
    fail(f"--flagfile: file {path!r} does not exist (nor among the shipped configs).")
    return arg


def shipped_config(name: str) -> str | None:
    """Path of a config shipped with the package, or None."""
    import importlib.resources

    candidate = importlib.resources.files("tfft") / "configs" / name
    return str(candidate) if candidate.is_file() else None


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl parsing whose errors are one line and exit status 2 (absl's own is 1)."""
    argv = [argv[0], *expand_flagfiles(argv[1:])]
    try:
        rest = flag_values(argv)
    except flags.Error as err:
        fail(str(err).strip().splitlines()[0])
    if len(rest) > 1:
        fail(f"unexpected argument(s) {' '.join(rest[1:])}; flags are written --name=value.")
    return rest


@contextlib.contextmanager
def stderr_captured() -> Iterator[None]:
    """Holds what C++ code writes to file descriptor 2 back; shown after all if the body
    raises (a failing import keeps its explanation)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quiet_tensorflow_import() -> None:
    """Makes the process's first ``import tensorflow``, whenever it comes, quiet: TensorFlow's
    runtime prints oneDNN/CUDA notices on stderr before any log level applies, which would bury
    tfft's one-line errors, and ``TF_CPP_MIN_LOG_LEVEL`` (unless the user set it) keeps later C++
    notices, such as a failed ``cuInit`` on a machine without GPUs, away. Commands whose modules
    import TensorFlow at their top (predict, evaluate, export) start without its banner, and those
    that need no TensorFlow to answer (``--help``, a bad flag) answer before importing it."""
    if "tensorflow" in sys.modules or any(isinstance(f, QuietTensorFlowFinder)
                                          for f in sys.meta_path):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.meta_path.insert(0, QuietTensorFlowFinder())


class QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as usual, once, and wraps its loader in ``stderr_captured``."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = QuietLoader(spec.loader)
        return spec


class QuietLoader(importlib.abc.Loader):
    """A module's own loader, run with stderr captured; anything else it is asked for, it
    answers as the wrapped loader does."""

    def __init__(self, loader: Any):
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with stderr_captured():
            self.loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


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
    """Runs ``main`` under absl with tfft's ``--help`` and error handling.

    ``check`` runs first, so bad input is reported before ``main`` builds or writes anything;
    ``main`` then gets what it returned. TensorFlow's first import is made quiet here too for
    callers outside the package (``bench``), and a command that needs no TensorFlow (``tfft.cache``)
    never imports it.
    """

    def wrapped(_argv: list[str]) -> None:
        try:
            checked = check() if check is not None else None
            quiet_tensorflow_import()
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

    app.run(wrapped, flags_parser=functools.partial(parse_unless_help, parser=parser))


HELP_ARGS = ("-h", "-?", "--help", "-help", "--helpshort", "-helpshort")
HELP_FOOTER = (
    "--flagfile=FILE reads flags from FILE; a bare name not in the current directory is",
    "looked up among the configs shipped with tfft. --helpfull also lists absl's and",
    "TensorFlow's flags.",
)


def parse_unless_help(argv: list[str], parser: Callable[[list[str]], list[str]]) -> list[str]:
    """Prints the command's own help and exits 0 when asked, before any parser sees ``argv``.

    absl's ``--help`` shows only the flags of the main module (not the config flags, defined in
    ``tfft.flags``) and exits 1; ``--helpfull`` keeps absl's behaviour. Arguments after ``--``
    belong to another command (``tfft.launch`` passes them to its workers).
    """
    own = argv[:argv.index("--")] if "--" in argv else argv
    if any(arg in HELP_ARGS for arg in own[1:]):
        print(command_help())
        sys.exit(0)
    return parser(argv)


def command_help(flag_values: flags.FlagValues = flags.FLAGS) -> str:
    """The running command's flags: the config flags by section (when the command defines them),
    then the command's own; absl's and TensorFlow's are left to ``--helpfull``."""
    main = sys.modules.get("__main__")
    command = getattr(getattr(main, "__spec__", None), "name", "") or "tfft"
    usage = ((getattr(main, "__doc__", None) or "").strip().splitlines() or [command])[0]
    groups = {}
    if all(name in flag_values for name in flag_fields()):
        groups = {f"{section} flags": docs for section, docs in config_flag_help().items()}
    shown = {doc.name for docs in groups.values() for doc in docs}
    groups[f"{command} flags"] = [doc for doc in _own_flags(flag_values, command)
                                  if doc.name not in shown]
    lines = [usage.replace("``", "")]
    for title, docs in groups.items():
        if docs:
            lines += ["", f"{title}:", *(doc.render() for doc in docs)]
    return "\n".join([*lines, "", *HELP_FOOTER])


def _own_flags(flag_values: flags.FlagValues, command: str) -> list[FlagHelp]:
    """Flags defined by the main module, tfft's modules or the command's own package."""
    packages = {"tfft", command.split(".")[0]}
    docs: dict[str, FlagHelp] = {}
    for module, module_flags in flag_values.flags_by_module_dict().items():
        if module == sys.argv[0] or module.split(".")[0] in packages:
            docs.update({f.name: FlagHelp.of_flag(f) for f in module_flags if f.name not in docs})
    return list(docs.values())
