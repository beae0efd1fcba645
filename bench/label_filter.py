"""Which training labels a trained run's graph disputes (`--neighbour_label_filter`).

    python bench/label_filter.py --run_dir=runs/bench/noise/ean_noise20

Loads `<run_dir>/model.keras` and the run's data, then walks the training split
(its labels as trained, so noisy in a noise run) once, in training-sized batches
of a fixed shuffled order, without augmentation, and asks the filter of each
batch which images it would leave out: those whose own isolated prediction and
whose similar batch neighbours' mean prediction both name another class than
their label. The batch graph is built as training builds it (batch statistics,
the graph on). Works on any EAN run, with the filter or not. Writes
`<out_dir>/<name>.json` with the share of images left out, among the flipped
labels and the clean ones, the share of flipped labels among those left out,
and per class (by the label trained on) the share of clean labels left out.
"""

from __future__ import annotations

import common
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("shuffle_seed", 0, "The training split's order.")
common.define_run_flags("label_filter")


def disputed(model, examples, image_size: int, batch_size: int, seed: int):
    """(N,) bool in the split's own order: the images the filter leaves out."""
    import tensorflow as tf

    from ean_tf.data.pipeline import make_dataset

    order = examples.shuffle_order(seed)
    shuffled = examples.select(order)
    model.graph_enabled.assign(1.0)
    out = []
    data = make_dataset(shuffled, image_size, batch_size, training=False)
    for images, targets in data:
        labels = tf.argmax(targets, axis=-1)
        pooled, embeddings, _ = model.features(images, training=True)
        _, cs = model.batch_graph(embeddings)
        b = tf.shape(pooled)[0]
        own, mean, degree = model._neighbour_probs(cs, pooled, 0, b)
        out.append(model._undisputed(labels, own, mean, degree).numpy() == 0)
    result = np.empty(len(examples), bool)
    result[order] = np.concatenate(out)
    return result


def main(argv):
    del argv
    config, model, splits = common.load_run(FLAGS.run_dir, FLAGS.data_dir)
    train = splits.train
    left_out = disputed(
        model,
        train,
        config.data.image_size,
        config.train.batch_size,
        FLAGS.shuffle_seed,
    )
    clean = train.labels if train.clean_labels is None else train.clean_labels
    flipped = train.labels != clean
    per_class = {}
    for c, name in enumerate(train.class_names):
        rows = (train.labels == c) & ~flipped
        per_class[name] = round(float(left_out[rows].mean()), 4) if rows.any() else 0
    result = {
        "run_dir": FLAGS.run_dir,
        "images": len(train),
        "flipped": int(flipped.sum()),
        "left_out": round(float(left_out.mean()), 4),
        "left_out_of_flipped": round(float(left_out[flipped].mean()), 4)
        if flipped.any()
        else None,
        "left_out_of_clean": round(float(left_out[~flipped].mean()), 4),
        "flipped_among_left_out": round(float(flipped[left_out].mean()), 4)
        if left_out.any()
        else None,
        "left_out_of_clean_per_class": per_class,
    }
    print(result, flush=True)
    common.write_result(FLAGS.name, result, FLAGS.out_dir)


if __name__ == "__main__":
    app.run(main)
