"""What a noisy run's graph connects: do wrong-labelled training images sit among
images of their clean class, and do the served graph's neighbours carry the truth?

    python bench/noise_graph.py --run_dir=runs/bench/memorisation/ean_noise40 \
        --models=best,model --out_dir=bench/results/memorisation/seed0 \
        --name=ean_noise40_graph

For each model of the run (`best.keras`, the best epoch; `model.keras`, the last),
on the run's training split with the labels it trained on (the run's noise, drawn
again from its configuration: each image's clean and given label):

- `flipped_neighbours`: over the flipped images, the share of their k most similar
  other training images (cosine of the graph embeddings, normalised with the
  training split's statistics as the served graph's store is) whose given label is
  the flipped image's clean label, and whose given label is its wrong one; the
  same for the images that kept their label (`kept_neighbours`);
- `training_edges`: in random batches of the training batch size, the similar
  edges (C_s >= tau1): the share joining two images of the same clean class,
  of the same given label, and the share of all pairs of the same clean class
  (what random edges would give);
- `served_neighbours`: for the validation images, their k nearest stored training
  images with C_s >= tau1 (the served graph's edges): the share that are flipped,
  the share whose stored (isolated) prediction is the validation image's true
  class, beside the validation image's own isolated accuracy.

k is the model's `nearest_k`. The JSON has one entry per model.
"""

from __future__ import annotations

import os

import common
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The script's flags, defined when it runs (so that its functions import
    beside other absl programs)."""
    flags.DEFINE_list("models", ["best", "model"], "Models of the run, by file stem.")
    common.define_run_flags("noise_graph")


def embed(model, examples, image_size: int, batch_size: int):
    """(raw embeddings (N, E), isolated logits (N, C)) of `examples`, in order."""
    from ean_tf.data.pipeline import make_dataset

    raws, logits = [], []
    for images, _ in make_dataset(examples, image_size, batch_size, training=False):
        pooled, raw, _ = model.encode(images)
        raws.append(raw.numpy())
        logits.append(model.classify(pooled, raw, "isolated").numpy())
    return np.concatenate(raws), np.concatenate(logits)


def unit_embeddings(model, raw, stats_from):
    """Graph embeddings of `raw`, normalised with the statistics of `stats_from`
    (as the served graph's store is), each row of norm 1."""
    bn = model.embedding_bn
    e = raw
    if bn is not None:
        mean, var = stats_from.mean(0), stats_from.var(0)
        scale = np.asarray(bn.gamma) / np.sqrt(var + bn.epsilon)
        e = raw * scale + (np.asarray(bn.beta) - mean * scale)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def neighbour_shares(cos, own, k, clean, given, wrong):
    """For the rows `own` of the (N, N) cosine matrix: the share of each one's k
    most similar other images whose given label is its clean one, and its wrong
    one (`wrong` -1 where it has none)."""
    c = cos[own].copy()
    c[np.arange(len(own)), own] = -np.inf  # not itself
    idx = np.argpartition(-c, k, axis=1)[:, :k]
    labels = given[idx]
    out = {"images": int(len(own)), "k": int(k)}
    out["given_is_clean_class"] = round(float(np.mean(labels == clean[own, None])), 4)
    if (wrong[own] >= 0).any():
        out["given_is_wrong_label"] = round(
            float(np.mean(labels == wrong[own, None])), 4
        )
    out["clean_is_clean_class"] = round(
        float(np.mean(clean[idx] == clean[own, None])), 4
    )
    return out


def analyse(model, config, splits, clean, given) -> dict:
    size, batch = config.data.image_size, config.train.batch_size
    k = int(model.nearest_k)
    raw_t, logits_t = embed(model, splits.train, size, batch)
    e_t = unit_embeddings(model, raw_t, raw_t)
    cos = e_t @ e_t.T
    flipped = np.flatnonzero(clean != given)
    kept = np.flatnonzero(clean == given)
    wrong = np.where(clean != given, given, -1)
    out = {
        "flipped_neighbours": neighbour_shares(cos, flipped, k, clean, given, wrong),
        "kept_neighbours": neighbour_shares(cos, kept, k, clean, given, wrong),
    }
    # training batches as training drew them: random, of the batch size
    rng = np.random.default_rng(0)
    order = rng.permutation(len(clean))
    edges = same_clean = same_given = pairs = pairs_same = 0
    for start in range(0, len(order) - batch + 1, batch):
        b = order[start : start + batch]
        rb = raw_t[b]
        eb = unit_embeddings(model, rb, rb)  # the batch's own statistics
        off = ~np.eye(len(b), dtype=bool)
        sim = (eb @ eb.T >= model.tau1) & off
        sc = (clean[b, None] == clean[None, b]) & off
        edges += int(sim.sum())
        same_clean += int((sim & sc).sum())
        same_given += int((sim & (given[b, None] == given[None, b]) & off).sum())
        pairs += int(off.sum())
        pairs_same += int(sc.sum())
    out["training_edges"] = {
        "edges_per_node": round(edges / len(order), 3),
        "same_clean_class": round(same_clean / max(edges, 1), 4),
        "same_given_label": round(same_given / max(edges, 1), 4),
        "chance_same_clean_class": round(pairs_same / pairs, 4),
    }
    raw_v, logits_v = embed(model, splits.val, size, batch)
    e_v = unit_embeddings(model, raw_v, raw_t)
    cv = e_v @ e_t.T
    idx = np.argpartition(-cv, k, axis=1)[:, :k]
    linked = np.take_along_axis(cv, idx, 1) >= model.tau1
    truth = np.asarray(splits.val.labels)
    stored_pred = logits_t.argmax(1)
    n_edges = max(int(linked.sum()), 1)
    out["served_neighbours"] = {
        "k": k,
        "edges_per_image": round(float(linked.sum(1).mean()), 3),
        "flipped": round(float((linked & (clean != given)[idx]).sum() / n_edges), 4),
        "predicts_true_class": round(
            float((linked & (stored_pred[idx] == truth[:, None])).sum() / n_edges), 4
        ),
        "given_is_true_class": round(
            float((linked & (given[idx] == truth[:, None])).sum() / n_edges), 4
        ),
        "isolated_accuracy": round(float(np.mean(logits_v.argmax(1) == truth)), 4),
    }
    return out


def main(argv):
    del argv
    from ean_tf.runs import load_model

    config, _, splits = common.load_run(FLAGS.run_dir, FLAGS.data_dir)
    if splits.train.clean_labels is None:
        raise app.UsageError(f"--run_dir={FLAGS.run_dir}: not a run with label noise")
    clean = np.asarray(splits.train.clean_labels)
    given = np.asarray(splits.train.labels)
    result = {"run_dir": FLAGS.run_dir, "models": {}}
    for stem in FLAGS.models:
        model = load_model(os.path.join(FLAGS.run_dir, f"{stem}.keras"))
        if getattr(model, "head_type", "") != "ean":
            raise app.UsageError(f"--run_dir={FLAGS.run_dir}: not an EAN run")
        result["models"][stem] = analyse(model, config, splits, clean, given)
        print(stem, result["models"][stem])
    common.write_result(FLAGS.name, result, FLAGS.out_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
