"""Makes a shipped model from a finished run and measures it: its compact form
(`ean_tf.pretrained.save_compact`: float16 weights, no optimizer, the model
turning photos grey when its data is), the accuracy of both forms on the
validation split (overall, per class, served graph), size, SHA-256 and latency
at batch 1.

    python bench/ship_model.py --run_dir=R --data_dir=PATH/ferplus \\
        --out=ean_tf/pretrained/ferplus48.keras --name=ferplus48

Writes `<out>` and `bench/results/shipped/<name>.json`; the SHA-256 it prints
goes into `ean_tf/pretrained/__init__.py`'s `MODELS`.
"""

from __future__ import annotations

import os
import time

import common
import numpy as np
from absl import app, flags

common.define_run_flags("ferplus48")
flags.DEFINE_string("out", "", "Where the compact .keras file goes.")
flags.DEFINE_integer("latency_runs", 50, "Timed single-image calls.")
FLAGS = flags.FLAGS


def _accuracy(model, splits, batch_size: int) -> dict:
    from ean_tf.evaluate import classification_metrics, predict

    graph = model.inference_graph
    probs = predict(model, splits.val, model.image_size, batch_size, graph)
    labels = splits.val.labels
    metrics = classification_metrics(labels, probs.argmax(1), splits.class_names)
    return {
        "graph": graph,
        "accuracy": metrics["accuracy"],
        "mean_class_accuracy": metrics["mean_class_accuracy"],
        "per_class_recall": metrics["per_class_recall"],
        "per_class_support": metrics["per_class_support"],
        "probabilities": probs,
    }


def _latency(model, runs: int) -> dict:
    """Milliseconds of one aligned face through the served graph (tf.function)."""
    import tensorflow as tf

    call = tf.function(lambda x: tf.nn.softmax(model(x)))
    face = tf.constant(
        np.random.default_rng(0).uniform(
            0, 255, (1, model.image_size, model.image_size, 3)
        ),
        tf.float32,
    )
    for _ in range(5):
        call(face).numpy()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call(face).numpy()
        times.append(1000 * (time.perf_counter() - t0))
    return {
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
    }


def main(argv):
    del argv
    from ean_tf import pretrained
    from ean_tf.runs import load_model

    config, trained, splits = common.load_run(FLAGS.run_dir, FLAGS.data_dir)
    out = FLAGS.out or os.path.join(pretrained.HERE, f"{FLAGS.name}.keras")
    pretrained.save_compact(trained, out, grayscale=config.data.dataset == "ferplus")
    shipped = load_model(out)
    batch = config.train.batch_size
    before, after = _accuracy(trained, splits, batch), _accuracy(shipped, splits, batch)
    changed = int(
        np.sum(before["probabilities"].argmax(1) != after["probabilities"].argmax(1))
    )
    for r in (before, after):
        del r["probabilities"]
    result = {
        "run_dir": FLAGS.run_dir,
        "file": os.path.relpath(out, common.ROOT),
        "bytes": os.path.getsize(out),
        "trained_model_bytes": os.path.getsize(
            os.path.join(FLAGS.run_dir, "model.keras")
        ),
        "sha256": pretrained.sha256(out),
        "memory_images": shipped.memory_size,
        "validation_images": len(splits.val),
        "trained": before,
        "shipped": after,
        "answers_changed": changed,
        "latency_batch1": _latency(shipped, FLAGS.latency_runs),
    }
    common.write_result(FLAGS.name, result, os.path.join(FLAGS.out_dir, "shipped"))
    print(
        f"{out}: {result['bytes'] / 1e6:.1f} MB, sha256 {result['sha256']}\n"
        f"accuracy trained {before['accuracy']:.4f}, shipped {after['accuracy']:.4f} "
        f"({changed} of {len(splits.val)} answers changed); "
        f"{result['latency_batch1']['median_ms']:.1f} ms a face at batch 1"
    )


if __name__ == "__main__":
    app.run(main)
