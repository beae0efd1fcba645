"""The nearest graph of a trained run, for several numbers of neighbours and label
weights.

    python bench/nearest.py --run_dir=runs/bench/clean/ean --ks=1,4,16 \
        --label_weights=0,0.25

Loads `<run_dir>/model.keras` (its nearest graph's store as training filled it)
and the run's data, and evaluates on the validation split the nearest graph with
each k of `--ks` and each label weight of `--label_weights`
(`--nearest_label_weight`: row `nearest_k<k>` for w = 0, `nearest_k<k>_labels<w>`
otherwise), beside the network alone (`isolated`). The run's own k and label
weight repeat its own evaluation. Writes `<out_dir>/<name>.json` with accuracy
and mean class accuracy per row, and the share of validation images with 0 to k
edges.
"""

from __future__ import annotations

import os

import common
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("ks", ["1", "2", "4", "8", "16"], "Numbers of neighbours.")
flags.DEFINE_list(
    "label_weights", ["0"], "Weights of the neighbours' training labels (w)."
)
common.define_run_flags("nearest")


def top_cosines(model, examples, image_size: int, batch_size: int, k: int):
    """(N, k): each validation image's cosines to its k most similar stored
    training images, most similar first (one pass for every smaller k too)."""
    from ean_tf.data.pipeline import make_dataset

    out = []
    for images, _ in make_dataset(examples, image_size, batch_size, training=False):
        _, raw, _ = model.encode(images, training=False)
        out.append(model.memory.neighbours(raw, k)[0].numpy())
    return np.concatenate(out)


def main(argv):
    del argv
    from ean_tf import evaluate

    config, model, splits = common.load_run(FLAGS.run_dir, FLAGS.data_dir)
    if model.memory is None:
        raise app.UsageError(f"{FLAGS.run_dir}: its model stores no training images")
    size, batch = config.data.image_size, config.train.batch_size

    def accuracy(graph: str, out: str) -> dict:
        report = evaluate.evaluate_model(
            model, splits.val, size, batch, out, graphs=(graph,)
        )
        r = report["graphs"][graph]
        return {
            "accuracy": r["accuracy"],
            "mean_class_accuracy": r["mean_class_accuracy"],
        }

    out = os.path.join(FLAGS.run_dir, "nearest")
    rows = {"isolated": accuracy("isolated", os.path.join(out, "isolated"))}
    print(rows, flush=True)
    ks = sorted(int(k) for k in FLAGS.ks)
    cosines = top_cosines(model, splits.val, size, batch, ks[-1])
    for k in ks:
        # How many validation images have 0, 1, ..., k edges.
        edges = np.sum(cosines[:, :k] >= model.tau1, axis=1)
        for w in FLAGS.label_weights:
            sub = f"k{k}" if float(w) == 0 else f"k{k}_labels{w}"
            model.nearest_k = k
            model.set_nearest_label_weight(float(w))  # drops the traced functions
            row = accuracy("nearest", os.path.join(out, sub))
            row["edges"] = np.bincount(edges, minlength=k + 1).tolist()
            name = f"nearest_{sub}"
            rows[name] = row
            print(name, row, flush=True)
    common.write_result(
        FLAGS.name,
        {
            "run_dir": FLAGS.run_dir,
            "memory_images": int(model.memory.valid.numpy().sum()),
            "graphs": rows,
        },
        FLAGS.out_dir,
    )


if __name__ == "__main__":
    app.run(main)
