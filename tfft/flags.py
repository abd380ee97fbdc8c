"""Command-line flags, generated from the config dataclasses so names and defaults cannot drift."""

from __future__ import annotations

from absl import flags

from tfft.config import Config, flag_fields


def define_config_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one optional flag per config field, with the field's default and help.

    ``--verbosity`` is absl's own flag (absl.logging defines it); tfft reads it rather than
    defining a twin, and keeps its own default when the user does not set it.
    """
    for name, f in flag_fields().items():
        default, help_text = f.default, f.metadata["help"]
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
