"""The nearest graph's label vote taken over more (or fewer) neighbours than its
edges: for each graph k of `--ks`, label neighbourhood of `--label_ks` and weight
of `--label_weights`, accuracy on the validation split.

    python bench/label_vote.py --run_dir=runs/bench/noise/ean_noise20 \
        --ks=2,4 --label_ks=2,4,8,16,32,64 --label_weights=0.1,0.25,0.4,0.5

The served nearest graph (`--nearest_k=k`, `--nearest_label_weight=w`) is the row
`k<k>_labels<k>_w<w>`: a query's logits are averaged with those of its k most
similar stored training images (cosine >= tau1), and (1 - w) of its
probabilities are mixed with w of the mean stored label of its `label_k` most
similar (cosine >= tau1). Here in NumPy, on the stored neighbours of the run's
own `model.keras`, so that one pass over the validation split serves every row.
Writes `<out_dir>/<name>.json`.
"""

from __future__ import annotations

import common
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("ks", ["2", "4"], "Numbers of neighbours joined by edges.")
flags.DEFINE_list("label_ks", ["2", "4", "8", "16"], "Numbers of neighbours voting.")
flags.DEFINE_list("label_weights", ["0.25"], "Weights of their labels (w).")
common.define_run_flags("label_vote")


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def neighbours(model, examples, image_size: int, batch_size: int, k: int):
    """(isolated logits (N, C), cosines (N, k), indices (N, k), labels (N,))."""
    from ean_tf.data.pipeline import make_dataset

    out = [], [], [], []
    for images, labels in make_dataset(
        examples, image_size, batch_size, training=False
    ):
        pooled, raw, _ = model.encode(images, training=False)
        cosines, index = model.memory.neighbours(raw, k)
        out[0].append(np.asarray(model.classify(pooled, raw, "isolated")))
        out[1].append(np.asarray(cosines))
        out[2].append(np.asarray(index))
        out[3].append(np.asarray(labels))
    logits, cosines, index, labels = map(np.concatenate, out)
    return logits, cosines, index, labels.argmax(-1) if labels.ndim > 1 else labels


def main(argv):
    del argv
    config, model, splits = common.load_run(FLAGS.run_dir, FLAGS.data_dir)
    if model.head_type != "ean" or model.memory is None:
        raise app.UsageError(f"{FLAGS.run_dir}: its model stores no training images")
    ks, label_ks = ([int(k) for k in f] for f in (FLAGS.ks, FLAGS.label_ks))
    weights = [float(w) for w in FLAGS.label_weights]
    alone, cosines, index, labels = neighbours(
        model,
        splits.val,
        config.data.image_size,
        config.train.batch_size,
        max(ks + label_ks),
    )
    stored_logits = model.memory.logits.numpy()
    stored_targets = model.memory.targets.numpy()
    edges = (cosines >= model.tau1).astype(np.float32)
    rows = {}
    for k in ks:
        a = edges[:, :k]
        mixed = alone + np.einsum("qk,qkc->qc", a, stored_logits[index[:, :k]])
        probs = _softmax(mixed / (1.0 + a.sum(1, keepdims=True)))
        rows[f"k{k}"] = float(np.mean(probs.argmax(-1) == labels))
        for label_k in label_ks:
            votes = np.einsum(
                "qk,qkc->qc", edges[:, :label_k], stored_targets[index[:, :label_k]]
            )
            count = votes.sum(1, keepdims=True)
            share = np.divide(votes, count, out=np.zeros_like(votes), where=count > 0)
            for w in weights:
                answer = np.where(count > 0, (1 - w) * probs + w * share, probs)
                name = f"k{k}_labels{label_k}_w{w:g}"
                rows[name] = float(np.mean(answer.argmax(-1) == labels))
    print(rows)
    common.write_result(
        FLAGS.name,
        {"run_dir": FLAGS.run_dir, "tau1": model.tau1, "accuracy": rows},
        FLAGS.out_dir,
    )


if __name__ == "__main__":
    app.run(main)
