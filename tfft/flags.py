"""Command-line flags, generated from the config dataclasses so names and defaults cannot drift."""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass
from typing import Any

from absl import flags

from tfft.config import SECTIONS, Config, flag_fields


def define_config_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one optional flag per config field, with the field's default and help.

    ``--verbosity`` is absl's own flag (absl.logging defines it); tfft reads it rather than
    defining a twin, and keeps its own default when the user does not set it.
    """
    for name, f in flag_fields().items():
        default, help_text = f.default, field_help(f)
        if name in flag_values:
            continue
        if isinstance(default, bool):
            flags.DEFINE_boolean(name, default, help_text, flag_values=flag_values)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif "auto" in f.metadata:
            flags.DEFINE(_FloatOrAutoParser(f.metadata["auto"]), name, default, help_text,
                         flag_values=flag_values)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        elif isinstance(default, tuple):
            flags.DEFINE_list(name, [str(v) for v in default], help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)


def field_help(f: dataclasses.Field) -> str:
    """A config field's help followed by what it accepts, both read from the field's metadata,
    so the help cannot list other choices or bounds than ``config.validate`` enforces."""
    accepts = ""
    if "choices" in f.metadata:
        accepts = "one of: " + ", ".join(f.metadata["choices"])
    elif "bounds" in f.metadata:
        accepts = f.metadata["bounds"].describe()
    if accepts and isinstance(f.default, tuple):
        accepts = f"a comma list, each {accepts}"
    if accepts and "auto" in f.metadata:
        accepts = f"auto or {accepts}"
    return f"{f.metadata['help']} Accepts {accepts}." if accepts else f.metadata["help"]


class _FloatOrAutoParser(flags.FloatParser):
    """A float flag that also takes ``auto``, held as the field's documented sentinel."""

    def __init__(self, sentinel: float):
        super().__init__()
        self.sentinel = sentinel

    def parse(self, argument):
        if isinstance(argument, str) and argument.strip().lower() == "auto":
            return self.sentinel
        return super().parse(argument)

    def flag_type(self) -> str:
        return "float or auto"


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Config:
    """The (not yet validated) config the parsed flags describe."""
    values = {}
    for name, f in flag_fields().items():
        flag = flag_values[name]
        values[name] = flag.value if flag.present or flag.default == f.default else f.default
    return Config.from_flat(values)


@dataclass(frozen=True)
class FlagHelp:
    """One flag's entry in a command's ``--help``."""

    name: str
    text: str
    default: str
    boolean: bool = False

    @classmethod
    def of_flag(cls, flag: flags.Flag) -> FlagHelp:
        return cls(flag.name, flag.help or "", flag.default_as_str or "", flag.boolean)

    def render(self) -> str:
        """absl's layout (``--[no]`` for booleans, the default below), wrapped to 80 columns."""
        name = f"--[no]{self.name}" if self.boolean else f"--{self.name}"
        text = textwrap.fill(f"{name}: {self.text}", 80, initial_indent="  ",
                             subsequent_indent="    ", break_on_hyphens=False,
                             break_long_words=False)
        return f"{text}\n    (default: {self.default})" if self.default else text


def config_flag_help() -> dict[str, list[FlagHelp]]:
    """The help of every config flag by config section, in field order, from the fields alone
    (``--verbosity`` is absl's flag, whose own help and default are not tfft's)."""
    return {section: [FlagHelp(f.name, field_help(f), _default_text(f.default),
                               isinstance(f.default, bool)) for f in dataclasses.fields(sub)]
            for section, sub in SECTIONS.items()}


def _default_text(value: Any) -> str:
    """A field default as absl shows a flag's: quoted, booleans lower-case, lists comma-joined."""
    if isinstance(value, bool):
        return repr(str(value).lower())
    return repr(",".join(str(v) for v in value) if isinstance(value, tuple) else str(value))
