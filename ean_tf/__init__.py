"""ean_tf: the Expression Associative Network (EAN) for facial expression
recognition, in Keras 3 / TensorFlow.

    >>> import ean_tf
    >>> faces = ean_tf.Recognizer()("photo.jpg")   # the shipped FERPlus model
    >>> faces[0].label, faces[0].box, faces[0].probabilities

`import ean_tf` registers every custom Keras object (the model, its layers and the
optimizer's learning-rate schedule), so a saved `.keras` model loads with
`keras.models.load_model(path)`; `ean_tf.pretrained` holds the shipped models.
"""

import os

# oneDNN's CPU kernels, which TensorFlow leaves off by default on some CPUs (the
# AMD EPYC of bench/RESULTS.md). Takes effect when ean_tf is imported before
# TensorFlow; set the variable to 0 to opt out.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from ean_tf import pretrained  # noqa: E402
from ean_tf.build import build_model  # noqa: E402
from ean_tf.config import Config, make_config  # noqa: E402
from ean_tf.models.ean import EAN, AdjacencyWarmup  # noqa: E402
from ean_tf.models.gcn import GCNConv, GCNHead  # noqa: E402
from ean_tf.predict import Face, Recognizer  # noqa: E402
from ean_tf.schedules import LearningRate  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "EAN",
    "AdjacencyWarmup",
    "Config",
    "Face",
    "GCNConv",
    "GCNHead",
    "LearningRate",
    "Recognizer",
    "build_model",
    "make_config",
    "pretrained",
]
