"""Evaluation: accuracy, per-class recall, confusion matrix, figures.

`evaluate_model` runs the model over a split in one or more inference graphs and
writes `metrics.json`, `confusion_<graph>.png` for each graph and `confusion.png`
(the first graph's, the served one after training) to `out_dir`. The
`batch` graph depends on which images share a batch: it is evaluated on batches of
`batch_size` in a fixed order shuffled by `shuffle_seed`, both recorded. The
figures are drawn by visualize.py.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf

from ean_tf.data import views
from ean_tf.data.base import Examples
from ean_tf.data.pipeline import make_dataset
from ean_tf.files import write_json
from ean_tf.visualize import plot_confusion


def evaluation_graphs(model) -> tuple[str, ...]:
    """The graphs evaluated after training and by `--inference_graph=all`: the
    model's served one first, then the rest (`nearest` where the model stores
    its training images)."""
    if model.head_type != "ean":
        return ("isolated",)
    from ean_tf.models.ean import INFERENCE_GRAPHS

    served = model.inference_graph
    graphs = [g for g in INFERENCE_GRAPHS if g != served]
    if model.memory is None and "nearest" in graphs:  # it stores no images
        graphs.remove("nearest")
    return (served, *graphs)


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(predictions)), 1)
    return cm


def classification_metrics(labels, predictions, class_names) -> dict:
    """Accuracy, mean per-class accuracy (recall), per-class recall, confusion."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    cm = confusion_matrix(labels, predictions, len(class_names))
    support = cm.sum(axis=1)
    recall = np.divide(
        np.diag(cm), support, out=np.full(len(support), np.nan), where=support > 0
    )
    present = support > 0
    return {
        "num_samples": int(len(labels)),
        "accuracy": float(np.mean(labels == predictions)) if len(labels) else 0.0,
        "mean_class_accuracy": float(np.mean(recall[present]))
        if present.any()
        else 0.0,
        "per_class_recall": {
            n: (None if np.isnan(r) else float(r))
            for n, r in zip(class_names, recall, strict=True)
        },
        "per_class_support": {
            n: int(s) for n, s in zip(class_names, support, strict=True)
        },
        "confusion_matrix": cm.tolist(),
    }


