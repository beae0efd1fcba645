"""SavedModel export for TensorFlow Serving.

`export_model(model, base_dir)` writes `base_dir/<version>/` (the next free integer
unless given): first into a hidden temporary folder that TF Serving ignores, then
renamed, so a server watching `base_dir` never loads half a model; an export that
finds its version taken by another one meanwhile takes the next. Every file and
folder gets the modes of files made normally (0644 and 0755 under umask 022), so a
server running as another user reads them. Next to the SavedModel:
`assets.extra/tf_serving_warmup_requests` (real PredictionLog records), and in
`base_dir`, a `models.config` example and, unless the model serves its batch
graph, `batching_parameters.txt`.

Signatures (see README "Serving"):
  serving_default      image_bytes: string [None] (REST: {"b64": ...}) -> probabilities
                       [None, C], class_index [None], class_name [None]; the
                       model's served graph (`nearest` unless set otherwise).
  predict_images       images: float32 [None, H, W, 3] RGB 0..255 -> same; same graph.
  predict_batch_graph  the same input, the request's images as ONE graph (the
                       paper's test protocol): an answer depends on the request.
  predict_isolated     the same input, A = I (no graph; the warm-up network).
  embed                images -> features [None, Fd] (pooled) and embeddings [None, E].

In the nearest graph each image is joined only to training images stored in the
model, so TF Serving's batching (which merges clients' requests and pads a batch
by repeating rows) never changes one client's answer.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from ean_tf.data.base import DEFAULT_MAX_IMAGE_PIXELS
from ean_tf.data.decode import header_pixels
from ean_tf.data.pipeline import decode_image, resize_image
from ean_tf.files import atomic_open, make_readable

DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
WARMUP_FILE = "tf_serving_warmup_requests"
MODEL_NAME = "ean"

BATCHING_PARAMETERS = """\
# TF Serving server-side batching (--enable_batching
# --batching_parameters_file=batching_parameters.txt). Safe only for a version
# whose default signature serves the nearest or isolated graph, where each image's
# answer is independent of its batch; never for one serving the batch graph.
max_batch_size { value: 64 }
batch_timeout_micros { value: 5000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 4 }
pad_variable_length_inputs: false
"""

MODELS_CONFIG = """\
# TF Serving model config (--model_config_file=models.config).
model_config_list {{
  config {{
    name: "{name}"
    base_path: "/models/{name}"
    model_platform: "tensorflow"
    model_version_policy {{ latest {{ num_versions: 1 }} }}
  }}
}}
"""

_IMAGES = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
_MAGIC = [b"\x89PNG", b"\xff\xd8\xff", b"BM", b"GIF8"]


class ServingModule(tf.Module):
    """The exported functions; holds the Keras model and its class names."""

    def __init__(
        self,
        model,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        super().__init__(name="ean_serving")
        self.model = model
        self.image_size = int(model.image_size)
        self.max_image_bytes = int(max_image_bytes)
        self.max_image_pixels = int(max_image_pixels)
        # Variables, so that they travel in the SavedModel for clients to read.
        self.class_names = tf.Variable(list(model.class_names), trainable=False)
        self.input_size = tf.Variable(self.image_size, trainable=False)
        # The graph serving_default and predict_images answer in, and the nearest
        # graph's label weight (0 in any other).
        self.graph, weight = model.answers_with()
        self.served_graph = tf.Variable(self.graph, trainable=False)
        self.nearest_label_weight = tf.Variable(float(weight), trainable=False)

    def _decode_rows(self, image_bytes):
        """Request images -> (images (N, S, S, 3) float32 0..255, problem (N,)).

        Each row is checked and decoded on its own: a bad row gets a zero image
        and a non-empty `problem`, and never fails the other rows (TF Serving's
        batching merges several clients' requests into one). The width and height
        are read from the header before anything is decoded, so an image of too
        many pixels costs no decoding.
        """
        length = tf.strings.length(image_bytes)
        known = tf.reduce_any(
            [tf.equal(tf.strings.substr(image_bytes, 0, len(m)), m) for m in _MAGIC],
            axis=0,
        )
        sized, pixels = _map_rows(header_pixels, image_bytes, [], tf.int64)
        problem = _first_problem(
            [
                (length == 0, "empty string, expected an image"),
                (
                    length > self.max_image_bytes,
                    f"larger than the limit set at export, {self.max_image_bytes} "
                    "bytes",
                ),
                (~known, "not a JPEG, PNG, BMP or GIF image (bytes do not decode)"),
                (~sized, "corrupt image header (bytes do not decode)"),
                (
                    pixels > self.max_image_pixels,
                    f"more pixels than the limit set at export, "
                    f"{self.max_image_pixels}",
                ),
            ]
        )
        size = self.image_size

        def decode(row):
            contents, wanted = row
            return tf.cond(
                wanted,
                lambda: resize_image(decode_image(contents), size),
                lambda: tf.zeros([size, size, 3]),
            )

        decoded, images = _map_rows(
            decode, (image_bytes, tf.equal(problem, "")), [size, size, 3], tf.float32
        )
        problem = tf.where(
            tf.equal(problem, "") & ~decoded,
            "corrupt image (bytes do not decode)",
            problem,
        )
        return images, problem

    def _outputs(self, logits, problem=None):
        probabilities = tf.nn.softmax(logits, axis=-1)
        index = tf.argmax(probabilities, axis=-1)
        name = tf.gather(self.class_names, index)
        if problem is None:
            return {
                "probabilities": probabilities,
                "class_index": index,
                "class_name": name,
            }
        valid = tf.equal(problem, "")
        return {
            "probabilities": probabilities * tf.cast(valid, tf.float32)[:, None],
            "class_index": tf.where(valid, index, -1),
            "class_name": tf.where(valid, name, ""),
            "valid": valid,
            "problem": problem,
        }

    def _prepare(self, images):
        return resize_image(images, self.image_size)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes):
        images, problem = self._decode_rows(image_bytes)
        return self._outputs(self.model(images, graph=self.graph), problem)

    @tf.function(input_signature=[_IMAGES])
    def predict_images(self, images):
        return self._outputs(self.model(self._prepare(images), graph=self.graph))

    @tf.function(input_signature=[_IMAGES])
    def predict_isolated(self, images):
        return self._outputs(self.model(self._prepare(images), graph="isolated"))

    @tf.function(input_signature=[_IMAGES])
    def predict_batch_graph(self, images):
        return self._outputs(self.model(self._prepare(images), graph="batch"))

    @tf.function(input_signature=[_IMAGES])
    def embed(self, images):
        features, embeddings, _ = self.model.features(self._prepare(images))
        return {"features": features, "embeddings": embeddings}


def _map_rows(fn, rows, shape, dtype):
    """`fn` on each row of `rows` (a tensor or a tuple of tensors), where a row
    whose `fn` raises (a corrupt image) yields zeros instead of failing the
    others. Returns (ok (N,) bool, outputs (N, *shape))."""
    n = tf.shape(tf.nest.flatten(rows)[0])[0]
    ds = tf.data.Dataset.from_tensor_slices((tf.range(n), rows))
    ds = ds.map(lambda i, row: (i, fn(row))).ignore_errors()
    # One sentinel row, so that the batch below exists when every row failed.
    end = tf.data.Dataset.from_tensors((tf.constant(-1), tf.zeros(shape, dtype)))
    index, out = ds.concatenate(end).batch(1 << 30).get_single_element()
    keep = index >= 0
    index, out = tf.boolean_mask(index, keep)[:, None], tf.boolean_mask(out, keep)
    ok = tf.scatter_nd(index, tf.ones_like(index[:, 0]), [n]) > 0
    full = tf.concat([[n], tf.constant(shape, tf.int32)], axis=0)
    return ok, tf.scatter_nd(index, out, full)


def _first_problem(rules) -> tf.Tensor:
    """(N,) strings: the message of the first rule whose condition holds per row,
    "" where none does."""
    problem = tf.fill(tf.shape(rules[0][0]), "")
    for condition, message in reversed(rules):
        problem = tf.where(condition, message, problem)
    return problem


def _running(tmp_name: str) -> bool:
    """Whether the export that made `.tmp-<version>-<pid>-...` is still running."""
    parts = tmp_name.split("-")
    if len(parts) < 4 or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def next_version(base_dir: str) -> int:
    """1 + the largest integer folder name in `base_dir` (1 when none)."""
    if not os.path.isdir(base_dir):
        return 1
    versions = [int(d) for d in os.listdir(base_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def warmup_records(image_size: int, count: int = 4) -> list[bytes]:
    """Serialized PredictionLog records for `serving_default` (grey PNG faces)."""
    import cv2
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        image = rng.integers(90, 170, (image_size, image_size, 3), np.uint8)
        ok, png = cv2.imencode(".png", image)
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(
                name=MODEL_NAME, signature_name="serving_default"
            )
        )
        request.inputs["image_bytes"].CopyFrom(
            tf.make_tensor_proto([png.tobytes()] * (i + 1), dtype=tf.string)
        )
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        records.append(log.SerializeToString())
    return records


def _taken(version: int, final: str) -> FileExistsError:
    return FileExistsError(
        f"--export_version={version}: {final} already exists; omit the flag to "
        "take the next free version"
    )


def export_model(
    model,
    base_dir: str,
    version: int = 0,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> str:
    """Writes the SavedModel to `base_dir/<version>/`; returns that path.

    Temporary folders left by an export that was killed are removed first (not
    those of an export still running: each names its process). Without `version`,
    an export whose version another export took meanwhile takes the next one;
    with it, it stops.
    """
    os.makedirs(base_dir, exist_ok=True)
    for name in os.listdir(base_dir):
        if name.startswith(".tmp-") and not _running(name):
            shutil.rmtree(os.path.join(base_dir, name), ignore_errors=True)
    chosen = version or next_version(base_dir)
    final = os.path.join(base_dir, str(chosen))
    if os.path.exists(final):
        raise _taken(chosen, final)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{chosen}-{os.getpid()}-", dir=base_dir)
    try:
        module = ServingModule(model, max_image_bytes, max_image_pixels)
        signatures = {
            "serving_default": module.serve_bytes,
            "predict_images": module.predict_images,
            "predict_batch_graph": module.predict_batch_graph,
            "predict_isolated": module.predict_isolated,
            "embed": module.embed,
        }
        tf.saved_model.save(module, tmp, signatures=signatures)
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
            for record in warmup_records(module.image_size):
                writer.write(record)
        make_readable(tmp)  # mkdtemp made it 0700
        while True:
            # Atomic: the version appears complete or not at all. A rename onto
            # an empty folder replaces it, hence the check first.
            try:
                if os.path.exists(final):
                    raise FileExistsError(errno.EEXIST, "taken", final)
                os.rename(tmp, final)
                break
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                if version:  # another export took the version asked for
                    raise _taken(chosen, final) from None
                chosen = next_version(base_dir)
                final = os.path.join(base_dir, str(chosen))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    side_files = {"models.config": MODELS_CONFIG.format(name=MODEL_NAME)}
    if module.graph != "batch":  # its answers depend on the batch
        side_files["batching_parameters.txt"] = BATCHING_PARAMETERS
    for name, text in side_files.items():
        path = os.path.join(base_dir, name)
        if not os.path.exists(path):
            with atomic_open(path) as f:
                f.write(text)
    return final
