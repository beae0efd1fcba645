"""Training speed: EAN against the linear baseline, and the graph head's share.

    python bench/speed.py                       # 48 and 112 px, batch 64 and 128
    python bench/speed.py --sizes=32 --batches=8 --steps=2 --width=8   # smoke

For each (size, batch): training images/s of EAN (graph on, batch graph) and of
the linear head on the same backbone (the median of `--repeats` alternating
measurements: the CPU's speed drifts between runs), and the time of the
adjacency + GCN head alone (forward and backward on the pooled features) as a
share of EAN's step.
"""

from __future__ import annotations

import time

import common  # noqa: F401  (sets the path and log level)
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["48", "112"], "Image sizes.")
flags.DEFINE_list("batches", ["64", "128"], "Batch sizes.")
flags.DEFINE_integer("steps", 8, "Timed steps per measurement.")
flags.DEFINE_integer("repeats", 3, "Alternating EAN/linear measurements; median.")
flags.DEFINE_integer("width", 64, "Backbone width (64 = ResNet-18).")
flags.DEFINE_string("stem", "small_s2", "Backbone stem.")
flags.DEFINE_string("out_dir", common.RESULTS_DIR, "Where the JSON goes.")
flags.DEFINE_string("name", "speed", "Result file name.")


def _fit_speed(model, size, batch, steps):
    import keras
    import numpy as np
    import tensorflow as tf

    if getattr(model, "optimizer", None) is None:
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3))
    y = np.eye(model.num_classes)[np.arange(batch) % model.num_classes]
    ds = tf.data.Dataset.from_tensors((x.astype("float32"), y.astype("float32")))
    ds = ds.repeat()
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return batch * steps / (time.perf_counter() - start)


def _head_time(model, batch, steps):
    """Seconds per step of embedding + adjacency + GCN (+ Adj_loss), fwd + bwd."""
    import numpy as np
    import tensorflow as tf

    from ean_tf.models import adjacency as adj

    pooled = tf.constant(
        np.random.default_rng(0)
        .normal(size=(batch, model.feature_dim))
        .astype("float32")
    )
    labels = tf.constant(np.arange(batch) % model.num_classes)
    variables = (
        model.embedding.trainable_variables
        + model.head.trainable_variables
        + (
            model.embedding_bn.trainable_variables
            if model.embedding_bn is not None
            else []
        )
    )

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(pooled)
            emb = model.embedding(pooled)
            if model.embedding_bn is not None:
                emb = model.embedding_bn(emb, training=True)
            a, cs = model.batch_graph(emb)
            logits = model.head([pooled, adj.normalized_adjacency(a)], training=True)
            soft = adj.relaxed_adjacency(cs, model.tau1, similar_only=True)
            loss = tf.reduce_mean(logits) + adj.adj_loss(soft, labels, "mean")
        return tape.gradient(loss, variables + [pooled])

    step()
    start = time.perf_counter()
    for _ in range(steps * 5):
        step()
    return (time.perf_counter() - start) / (steps * 5)


def main(argv):
    del argv
    import numpy as np

    from ean_tf.models.ean import EAN

    rows = []
    for size in map(int, FLAGS.sizes):
        for batch in map(int, FLAGS.batches):
            ean = EAN(8, image_size=size, width=FLAGS.width, stem=FLAGS.stem)
            ean.graph_enabled.assign(1.0)
            linear = EAN(
                8, image_size=size, width=FLAGS.width, stem=FLAGS.stem, head="linear"
            )
            ean_runs, linear_runs = [], []
            for _ in range(FLAGS.repeats):
                ean_runs.append(_fit_speed(ean, size, batch, FLAGS.steps))
                linear_runs.append(_fit_speed(linear, size, batch, FLAGS.steps))
            ean_speed = float(np.median(ean_runs))
            head = _head_time(ean, batch, FLAGS.steps)
            row = {
                "image_size": size,
                "batch": batch,
                "ean_images_per_s": round(ean_speed, 1),
                "linear_images_per_s": round(float(np.median(linear_runs)), 1),
                "ean_runs": [round(v, 1) for v in ean_runs],
                "linear_runs": [round(v, 1) for v in linear_runs],
                "graph_head_ms": round(head * 1000, 2),
                "graph_head_share": round(head / (batch / ean_speed), 4),
            }
            print(row, flush=True)
            rows.append(row)
    common.write_result(
        FLAGS.name,
        {
            "width": FLAGS.width,
            "stem": FLAGS.stem,
            "steps": FLAGS.steps,
            "repeats": FLAGS.repeats,
            "rows": rows,
        },
        FLAGS.out_dir,
    )


if __name__ == "__main__":
    app.run(main)
