"""The export formats and their options: names, files, flags and what each needs installed.

One home for the vocabulary ``tfft.export``, ``tfft.train``'s export step, ``tfft.predict`` and
``tfft.evaluate`` share, so a format's file name or its missing-package line cannot differ between
the command that writes it and the one that reads it. Importing this module imports no TensorFlow
(the flags are checked before it starts).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

from tfft.errors import UserError

SAVED_MODEL = "saved_model"
LITERT = "litert"
ONNX = "onnx"
FORMATS = (SAVED_MODEL, LITERT, ONNX)
QUANTIZE_MODES = ("none", "dynamic", "float16", "int8")
TFLITE_FILE = "model.tflite"
ONNX_FILE = "model.onnx"
MODEL_FILES = {LITERT: TFLITE_FILE, ONNX: ONNX_FILE}
SUFFIX_FORMATS = {".tflite": LITERT, ".onnx": ONNX}
LABELS_FILE = "labels.txt"
CONFIG_FILE = "config.json"
ONNX_OPSET = 17  # onnxruntime >= 1.13 runs it; tf2onnx 1.17 writes up to 18
REPRESENTATIVE_IMAGES = 200  # training images --quantize=int8 calibrates on

# What runs a format's file, as (pip package, tfft extra, what it is), and what writes one, as
# (Python module, pip package) pairs; LiteRT's converter ships with TensorFlow.
RUNTIME_PACKAGES = {LITERT: ("ai-edge-litert", "litert", "the LiteRT interpreter"),
                    ONNX: ("onnxruntime", "onnx", "ONNX Runtime")}
CONVERTER_PACKAGES = {ONNX: (("tf2onnx", "tf2onnx"), ("onnx", "onnx"))}


@dataclass(frozen=True)
class ExportOptions:
    """What one export writes: the formats of its version, and how the LiteRT file is made."""

    formats: tuple[str, ...] = (SAVED_MODEL,)
    quantize: str = "none"
    litert_preprocess: bool = False
    tta: str = "none"  # test-time views baked into the SavedModel's signatures (tfft.tta)


def parse_formats(values: Sequence[str], flag: str = "--format") -> tuple[str, ...]:
    """``["litert,onnx", "saved_model"]`` (repeated flags, comma lists) -> known names, in order."""
    problem = formats_problem(values)
    if problem:
        raise UserError(f"{flag}: {problem}.")
    return tuple(dict.fromkeys(_names(values)))


def formats_problem(values: Sequence[str]) -> str:
    """What is wrong with a format flag's values ('' if nothing), without naming the flag."""
    names = _names(values)
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        return (f"expected {', '.join(FORMATS[:-1])} or {FORMATS[-1]} (repeat the flag or give "
                f"a comma list); received {','.join(unknown) or 'nothing'}")
    return next(filter(None, map(converter_problem, names)), "")


def _names(values: Sequence[str]) -> list[str]:
    return [n.strip() for value in values for n in str(value).split(",") if n.strip()]


def check_options(options: ExportOptions) -> ExportOptions:
    """Refuses, before any work, unknown formats, a converter that is not installed and options
    that would silently do nothing; returns ``options``."""
    parse_formats(options.formats)
    if options.quantize not in QUANTIZE_MODES:
        raise UserError(f"--quantize: expected one of {', '.join(QUANTIZE_MODES)}; received "
                        f"{options.quantize!r}.")
    litert_only = options.quantize != "none" or options.litert_preprocess
    if litert_only and LITERT not in options.formats:
        raise UserError(f"--quantize/--litert_preprocess: apply to --format={LITERT}; received "
                        f"--format={','.join(options.formats)}.")
    if options.tta != "none" and options.formats != (SAVED_MODEL,):
        raise UserError(f"--export_tta: applies to the SavedModel's signatures only (LiteRT and "
                        f"ONNX files hold one view); received "
                        f"--format={','.join(options.formats)}.")
    return options


def converter_problem(name: str) -> str:
    """'' if format ``name`` can be written here, else the line naming the install it needs."""
    for module, package in CONVERTER_PACKAGES.get(name, ()):
        if not installed(module):
            packages = " ".join(p for _, p in CONVERTER_PACKAGES[name])
            return (f"writing {name} needs {package}, which is not installed; pip install "
                    f"{packages} (tfft's [{name}] extra)")
    return ""


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (an import hook that refuses it
    counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_runtime(name: str, path: str) -> UserError:
    """The one line for a model file whose runtime is not installed: the pip install that fixes
    it, and tfft's extra that holds it."""
    package, extra, what = RUNTIME_PACKAGES[name]
    return UserError(f"--model: running {path!r} needs {what} ({package}), which is not "
                     f"installed; pip install {package} (tfft's [{extra}] extra).")


def define_format_flag(name: str, default: Sequence[str], help_text: str) -> None:
    """A repeatable, comma-separated format flag, checked when the flags are parsed (so a typo
    is refused before any training or loading starts)."""
    from absl import flags

    flags.DEFINE_multi_string(name, list(default), help_text)
    flags.register_validator(name, _valid_formats)


def _valid_formats(values: Sequence[str]) -> bool:
    """absl's validator protocol: True, or a ``ValidationError`` carrying tfft's line."""
    from absl import flags

    problem = formats_problem(values)
    if problem:
        raise flags.ValidationError(problem)
    return True


def define_tta_flag() -> None:
    """``--export_tta``: test-time views inside the exported signatures."""
    from absl import flags

    flags.DEFINE_enum("export_tta", "none", ["none", "flip", "flip_crops"],
                      "Bake test-time augmentation into the SavedModel's signatures: the mean "
                      "probabilities over the image and its mirror (flip), or also four corner "
                      "crops (flip_crops); 2x or 6x the serving compute.")


def define_litert_flags() -> None:
    """``--quantize`` and ``--litert_preprocess`` (``tfft.export``'s LiteRT options)."""
    from absl import flags

    flags.DEFINE_enum("quantize", "none", list(QUANTIZE_MODES),
                      "LiteRT weights/activations: none (float32), dynamic (int8 weights), "
                      f"float16, int8 (full-integer, uint8 in and out, calibrated on "
                      f"{REPRESENTATIVE_IMAGES} training images).")
    flags.DEFINE_boolean("litert_preprocess", False,
                         "LiteRT input: uint8 pixels of any size, resized inside the model "
                         "(default: uint8 pixels at the model's size, resized by the caller).")
