"""The stored graphs of serving (docs/DESIGN.md section 2).

The served graph: a fixed reference context that each query joins as one more node.

The GCN was trained on batches of `n` images drawn with the training class prior,
each node joined to its similar neighbours and normalised by degrees of that size.
The context graph gives every query the same neighbourhood: `size = n - 1` training
images, drawn with the class prior and stored in the model, plus the query as the
n-th node. Every edge and degree is as in training (the context's edges to the
query included), and the embedding is normalised with the statistics of those n
nodes, as batch norm does in training. A query never sees another query, so its
answer does not depend on the rest of the request. With `sets` > 1 the query is
classified in each of several disjoint contexts and the logits are averaged.

`select_context` picks the images (a pure function of the labels and a seed);
`ReferenceContext` holds them and runs a query's graphs.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def prior_counts(labels: np.ndarray, size: int, num_classes: int) -> np.ndarray:
    """How many of `size` context nodes each class gets: `size` times the class's
    share of `labels`, rounded by largest remainder (so the counts sum to `size`)
    and capped by what each class has."""
    labels = np.asarray(labels, np.int64)
    have = np.bincount(labels, minlength=num_classes)
    if have.sum() == 0:
        raise ValueError("select_context: no labels to draw the context from")
    exact = size * have / have.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: size - counts.sum()]] += 1
    return np.minimum(counts, have)


def select_context(
    labels: np.ndarray, size: int, sets: int = 1, seed: int = 0, num_classes=None
) -> np.ndarray:
    """Indices (sets, size) into `labels`: `sets` disjoint contexts of `size`
    examples each, every one with the class counts of `prior_counts`, drawn
    uniformly within each class. Where a class has too few examples for every set,
    sets share them (drawn again); a class with none is left out and its slots go
    to the other classes by the same rounding."""
    labels = np.asarray(labels, np.int64)
    if size < 1 or sets < 1:
        raise ValueError(f"Expected size, sets >= 1. Received: {size}, {sets}")
    if len(labels) < size:
        raise ValueError(
            f"select_context: {size} context images requested, only "
            f"{len(labels)} training images"
        )
    classes = num_classes or int(labels.max()) + 1
    counts = prior_counts(labels, size, classes)
    short = size - counts.sum()  # classes capped by what they have
    while short > 0:  # give the rest to the classes that still have images
        spare = np.bincount(labels, minlength=classes) - counts
        for c in np.argsort(-spare, kind="stable")[:short]:
            if spare[c] > 0:
                counts[c] += 1
        short = size - counts.sum()
    rng = np.random.default_rng(seed)
    out = np.empty((sets, size), np.int64)
    for c in range(classes):
        if counts[c] == 0:
            continue
        pool = rng.permutation(np.flatnonzero(labels == c))
        need = counts[c] * sets
        if len(pool) < need:  # not enough for disjoint sets: draw again
            pool = np.concatenate(
                [pool, rng.choice(pool, need - len(pool), replace=True)]
            )
        start = int(counts[:c].sum())
        out[:, start : start + counts[c]] = pool[:need].reshape(sets, counts[c])
    return np.stack([rng.permutation(row) for row in out])


def stored_weight(layer, shape, name: str, init: str = "zeros"):
    """A weight of `layer` that training never updates and mixed precision never
    casts: what a stored graph saves with the model."""
    return layer.add_weight(
        shape=shape, initializer=init, trainable=False, autocast=False, name=name
    )


class ReferenceContext(keras.layers.Layer):
    """`sets` contexts of `size` nodes: pooled features and raw (un-normalised)
    embeddings of training images, saved with the model.

    `call(pooled, raw, graph_logits)` builds, for each query q and set m, the
    (size + 1)-node graph [context_m; q] and returns the mean over m of the
    query node's logits; `graph_logits(x (G, N, F), raw (G, N, E), gate)` is the
    model's batched graph forward (embedding norm, edges times `gate`, GCN head):
    until the context is filled, the gate is 0 and the query is isolated.
    """

    def __init__(
        self, sets: int, size: int, feature_dim: int, embedding_dim: int, **kwargs
    ):
        super().__init__(**kwargs)
        self.sets, self.size = int(sets), int(size)
        shape = (self.sets, self.size)
        self.features = stored_weight(self, (*shape, int(feature_dim)), "features")
        self.embeddings = stored_weight(
            self, (*shape, int(embedding_dim)), "embeddings"
        )
        # 0 until `fill`: an empty context would join queries to zero vectors.
        self.filled = stored_weight(self, (), "filled")

    def fill(self, features, embeddings) -> None:
        """features (sets * size, F), raw embeddings (sets * size, E), set-major."""
        self.features.assign(np.reshape(features, self.features.shape))
        self.embeddings.assign(np.reshape(embeddings, self.embeddings.shape))
        self.filled.assign(1.0)

    def call(self, pooled, raw, graph_logits):
        q = tf.shape(pooled)[0]
        m, k = self.sets, self.size

        def nodes(context, query):  # (M, K, D), (Q, D) -> (Q * M, K + 1, D)
            d = tf.shape(context)[-1]
            context = tf.broadcast_to(context[None], [q, m, k, d])
            query = tf.broadcast_to(query[:, None, None, :], [q, m, 1, d])
            return tf.reshape(tf.concat([context, query], axis=2), [q * m, k + 1, d])

        x = nodes(tf.cast(self.features, pooled.dtype), pooled)
        e = nodes(tf.cast(self.embeddings, raw.dtype), raw)
        logits = graph_logits(x, e, self.filled)[:, -1, :]  # (Q * M, C): queries
        return tf.reduce_mean(tf.reshape(logits, [q, m, -1]), axis=1)  # (Q, C)

    def get_config(self):
        return {**super().get_config(), "sets": self.sets, "size": self.size}


BANK_CANDIDATES = 400  # per class: the bank picks its members among the first these


def bank_candidates(labels: np.ndarray, per_class: int = BANK_CANDIDATES) -> np.ndarray:
    """Sorted indices of the first `per_class` examples of each label, in order:
    the examples the bank chooses from."""
    labels = np.asarray(labels)
    firsts = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(firsts)) if firsts else np.zeros(0, np.int64)


def select_bank(
    embeddings: np.ndarray,
    labels: np.ndarray,
    agree: np.ndarray,
    per_class: int,
    num_classes: int,
) -> list[np.ndarray]:
    """The class-balanced bank: per class, the indices of the `per_class`
    examples whose embedding is closest (cosine) to the class mean, those the
    isolated network classifies as their label first (so that a noisy label
    seldom enters). A class with fewer examples gives all it has."""
    picks = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            picks.append(idx)
            continue
        e = embeddings[idx]
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-12)
        score = e @ e.mean(0) + 2.0 * agree[idx]  # agreeing samples first
        picks.append(idx[np.argsort(-score, kind="stable")[:per_class]])
    return picks


class ReferenceBank(keras.layers.Layer):
    """The class-balanced bank graph: K = C * per_class training samples,
    class-major, and what each bank node feeds every GCN layer (cached by `fill`:
    bank nodes never read queries, so a query's forward needs only its edges to
    the bank, O(Q K d), no K x K work)."""

    def __init__(
        self, num_classes, per_class, feature_dim, embedding_dim, widths, **kwargs
    ):
        super().__init__(**kwargs)
        k = int(num_classes) * int(per_class)
        self.per_class = int(per_class)

        def weight(shape, name, init="zeros"):
            return stored_weight(self, shape, name, init)

        self.features = weight((k, int(feature_dim)), "features")
        self.embeddings = weight((k, int(embedding_dim)), "embeddings")
        self.valid = weight((k,), "valid")  # 1 where a slot holds a sample
        self.degree = weight((k,), "degree", "ones")
        self.layer_inputs = [
            weight((k, int(w)), f"layer_input_{i}") for i, w in enumerate(widths)
        ]

    def fill(
        self,
        features,
        embeddings,
        valid,
        edges,
        head,
        signed: bool,
        self_weight: float = 0.0,
    ) -> None:
        """Stores the bank, then its degrees and per-layer inputs from the bank
        graph alone; `edges(cs)` thresholds cosines, `head` is the GCN head,
        `self_weight` the model's alpha (Â -> alpha I + (1 - alpha) Â)."""
        from ean_tf.models import adjacency as adj

        self.features.assign(features)
        self.embeddings.assign(embeddings)
        self.valid.assign(valid)
        if not self.layer_inputs:
            return
        a = edges(adj.cosine_similarity(self.embeddings))
        a = adj.zero_diagonal(a * valid[:, None] * valid[None, :])
        self.degree.assign(1.0 + tf.reduce_sum(tf.abs(a), axis=1))
        a_hat = adj.self_weighted(adj.normalized_adjacency(a, signed), self_weight)
        h = tf.convert_to_tensor(self.features)
        for conv, cache in zip(head.convs, self.layer_inputs, strict=True):
            cache.assign(h)
            h = conv([h, a_hat])

    def call(
        self, pooled, embeddings, edges=None, head=None, gate=1.0, self_weight=0.0
    ):
        """Bank-graph logits (Q, C) from the cached layer inputs.

        Row q of Â over [bank; queries] has Â_qq = 1/d_q and Â_qj = a_qj /
        sqrt(d_q d_j) for bank node j (d_j its degree in the bank graph), so
        layer l gives act((Â_qq h_q + Σ_j Â_qj H_l[j]) W_l + b_l); with a
        self-weight alpha, row q is alpha e_q + (1 - alpha) Â_q.
        """
        from ean_tf.models import adjacency as adj

        cs = adj.cosine_similarity(embeddings, self.embeddings)  # (Q, K)
        a = edges(cs) * self.valid[None, :] * gate  # (Q, K)
        d_q = 1.0 + tf.reduce_sum(tf.abs(a), axis=1, keepdims=True)  # (Q, 1)
        a_qb = a * tf.math.rsqrt(d_q) * tf.math.rsqrt(self.degree)[None, :]
        h = pooled
        for i, bank_h in enumerate(self.layer_inputs):
            mixed = h / d_q + tf.matmul(a_qb, tf.cast(bank_h, h.dtype))  # (Q, d)
            if self_weight:
                mixed = self_weight * h + (1.0 - self_weight) * mixed
            h = head.transform(i, mixed)
        return tf.cast(h, tf.float32)  # (Q, C)

    def get_config(self):
        return {**super().get_config(), "per_class": self.per_class}
