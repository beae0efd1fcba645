"""What a query's nearest training images add to the network itself, on a trained run.

    python bench/neighbours.py --run_dir=runs/bench/clean/ean --ks=4,16,64

Embeds every training image (no augmentation) and every validation image with
the trained network. For each validation image it takes its k most similar
training images by cosine, among all of them, in two spaces: the graph's
embedding (EAN runs; batch-normalised with the training split's statistics) and
the pooled feature. It reports, per space and k:

- `precision`: the share of the neighbours whose training label is the query's;
- `vote`: the accuracy of the neighbours' majority training label (k-NN);
- `graph`: the accuracy of the mean of the query's isolated logits and its
  neighbours' (a one-layer GCN on the query joined to its k neighbours, with
  every degree k + 1);

beside `isolated`, the network alone. These neighbours are the best a served
graph of training images can offer a query (the k most similar of all, where the
served context has batch_size - 1 drawn at random). Where neither `vote` nor
`graph` is above `isolated`, the neighbourhood in the network's own space holds
nothing the query's own logits lack. A linear-head run has the pooled space only.
Writes `<out_dir>/<name>.json`.
"""

from __future__ import annotations

import common
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("ks", ["4", "16", "64"], "Numbers of neighbours.")
flags.DEFINE_integer("chunk", 256, "Validation images compared at a time.")
common.define_run_flags("neighbours")


def embed(model, examples, image_size: int, batch_size: int):
    """(pooled (N, Fd), raw embedding (N, E), isolated logits (N, C)), in order."""
    from ean_tf.data.pipeline import make_dataset

    pooled, raw, logits = [], [], []
    for images, _ in make_dataset(examples, image_size, batch_size, training=False):
        p, r, _ = model.encode(images, training=False)
        pooled.append(p.numpy())
        raw.append(r.numpy())
        logits.append(np.asarray(model.classify(p, r, "isolated")))
    return np.concatenate(pooled), np.concatenate(raw), np.concatenate(logits)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest(queries: np.ndarray, keys: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Indices (Q, k) of each query's k most similar keys by cosine, most first."""
    queries, keys = unit(queries), unit(keys)
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ keys.T  # (chunk, N)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def scores(neighbours, train_labels, train_logits, val_labels, val_logits, classes):
    """precision, vote and graph accuracy (see the module) for neighbours (Q, k)."""
    k = neighbours.shape[1]
    labels = train_labels[neighbours]  # (Q, k)
    votes = np.stack([(labels == c).sum(axis=1) for c in range(classes)], axis=1)
    mixed = (val_logits + train_logits[neighbours].sum(axis=1)) / (k + 1)
    return {
        "precision": float((labels == val_labels[:, None]).mean()),
        "vote": float((votes.argmax(axis=1) == val_labels).mean()),
        "graph": float((mixed.argmax(axis=1) == val_labels).mean()),
    }


def main(argv):
    del argv
    config, model, splits = common.load_run(FLAGS.run_dir, FLAGS.data_dir)
    size, batch = config.data.image_size, config.train.batch_size
    train_pooled, train_raw, train_logits = embed(model, splits.train, size, batch)
    val_pooled, val_raw, val_logits = embed(model, splits.val, size, batch)
    train_labels = np.asarray(splits.train.labels)
    val_labels = np.asarray(splits.val.labels)
    spaces = {"pooled": (train_pooled, val_pooled)}
    if model.head_type == "ean" and model.embedding_bn is not None:
        bn = model.embedding_bn
        mean, var = train_raw.mean(axis=0), train_raw.var(axis=0)

        gamma, beta = np.asarray(bn.gamma), np.asarray(bn.beta)

        def norm(raw):
            return (raw - mean) / np.sqrt(var + bn.epsilon) * gamma + beta

        spaces = {"embedding": (norm(train_raw), norm(val_raw)), **spaces}
    elif model.head_type == "ean":
        spaces = {"embedding": (train_raw, val_raw), **spaces}
    ks = sorted(int(k) for k in FLAGS.ks)
    rows = {}
    for space, (keys, queries) in spaces.items():
        top = nearest(queries, keys, ks[-1], FLAGS.chunk)
        rows[space] = {
            str(k): scores(
                top[:, :k],
                train_labels,
                train_logits,
                val_labels,
                val_logits,
                model.num_classes,
            )
            for k in ks
        }
        print(space, rows[space], flush=True)
    isolated = float((val_logits.argmax(axis=1) == val_labels).mean())
    print("isolated", isolated)
    common.write_result(
        FLAGS.name,
        {
            "run_dir": FLAGS.run_dir,
            "head": model.head_type,
            "train_images": len(train_labels),
            "isolated": isolated,
            "neighbours": rows,
        },
        FLAGS.out_dir,
    )


if __name__ == "__main__":
    app.run(main)
