"""The `run.py` / `ean-tf` command: parses the flags, then runs the mode.

TensorFlow is loaded only once the flags are parsed (help, `--version` and
usage errors print at once), with its C++ start-up logs silenced unless
`--show_tf_logs` is given.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys

USAGE = """EAN for facial expression recognition.

  ean-tf --mode=predict --images=photo.jpg     # the shipped FERPlus model
  ean-tf --mode=train                          # built-in data, a few minutes
  ean-tf --mode=train --config=ferplus48 --data_dir=PATH/ferplus --run_dir=R
  ean-tf --mode=eval --inference_graph=all --run_dir=R
  ean-tf --mode=export --run_dir=R --export_dir=exports/ean

(`python run.py` in a checkout is the same command.) Modes: {modes}.
Every flag below; --helpfull adds absl's own.
"""

_HELP = ("-h", "--help", "-?", "--helpshort")
_FULL_HELP = ("--helpfull", "--helpxml")
# The modes that use a model and, without --run_dir or --checkpoint, use the
# shipped one.
_SHIPPED_MODEL_MODES = ("predict", "export", "describe")


def _quiet_tensorflow() -> None:
    """Silences TF's C++ start-up logs unless --show_tf_logs is given."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # see ean_tf/__init__.py
    if any(a in ("--show_tf_logs", "--show_tf_logs=true") for a in sys.argv):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # Some messages are printed before TF reads that variable: hide stderr while
    # TensorFlow loads (Python exceptions still surface afterwards).
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def _warnings_or_ean_tf(record) -> bool:
    return record.levelno >= py_logging.WARNING or record.name.startswith("ean_tf")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("ean_tf")
    except PackageNotFoundError:
        return "unknown (not installed: pip install the checkout)"


def _run(argv) -> None:
    import flags as ean_flags

    if len(argv) > 1:
        from absl import app

        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if ean_flags.VERSION.value:
        print(f"ean_tf {version()}")
        return
    mode = ean_flags.MODE.value
    checkpoint = ean_flags.CHECKPOINT.value
    if (
        mode in _SHIPPED_MODEL_MODES
        and not checkpoint
        and not ean_flags.FLAGS["run_dir"].present
    ):
        checkpoint = "ferplus48"
    try:
        config = ean_flags.config_from_flags(checkpoint)
    except ean_flags.config_lib.ConfigError as error:
        sys.exit(f"error: {error}")
    _quiet_tensorflow()
    from absl import logging

    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().use_absl_log_file = False
    if not ean_flags.SHOW_TF_LOGS.value:  # TensorFlow's INFO lines: an export's ten
        logging.get_absl_handler().addFilter(_warnings_or_ean_tf)
        py_logging.getLogger("tensorflow").setLevel(py_logging.WARNING)
    from ean_tf import modes
    from ean_tf.config import ConfigError
    from ean_tf.data.base import DataError
    from ean_tf.runs import TrainingError

    try:
        modes.MODES[mode](config, checkpoint, ean_flags.OUTPUT.value)
    except (
        ConfigError,
        DataError,
        TrainingError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
    ) as error:  # library errors with a clear message
        sys.exit(f"error: {error}")


def main() -> None:
    """The command's entry point."""
    from absl import app

    import flags as ean_flags

    if any(a in _HELP for a in sys.argv[1:]):
        print(USAGE.format(modes=", ".join(ean_flags.MODES)))
        print(ean_flags.FLAGS.module_help(ean_flags))
        return
    try:
        app.run(_run)
    except SystemExit as exit_:
        # absl exits with status 1 after printing its full help: that succeeded.
        if exit_.code == 1 and any(a in _FULL_HELP for a in sys.argv[1:]):
            sys.exit(0)
        raise
