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
and per class (by the label trained on) the share of clean labels left out;
under `own_prediction_alone`, the same for a filter without the graph (an image
left out when its own isolated prediction names another class), which tells
what the neighbours add; under `by_confidence`, the same for the filter with
each `--neighbour_label_filter_confidence` of `--confidences`; under `by_share`,
for the filter (at the run's confidence) with each
`--neighbour_label_filter_share` of `--shares`, bounded in each batch as in
training.
"""

from __future__ import annotations

import common
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("shuffle_seed", 0, "The training split's order.")
flags.DEFINE_list(
    "confidences",
    ["0", "0.5", "0.7", "0.8", "0.9"],
    "The --neighbour_label_filter_confidence values to report as well.",
)
flags.DEFINE_list(
    "shares",
    ["1", "0.3", "0.2", "0.1"],
    "The --neighbour_label_filter_share values to report as well.",
)
common.define_run_flags("label_filter")


def filter_inputs(model, examples, image_size: int, batch_size: int, seed: int):
    """The filter's inputs in the split's own order: each image's own isolated
    prediction (N, C), its similar batch neighbours' mean prediction (N, C) and
    their number (N, 1); and the shuffled order the batches took (N,)."""
    from ean_tf.data.pipeline import make_dataset

    order = examples.shuffle_order(seed)
    shuffled = examples.select(order)
    model.graph_enabled.assign(1.0)
    parts = []
    for images, _ in make_dataset(shuffled, image_size, batch_size, training=False):
        pooled, embeddings, _ = model.features(images, training=True)
        _, cs = model.batch_graph(embeddings)
        b = pooled.shape[0]
        parts.append([t.numpy() for t in model._neighbour_probs(cs, pooled, 0, b)])
    results = []
    for whole in map(np.concatenate, zip(*parts, strict=True)):
        placed = np.empty_like(whole)
        placed[order] = whole
        results.append(placed)
    return (*results, order)


def shares(left_out, flipped, labels, class_names) -> dict:
    """What a filter that leaves out `left_out` (N,) bool leaves out."""
    per_class = {}
    for c, name in enumerate(class_names):
        rows = (labels == c) & ~flipped
        per_class[name] = round(float(left_out[rows].mean()), 4) if rows.any() else 0
    return {
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


def main(argv):
    del argv
    config, model, splits = common.load_run(FLAGS.run_dir, FLAGS.data_dir)
    train = splits.train
    own, mean, degree, order = filter_inputs(
        model,
        train,
        config.data.image_size,
        config.train.batch_size,
        FLAGS.shuffle_seed,
    )
    clean = train.labels if train.clean_labels is None else train.clean_labels
    flipped = train.labels != clean
    names, labels = train.class_names, train.labels.astype(np.int64)

    def shares_at(confidence=None, share=None):
        """What the run's filter (`ean_step`'s) leaves out at `confidence` and
        `share`, batch by batch in the order of the pass."""
        keep = np.empty(len(labels), np.float32)
        size = config.train.batch_size
        for batch in np.split(order, range(size, len(order), size)):
            keep[batch] = model._undisputed(
                labels[batch], own[batch], mean[batch], degree[batch], confidence, share
            ).numpy()
        return shares(keep == 0, flipped, labels, names)

    result = {
        "run_dir": FLAGS.run_dir,
        "images": len(train),
        "flipped": int(flipped.sum()),
        "confidence": model.neighbour_label_filter_confidence,
        "share": model.neighbour_label_filter_share,
        **shares_at(),
        "own_prediction_alone": shares(
            own.argmax(-1) != labels, flipped, labels, names
        ),
        "by_confidence": {c: shares_at(float(c)) for c in FLAGS.confidences},
        "by_share": {s: shares_at(share=float(s)) for s in FLAGS.shares},
    }
    print(result, flush=True)
    common.write_result(FLAGS.name, result, FLAGS.out_dir)


if __name__ == "__main__":
    app.run(main)
