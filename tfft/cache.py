"""``python -m tfft.cache list|clear [--cache_dir=DIR] [--older_than=7d]``: the feature cache.

``list`` prints one row per disk feature-cache entry (last use, size, count, dtype, split,
dataset, backbone, image size) and their total; ``clear`` removes them and says what it freed.
``--older_than`` keeps to entries last used that long ago or earlier (``30m``, ``12h``, ``7d``,
``2w``; ``0`` = all). Runs keep the cache within ``--cache_max_gb`` by themselves; this is for
taking the space back now, or seeing where it went. An entry a running process is using is kept.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from typing import Any

from tfft import cache_store, fs
from tfft.diskspace import format_bytes
from tfft.errors import UserError

VERBS = ("list", "clear")
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# SHAPE tells the head phase's features (one dimension) from the finetune phase's activations.
COLUMNS = ("LAST USED", "SIZE", "COUNT", "DTYPE", "SHAPE", "SPLIT", "DATASET", "BACKBONE",
           "IMAGE", "ENTRY")


def parse_age(text: str) -> float:
    """``7d`` -> seconds; ``0`` (with or without a unit) means every entry."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if match is None or (not match.group(2) and float(match.group(1)) != 0):
        raise UserError(f"--older_than: expected an age such as 30m, 12h, 7d or 2w (0 = all "
                        f"entries); received {text!r}.")
    return float(match.group(1)) * AGE_UNITS.get(match.group(2), 1)


def format_age(seconds: float) -> str:
    """Seconds -> whole days, hours, minutes or seconds (``3h``), as ``--older_than`` takes
    them; weeks would round 13 days down to ``1w``."""
    for unit in "dhms":
        size = AGE_UNITS[unit]
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return "0s"


def check_args(verbs: Sequence[str], cache_dir: str, older_than: str) -> tuple[str, str, float]:
    """(verb, cache directory, age in seconds), or a one-line error naming the bad input."""
    if len(verbs) != 1 or verbs[0] not in VERBS:
        raise UserError(f"verb: expected {' or '.join(VERBS)} (python -m tfft.cache list|clear "
                        f"[--cache_dir=DIR] [--older_than=AGE]); received "
                        f"{' '.join(verbs) or 'none'}.")
    root = cache_store.cache_root(cache_dir)
    if fs.exists(root) and not fs.isdir(root):
        raise UserError(f"--cache_dir: expected a directory; received {root!r}, a file.")
    return verbs[0], root, parse_age(older_than)


def row(entry: cache_store.Entry, now: float) -> tuple[str, ...]:
    """One entry's cells, in ``COLUMNS`` order; a field the entry lacks shows as ``-``."""
    fields, meta = entry.fields, entry.meta

    def cell(value: Any) -> str:
        return "-" if value in (None, "") else str(value)

    used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
    return (f"{used} ({format_age(now - entry.last_used)} ago)", format_bytes(entry.size),
            f"{meta.get('count', 0):,}", cell(meta.get("dtype")),
            cell("x".join(str(n) for n in fields.get("feature_shape") or ())),
            cell(fields.get("split")),
            cell(fields.get("dataset")), cell(fields.get("backbone")),
            cell(fields.get("image_size")), os.path.basename(entry.path))


def table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Rows under ``COLUMNS``, each column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [COLUMNS, *rows]]


def list_entries(root: str, older_than: float, now: float) -> list[str]:
    """The ``list`` output: a table of the entries, their total, and any unfinished ones."""
    entries = [e for e in cache_store.scan(root)
               if older_than <= 0 or e.last_used <= now - older_than]
    age = f" last used {format_age(older_than)} ago or earlier" if older_than > 0 else ""
    noun = "entry" if len(entries) == 1 else "entries"
    lines = table([row(e, now) for e in entries]) if entries else []
    lines.append(f"{len(entries)} {noun}{age}, {format_bytes(sum(e.size for e in entries))}, "
                 f"in {root}")
    leftovers = cache_store.unfinished(root)
    if leftovers:
        lines.append(f"and {len(leftovers)} unfinished (being written, or left by a killed run; "
                     f"clear removes those idle for an hour), "
                     f"{format_bytes(sum(t.size for t in leftovers))}")
    return lines


def clear_entries(root: str, older_than: float, now: float) -> str:
    """The ``clear`` output: how many entries it removed and how many bytes that freed."""
    done = cache_store.clear(root, older_than, now)
    noun = "entry" if done.entries == 1 else "entries"
    line = f"Removed {done.entries} {noun}"
    if done.leftovers:
        line += f" and {done.leftovers} unfinished"
    line += f", {format_bytes(done.freed)} freed, from {root}."
    if done.kept:
        line += f" Kept {done.kept} in use by a running process."
    return line


def main(checked: tuple[str, str, float]) -> None:
    verb, root, older_than = checked
    now = time.time()
    if verb == "list":
        print("\n".join(list_entries(root, older_than, now)))
    else:
        print(clear_entries(root, older_than, now))


def define_flags() -> None:
    """``--cache_dir`` and ``--older_than`` (defined only when run as the command: tfft.train
    defines a ``--cache_dir`` of its own)."""
    from absl import flags

    flags.DEFINE_string("cache_dir", "", "Directory of the disk feature cache (empty = "
                        "~/.cache/tfft/features, or under $XDG_CACHE_HOME when set, as for runs).")
    flags.DEFINE_string("older_than", "0", "Only entries last used this long ago or earlier: "
                        "30m, 12h, 7d, 2w (0 = all).")


def run_command() -> None:
    """Parses the flags and the verb (a positional argument absl hands to no one; kept local,
    not in module state) and runs ``main``."""
    from absl import flags

    from tfft import cli

    verbs: list[str] = []

    def parser(argv: list[str]) -> list[str]:
        argv = [argv[0], *cli.expand_flagfiles(argv[1:])]
        try:
            rest = flags.FLAGS(argv)
        except flags.Error as err:
            cli.fail(str(err).strip().splitlines()[0])
        verbs.extend(rest[1:])
        return rest[:1]

    def check() -> tuple[str, str, float]:
        return check_args(verbs, flags.FLAGS.cache_dir, flags.FLAGS.older_than)

    cli.run(main, parser, check)


if __name__ == "__main__":
    define_flags()
    run_command()
