"""``python -m tfft.train --flagfile=configs/quickstart.cfg``: two-phase training from flags."""

from __future__ import annotations

import os

from absl import flags

from tfft import cli, export_formats, rundir
from tfft.config import Config, validate
from tfft.diskspace import DiskSpaceError
from tfft.flags import config_from_flags, define_config_flags

FLAGS = flags.FLAGS
define_config_flags()
flags.DEFINE_string("workdir", "runs/default", "Run directory (config, metrics, model).")
flags.DEFINE_boolean("export", True, "After training, export a SavedModel for TF Serving "
                     "(python -m tfft.export does it later).")
flags.DEFINE_string("export_dir", "", "Export base directory; versions go to EXPORT_DIR/<n> "
                    "(default: WORKDIR/export).")
flags.DEFINE_integer("top_k", 5, "How many best classes the exported signatures return.",
                     lower_bound=1)
export_formats.define_format_flag(
    "export_formats", [export_formats.SAVED_MODEL], "What the export step writes: saved_model, "
    "litert (float32), onnx (repeat the flag or give a comma list); python -m tfft.export "
    "--quantize=... writes quantised LiteRT files later.")
export_formats.define_tta_flag()
flags.DEFINE_boolean("overwrite", False,
                     "Replace a finished run or one with another config in --workdir "
                     "(an interrupted run with the same config is resumed without it).")


def check_flags() -> Config:
    """Everything that can be checked before TensorFlow starts: values and writable dirs."""
    config = validate(config_from_flags(FLAGS))
    rundir.check_writable(FLAGS.workdir, "workdir")
    if config.run.cache_dir:
        rundir.check_writable(config.run.cache_dir, "cache_dir")
    if FLAGS.export:  # before training: a finished run is not trained again to fix its export
        export_formats.check_options(export_formats.ExportOptions(
            export_formats.parse_formats(FLAGS.export_formats, "--export_formats"),
            tta=FLAGS.export_tta))
    return config


def main(config: Config) -> None:
    """Trains ``config`` (checked by ``check_flags`` before TensorFlow was imported)."""
    from tfft import train_lib

    result = train_lib.train_and_evaluate(config, FLAGS.workdir, overwrite=FLAGS.overwrite)
    minimum = config.run.assert_min_accuracy
    if minimum and result.test_accuracy < minimum:
        from tfft.errors import AccuracyBelowMinimum

        raise AccuracyBelowMinimum(
            f"--assert_min_accuracy: test accuracy {result.test_accuracy:.4f} is below "
            f"{minimum:g}; nothing exported (run directory {FLAGS.workdir}).")
    if FLAGS.export and result.workdir == FLAGS.workdir:  # other workers ran in a temp dir
        from tfft.export import ExportOptions, export_model

        export_dir = FLAGS.export_dir or os.path.join(FLAGS.workdir, rundir.EXPORT)
        options = ExportOptions(export_formats.parse_formats(FLAGS.export_formats,
                                                             "--export_formats"),
                                tta=FLAGS.export_tta)
        try:
            version_dir = export_model(result.classifier.model, result.class_names,
                                       result.config, export_dir, FLAGS.top_k, options)
        except DiskSpaceError as err:  # a finished run is not trained again: export it then
            formats = ("" if options.formats == (export_formats.SAVED_MODEL,)
                       else f" --format={','.join(options.formats)}")
            raise err.retry_with(f"export the finished run with python -m tfft.export "
                                 f"--workdir={FLAGS.workdir}{formats}") from None
        if config.run.verbosity:
            print(f"Exported {', '.join(options.formats)}: {version_dir}")


if __name__ == "__main__":
    cli.run(main, check=check_flags)
