import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
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
