"""``python -m tfft.predict --model=EXPORT_DIR[/<version>][/model.tflite|model.onnx] IMG...``:
top-k classes per image.

For a SavedModel, each image file goes, as its encoded bytes, through the export's
``serving_default`` signature, exactly what TF Serving would run. A ``.tflite`` or ``.onnx``
file runs in its own runtime (LiteRT, ONNX Runtime: ``tfft.runtimes``) on the decoded pixels, as
an app would run it, with the class names of the ``labels.txt`` beside it. A file that cannot
be read or decoded gives one line on stderr; the other images are still predicted, and the exit
status is then 2.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tfft import export, fs, model_files
from tfft.errors import UserError
from tfft.export_formats import SAVED_MODEL
from tfft.preprocess import decode_image

FORMATS = ("table", "json")
PORTABLE_TOP_K = 5  # classes shown for a .tflite/.onnx file when --top_k=0 (they keep no k)


@dataclass(frozen=True)
class Prediction:
    """The best classes of one image, most probable first."""

    image: str
    class_names: tuple[str, ...]
    probabilities: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"image": self.image,
                "predictions": [{"class_name": n, "probability": p}
                                for n, p in zip(self.class_names, self.probabilities,
                                                strict=True)]}


class Predictor:
    """An exported model applied to image files: a SavedModel's ``serving_default`` signature,
    or a ``.tflite`` / ``.onnx`` file in its runtime."""

    def __init__(self, model_dir: str, top_k: int = 0):
        model = model_files.resolve_model(model_dir)
        self.model_dir = model.path
        if model.format == SAVED_MODEL:
            self.classify = SavedModelClassifier(model.path)
        else:
            self.classify = PortableClassifier(model, top_k or PORTABLE_TOP_K)
        self.top_k = top_k

    def predict_file(self, path: str) -> Prediction:
        """Predicts one image file; a file that is not a readable image is a UserError."""
        try:
            encoded = fs.read_bytes(path)
        except OSError as err:
            raise UserError(f"{path}: cannot read the file ({err.strerror}).") from None
        try:
            names, probs = self.classify(encoded)
        except tf.errors.InvalidArgumentError:
            raise UserError(f"{path}: expected a JPEG, PNG, BMP or GIF image; the file "
                            "could not be decoded.") from None
        k = self.top_k or len(names)
        return Prediction(path, tuple(names[:k]), tuple(probs[:k]))


class SavedModelClassifier:
    """Encoded image -> the best classes, by the SavedModel's own decoding and top-k."""

    def __init__(self, version_dir: str):
        try:
            loaded = tf.saved_model.load(version_dir)
        except Exception as err:  # noqa: BLE001 - parse and op errors of foreign dirs
            raise UserError(f"--model: could not load {version_dir!r} as a SavedModel "
                            f"({str(err).strip().splitlines()[0][:200]}).") from None
        self.loaded = loaded  # the signature needs its variables alive
        self.signature = loaded.signatures.get(export.IMAGES_SIGNATURE)
        if self.signature is None:
            raise UserError(f"--model: {version_dir!r} has no "
                            f"{export.IMAGES_SIGNATURE!r} signature.")

    def __call__(self, encoded: bytes) -> tuple[list[str], list[float]]:
        outputs = self.signature(images=tf.constant([encoded]))
        names = [n.decode() for n in outputs["top_k_class_names"].numpy()[0]]
        return names, [float(p) for p in outputs["top_k_probabilities"].numpy()[0]]


class PortableClassifier:
    """Encoded image -> the ``top_k`` best classes of a LiteRT or ONNX file."""

    def __init__(self, model: model_files.ModelPath, top_k: int):
        from tfft.runtimes import PortableModel

        self.names = model_files.read_labels(model)
        self.runtime = PortableModel(model)
        self.top_k = top_k

    def __call__(self, encoded: bytes) -> tuple[list[str], list[float]]:
        pixels = decode_image(tf.constant(encoded))[tf.newaxis]
        probs = self.runtime.pixels(pixels)["probabilities"].numpy()[0]
        best = np.argsort(-probs, kind="stable")[:self.top_k]
        return [self.names[i] for i in best], [float(probs[i]) for i in best]


def format_table(predictions: list[Prediction]) -> str:
    """Each image's path, then one indented line per class: what a person reads."""
    lines = []
    for p in predictions:
        lines.append(p.image)
        lines.extend(f"  {name:<20} {prob:.4f}"
                     for name, prob in zip(p.class_names, p.probabilities, strict=True))
    return "\n".join(lines)


def format_json(predictions: list[Prediction]) -> str:
    """Every prediction as JSON, for scripts (``--format=json``)."""
    return json.dumps([p.to_dict() for p in predictions], indent=2)


def predict_files(predictor: Predictor, paths: list[str]) -> tuple[list[Prediction], list[str]]:
    """Predictions for the images that worked and one error line for each that did not."""
    predictions, errors = [], []
    for path in paths:
        try:
            predictions.append(predictor.predict_file(path))
        except UserError as err:
            errors.append(str(err))
    return predictions, errors


# ---------------------------------------------------------------- command line

def parse_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """absl flag parsing that keeps positional arguments: (argv left for absl, image paths)."""
    from absl import flags

    from tfft import cli

    argv = [argv[0], *cli.expand_flagfiles(argv[1:])]
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as err:
        cli.fail(str(err).strip().splitlines()[0])
    return rest[:1], rest[1:]


def main(images: list[str]) -> None:
    """Predicts ``images`` with the flags' model and prints them; exit status 2 on any error."""
    from absl import flags

    from tfft import cli

    values = flags.FLAGS
    if not values.model:
        raise UserError("--model: expected an exported model directory or a .tflite/.onnx "
                        "file; received none.")
    if values.top_k < 0:
        raise UserError(f"--top_k: expected a number >= 0; received {values.top_k}.")
    if not images:
        raise UserError("images: expected one or more image files after the flags; "
                        "received none.")
    predictions, errors = predict_files(Predictor(values.model, values.top_k), images)
    if predictions or values.format == "json":
        print(format_table(predictions) if values.format == "table" else format_json(predictions))
        sys.stdout.flush()
    for line in errors:
        sys.stderr.write(f"tfft: error: {line}\n")
    if errors:
        sys.exit(cli.EXIT_USER_ERROR)


def run_command() -> None:
    """``python -m tfft.predict``: absl hands positional arguments to no one, so the parser
    passes them to ``main`` here (kept local: no module state)."""
    from tfft import cli

    images: list[str] = []

    def parser(argv: list[str]) -> list[str]:
        absl_argv, paths = parse_args(argv)
        images.extend(paths)
        return absl_argv

    cli.run(lambda: main(images), parser)


def define_flags() -> None:
    """The command's flags, defined only when it runs (importing tfft.predict defines none)."""
    from absl import flags

    flags.DEFINE_string("model", "", "Exported model: a SavedModel EXPORT_DIR/<version> (or "
                        "EXPORT_DIR for its newest version), or a .tflite or .onnx file.")
    flags.DEFINE_integer("top_k", 0, "Show this many best classes (0 = all the SavedModel "
                         f"returns, {PORTABLE_TOP_K} for a .tflite/.onnx file).")
    flags.DEFINE_enum("format", "table", list(FORMATS), "Output format: table or json.")


if __name__ == "__main__":
    define_flags()
    run_command()
