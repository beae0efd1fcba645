"""EAN for facial expression recognition: `python run.py --mode=...`.

python run.py --mode=train                       # built-in data, a few minutes
python run.py --mode=train --config=ferplus48 --data_dir=PATH/ferplus
python run.py --mode=eval --inference_graph=all --run_dir=runs/default
python run.py --helpfull                         # every mode and flag
"""

import logging as py_logging
import os
import sys


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


_quiet_tensorflow()

from absl import app, logging  # noqa: E402

import flags as ean_flags  # noqa: E402
from ean_tf import modes  # noqa: E402
from ean_tf.config import ConfigError  # noqa: E402
from ean_tf.data.base import DataError  # noqa: E402


def _warnings_or_ean_tf(record) -> bool:
    return record.levelno >= py_logging.WARNING or record.name.startswith("ean_tf")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().use_absl_log_file = False
    if not ean_flags.SHOW_TF_LOGS.value:  # TensorFlow's INFO lines: an export's ten
        logging.get_absl_handler().addFilter(_warnings_or_ean_tf)
        py_logging.getLogger("tensorflow").setLevel(py_logging.WARNING)
    mode = ean_flags.MODE.value
    try:
        config = ean_flags.config_from_flags()
        modes.MODES[mode](config, ean_flags.CHECKPOINT.value, ean_flags.OUTPUT.value)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    except DataError as error:
        sys.exit(f"error: {error}")
    except Exception as error:  # library errors with a clear message
        from ean_tf.runs import TrainingError

        if isinstance(
            error, (TrainingError, ValueError, FileNotFoundError, FileExistsError)
        ):
            sys.exit(f"error: {error}")
        raise


_HELP = ("-h", "--help", "-?", "--helpshort", "--helpfull", "--helpxml")

if __name__ == "__main__":
    try:
        app.run(main)
    except SystemExit as exit_:
        # absl exits with status 1 after printing help; asking for help succeeded.
        if exit_.code == 1 and any(a in _HELP for a in sys.argv[1:]):
            sys.exit(0)
        raise
