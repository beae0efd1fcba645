import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One thread for each op in every test process (and the processes tests start):
# the tiny models gain nothing from more, and `make test` runs 3 processes on 2
# cores (measured: 5.8 min against 6.4 with 2 processes of default threads).
for _name, _threads in (
    ("TF_NUM_INTRAOP_THREADS", "1"),
    ("TF_NUM_INTEROP_THREADS", "2"),
    ("OMP_NUM_THREADS", "1"),
):
    os.environ.setdefault(_name, _threads)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FERPLUS_DIR = os.path.join(ROOT, "..", "shared", "data", "ferplus")


def write_png(path, size=24, seed=0, grey=False):
    import cv2

    rng = np.random.default_rng(seed)
    shape = (size, size) if grey else (size, size, 3)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, rng.integers(0, 256, shape, dtype=np.uint8))
    return path


@pytest.fixture
def tiny_config(tmp_path):
    from ean_tf.config import make_config

    return make_config(
        "tiny", data_dir=str(tmp_path / "data"), run_dir=str(tmp_path / "run")
    )


@pytest.fixture
def parse():
    """Parses command-line flags as run.py does; returns the Config."""
    import flags as ean_flags

    def _parse(*args):
        ean_flags.FLAGS.unparse_flags()
        ean_flags.FLAGS(["run.py", *args])
        return ean_flags.config_from_flags()

    yield _parse
    ean_flags.FLAGS.unparse_flags()


def run_cli(*args):
    """`run.py ARGS` in this process, as the command's main runs it: a
    CompletedProcess with its exit code, stdout and stderr (the log lines the
    command shows and the one-line error included). Spares a test TensorFlow's start-up;
    a case that needs a fresh process (logical devices, a global dtype policy,
    a kill) starts one."""
    import contextlib
    import io
    import logging
    import subprocess

    from absl import flags as absl_flags
    from absl import logging as absl_logging

    import flags as ean_flags
    from flags import cli

    class Handler(logging.StreamHandler):
        """Writes what the command's own log handler lets through."""

        def filter(self, record):
            return absl_logging.get_absl_handler().filter(record)

    out, err = io.StringIO(), io.StringIO()
    handler = Handler(err)
    logger = logging.getLogger()
    logger.addHandler(handler)
    code = 0
    ean_flags.FLAGS.unparse_flags()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                ean_flags.FLAGS(["run.py", *args])
                cli._run(["run.py"])
            except absl_flags.Error as error:  # as absl's app.run reports it
                print(f"FATAL Flags parsing error: {error}", file=sys.stderr)
                code = 1
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
    finally:
        logger.removeHandler(handler)
        ean_flags.FLAGS.unparse_flags()
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
