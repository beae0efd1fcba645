"""Latency and throughput of the exported SavedModel: served graph vs isolated.

    python bench/serving.py                    # the default preset's network
    python bench/serving.py --config=ferplus48 # the full-width ResNet-18 at 48 px

Exports a model of the preset (weights as initialised, the graph switched on, the
nearest graph's store filled with `--memory_images` random entries: speed does
not depend on what they hold), reloads it with `tf.saved_model.load`, and times
`predict_images` (the served graph: `nearest` by default, `--inference_graph` to
time another; `--nearest_label_weight=w`: the nearest graph passes on its
neighbours' labels) and `predict_isolated` (A = I): latency p50/p99 over
`--calls` single-image requests, and images/s at batch 32. Also the
`serving_default` bytes path (PNG decode included) at batch 1.
"""

from __future__ import annotations

import tempfile
import time

import common
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "default", "Preset whose network is exported.")
flags.DEFINE_integer("calls", 200, "Single-image requests timed per signature.")
flags.DEFINE_integer("batches", 20, "Batches of 32 timed per signature.")
flags.DEFINE_string("out_dir", common.RESULTS_DIR, "Where the JSON goes.")
flags.DEFINE_string("name", "", "Result file name (default: serving_<config>).")
flags.DEFINE_enum(
    "inference_graph",
    "",
    ["", "nearest", "batch", "isolated"],
    "The served graph (empty: the preset's).",
)
flags.DEFINE_float(
    "nearest_label_weight",
    -1.0,
    "The nearest graph's label weight (-1: the preset's).",
)
flags.DEFINE_integer(
    "memory_images",
    25045,
    "Training images the nearest graph stores (default: FERPlus's training split).",
)


def _latency(fn, x, calls):
    import numpy as np

    for _ in range(5):
        fn(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return {
        "p50_ms": round(1000 * float(np.percentile(times, 50)), 2),
        "p99_ms": round(1000 * float(np.percentile(times, 99)), 2),
    }


def main(argv):
    del argv
    import cv2
    import numpy as np
    import tensorflow as tf

    from ean_tf import build_model, make_config
    from export.serving import export_model

    overrides = (
        {"inference_graph": FLAGS.inference_graph} if FLAGS.inference_graph else {}
    )
    if FLAGS.nearest_label_weight >= 0:
        overrides["nearest_label_weight"] = FLAGS.nearest_label_weight
    config = make_config(FLAGS.config, **overrides)
    size, classes = config.data.image_size, 7
    model = build_model(config, classes, train_images=FLAGS.memory_images)
    model.graph_enabled.assign(1.0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (1, size, size, 3))
    if model.memory is not None:  # speed does not depend on what it holds
        n, e = FLAGS.memory_images, model.embedding_dim
        labels = np.eye(classes, dtype="float32")[rng.integers(0, classes, n)]
        model.memory.fill(
            rng.normal(size=(n, e)), rng.normal(size=(n, classes)), targets=labels
        )
    with tempfile.TemporaryDirectory() as tmp:
        loaded = tf.saved_model.load(export_model(model, tmp))
        one = tf.constant(x[:1], tf.float32)
        batch = tf.constant(rng.uniform(0, 255, (32, size, size, 3)), tf.float32)
        result = {
            "config": FLAGS.config,
            "image_size": size,
            "served_graph": model.inference_graph,
            "label_weight": float(loaded.nearest_label_weight.numpy()),
            "memory_images": model.memory_size,
            "signatures": {},
        }
        for name in ("predict_images", "predict_isolated"):
            sig = loaded.signatures[name]
            fn = lambda images, sig=sig: sig(images=images)["probabilities"].numpy()
            row = _latency(fn, one, FLAGS.calls)
            fn(batch)
            start = time.perf_counter()
            for _ in range(FLAGS.batches):
                fn(batch)
            row["batch32_images_per_s"] = round(
                32 * FLAGS.batches / (time.perf_counter() - start), 1
            )
            result["signatures"][name] = row
            print(name, row, flush=True)
        png = cv2.imencode(".png", x[0].astype("uint8"))[1].tobytes()
        serve = loaded.signatures["serving_default"]
        row = _latency(
            lambda b: serve(image_bytes=b)["probabilities"].numpy(),
            tf.constant([png]),
            FLAGS.calls,
        )
        result["signatures"]["serving_default"] = row
        print("serving_default", row, flush=True)
    served, iso = (
        result["signatures"][k]["p50_ms"]
        for k in ("predict_images", "predict_isolated")
    )
    result["served_overhead_batch1_p50"] = round(served / iso - 1, 4)
    common.write_result(FLAGS.name or f"serving_{FLAGS.config}", result, FLAGS.out_dir)


if __name__ == "__main__":
    app.run(main)