def predict(
    model,
    examples: Examples,
    image_size: int,
    batch_size: int,
    graph: str,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Class probabilities (N, C) in the examples' order."""
    import tensorflow as tf

    subset = examples if order is None else examples.select(order)
    ds = make_dataset(subset, image_size, batch_size, training=False)
    probs = []
    predict_step = tf.function(lambda x: tf.nn.softmax(model(x, graph=graph)))
    for images, _ in ds:
        probs.append(predict_step(images).numpy())
    probs = np.concatenate(probs)
    if order is not None:
        restored = np.empty_like(probs)
        restored[order] = probs
        probs = restored
    return probs


def flipped_label_report(
    model,
    train: Examples,
    noisy_labels_csv: str,
    image_size: int,
    batch_size: int,
    graph: str,
) -> dict:
    """How many flipped training labels the model predicts as their clean class."""
    from ean_tf.data.noise import read_noisy_labels

    paths, clean, noisy = read_noisy_labels(noisy_labels_csv)
    flipped = np.flatnonzero(clean != noisy)
    if len(flipped) == 0:
        return {"flipped": 0}
    subset = Examples(
        [paths[i] for i in flipped],
        clean[flipped],
        train.class_names,
        source=noisy_labels_csv,
    )
    pred = predict(model, subset, image_size, batch_size, graph).argmax(1)
    return {
        "flipped": int(len(flipped)),
        "predicted_clean": int(np.sum(pred == clean[flipped])),
        "predicted_noisy": int(np.sum(pred == noisy[flipped])),
        "predicted_clean_fraction": float(np.mean(pred == clean[flipped])),
        "graph": graph,
    }


def head_activity(
    model, examples: Examples, image_size: int, batch_size: int, max_images: int = 2048
) -> dict | None:
    """How many hidden units of the GCN head ever fire (ReLU > 0), with A = I, on
    the first `max_images` examples. A unit that never fires passes no gradient; a
    head whose hidden units are all dead predicts from its biases alone, one class
    for every image. None for a head without hidden layers."""

    if getattr(model, "head_type", "") != "ean" or len(model.head.convs) < 2:
        return None
    subset = examples.select(np.arange(min(len(examples), max_images)))
    hidden = model.head.convs[:-1]
    fired = [np.zeros(conv.channels, bool) for conv in hidden]
    for images, _ in make_dataset(subset, image_size, batch_size, training=False):
        x, _, _ = model.features(images)
        for i, out in enumerate(model.head.hidden_outputs(x)):  # A = I, no dropout
            fired[i] |= np.asarray(out > 0).any(axis=0)
    return {
        "images": len(subset),
        "layers": [
            {"name": conv.name, "units": int(f.size), "dead": int(np.sum(~f))}
            for conv, f in zip(hidden, fired, strict=True)
        ],
    }


def graph_quality(
    model,
    examples: Examples,
    image_size: int,
    batch_size: int,
    shuffle_seed: int = 0,
    max_images: int = 2048,
) -> dict | None:
    """What the batch graph connects, on batches of `batch_size` in the `batch`
    graph's shuffled order (the first `max_images` of it), by the true labels.

    `similar_precision`: the share of similar edges (C_s >= tau1) that join two
    images of the same class, against `chance`, the share of all pairs that do (what
    edges drawn at random would give); `similar_recall`: the share of same-class
    pairs that are joined. Opposite edges (C_s <= tau2), when the model has them,
    should join different classes: `opposite_precision` is the share that does.
    Per node: edges, and the share of nodes with none (`isolated`); per class: the
    share of its images' similar edges that stay in the class. None for the linear
    head.
    """
    from ean_tf.models import adjacency as adj

    if getattr(model, "head_type", "") != "ean":
        return None
    order = examples.shuffle_order(shuffle_seed)
    subset = examples.select(order[:max_images])
    n = similar = similar_same = opposite = opposite_diff = 0
    pairs = pairs_same = isolated = 0
    classes = len(examples.class_names)
    class_edges, class_same = np.zeros(classes, int), np.zeros(classes, int)
    for images, _ in make_dataset(subset, image_size, batch_size, training=False):
        _, raw, _ = model.encode(images)
        cs = adj.cosine_similarity(model.graph_embeddings(raw)).numpy()
        labels = np.asarray(subset.labels[n : n + len(cs)])
        off = ~np.eye(len(labels), dtype=bool)
        same = (labels[:, None] == labels[None, :]) & off
        sim = (cs >= model.tau1) & off
        opp = (cs <= model.tau2) & off
        n += len(labels)
        pairs += int(off.sum())
        pairs_same += int(same.sum())
        similar += int(sim.sum())
        similar_same += int((sim & same).sum())
        opposite += int(opp.sum())
        opposite_diff += int((opp & ~same).sum())
        isolated += int((~(sim | opp).any(axis=1)).sum())
        np.add.at(class_edges, labels, sim.sum(axis=1))
        np.add.at(class_same, labels, (sim & same).sum(axis=1))

    def share(part, whole):
        return round(part / whole, 4) if whole else None

    return {
        "images": n,
        "batch_size": batch_size,
        "shuffle_seed": shuffle_seed,
        "similar_per_node": round(similar / max(n, 1), 3),
        "similar_precision": share(similar_same, similar),
        "similar_recall": share(similar_same, pairs_same),
        "chance": share(pairs_same, pairs),
        "opposite_per_node": round(opposite / max(n, 1), 3),
        "opposite_precision": share(opposite_diff, opposite),
        "isolated": share(isolated, n),
        # Per class: the share of its images' similar edges that stay in the class.
        "similar_precision_per_class": {
            name: share(int(class_same[k]), int(class_edges[k]))
            for k, name in enumerate(examples.class_names)
        },
    }


def evaluate_model(
    model,
    examples: Examples,
    image_size: int,
    batch_size: int,
    out_dir: str,
    graphs=("isolated",),
    checkpoint: str = "",
    shuffle_seed: int = 0,
    noisy_labels: str | None = None,
    train_examples: Examples | None = None,
) -> dict:
    """Evaluates `graphs` side by side; writes metrics.json, confusion_<graph>.png
    for each graph and confusion.png (the first graph's)."""
    os.makedirs(out_dir, exist_ok=True)
    report = {
        "checkpoint": checkpoint,
        "split": examples.source,
        "class_names": list(examples.class_names),
        "graphs": {},
    }
    for graph in graphs:
        order = None
        if graph == "batch":
            order = examples.shuffle_order(shuffle_seed)
        probs = predict(model, examples, image_size, batch_size, graph, order)
        result = classification_metrics(
            examples.labels, probs.argmax(1), examples.class_names
        )
        result["inference_graph"] = graph
        if graph == "nearest":  # the weight of its neighbours' training labels
            result["label_weight"] = float(model.nearest_label_weight)
        if graph == "batch":
            result.update(batch_size=batch_size, shuffle_seed=shuffle_seed)
        report["graphs"][graph] = result
    first = report["graphs"][graphs[0]]
    report.update(
        accuracy=first["accuracy"],
        inference_graph=graphs[0],
        mean_class_accuracy=first["mean_class_accuracy"],
        num_samples=first["num_samples"],
    )
    activity = head_activity(model, examples, image_size, batch_size)
    if activity is not None:
        report["head_activity"] = activity
        for layer in activity["layers"]:
            if layer["dead"] > layer["units"] // 2:
                logging.getLogger("ean_tf").warning(
                    "GCN head: %d of %d hidden units of %s never fire on %d "
                    "validation images (dead ReLUs: the head learns little or "
                    "nothing). Lower --learning_rate, lengthen --lr_warmup_epochs "
                    "or try --gcn_units= (one GCN layer).",
                    layer["dead"],
                    layer["units"],
                    layer["name"],
                    activity["images"],
                )
    quality = graph_quality(model, examples, image_size, batch_size, shuffle_seed)
    if quality is not None:
        report["graph_quality"] = quality
    if noisy_labels and train_examples is not None and os.path.isfile(noisy_labels):
        report["flipped_labels"] = flipped_label_report(
            model, train_examples, noisy_labels, image_size, batch_size, graphs[0]
        )
    write_json(os.path.join(out_dir, "metrics.json"), report)
    for name, path in [(g, f"confusion_{g}.png") for g in graphs] + [
        (graphs[0], "confusion.png")
    ]:
        result = report["graphs"][name]
        plot_confusion(
            result["confusion_matrix"],
            examples.class_names,
            os.path.join(out_dir, path),
            f"{name} graph: accuracy {result['accuracy']:.3f}",
        )
    return report


def robustness(
    model,
    examples: Examples,
    image_size: int,
    batch_size: int,
    graph: str,
    seed: int,
    kinds=views.VIEW_KINDS,
) -> dict:
    """Accuracy and mean class accuracy on the clean split and on perturbed copies
    of it (one kind each, fixed seed: every model sees the same copies)."""
    ds = make_dataset(examples, image_size, batch_size, training=False)
    predict = tf.function(lambda x: tf.argmax(model(x, graph=graph), -1))
    out = {}
    for name in ("clean",) + tuple(kinds):
        preds = []
        for i, (images, _) in enumerate(ds):
            if name != "clean":
                images = views.make_views(images, [seed, i], [name])
            preds.append(predict(images).numpy())
        metrics = classification_metrics(
            examples.labels, np.concatenate(preds), examples.class_names
        )
        out[name] = {
            "accuracy": metrics["accuracy"],
            "mean_class_accuracy": metrics["mean_class_accuracy"],
        }
    return out
