"""The nearest graph's store of training images (docs/DESIGN.md section 2).

After training the model stores every training image's graph embedding and
isolated logits (and the target it was trained with), and each query is joined to
its `nearest_k` most similar: its answer never depends on the rest of a request.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def prior_counts(labels: np.ndarray, size: int, num_classes: int) -> np.ndarray:
    """How many of `size` stored images each class gets: `size` times the class's
    share of `labels`, rounded by largest remainder (so the counts sum to `size`)
    and capped by what each class has."""
    have = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    exact = size * have / have.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: size - counts.sum()]] += 1
    return np.minimum(counts, have)


def memory_images(labels, size: int, seed: int = 0, num_classes=None) -> np.ndarray:
    """Sorted indices of the training images the memory stores: all of them, or
    `size` drawn uniformly within each class with the class prior's counts
    (`prior_counts`) where there are more."""
    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        raise ValueError("memory_images: no training labels to draw from")
    if size >= len(labels):
        return np.arange(len(labels))
    counts = prior_counts(labels, size, num_classes or int(labels.max()) + 1)
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(np.flatnonzero(labels == c), n, replace=False)
        for c, n in enumerate(counts)
        if n
    ]
    return np.sort(np.concatenate(picks))


def stored_weight(layer, shape, name: str, init: str = "zeros"):
    """A weight of `layer` that training never updates and mixed precision never
    casts: what a stored graph saves with the model."""
    return layer.add_weight(
        shape=shape, initializer=init, trainable=False, autocast=False, name=name
    )


class ReferenceMemory(keras.layers.Layer):
    """The nearest graph: `size` training images, each stored as its unit-length
    graph embedding, its isolated logits and its training target (one-hot label
    or label distribution), saved with the model.

    A query q is joined to its k most similar stored images (cosine in the graph's
    embedding, normalised as a training batch would be: with the statistics of the
    stored images), those at or above tau1 (eq. 4's similar edges). Each stored
    image is a node on its own, so with one GCN layer (the default head) the
    query's row of the graph is its own feature and theirs, averaged, and its
    logits are the mean of its isolated logits and theirs:

        logits_q = (l_q + sum_j a_qj l_j) / (1 + sum_j a_qj),  a_qj in {0, 1}

    A deeper head's
    answer is the same mean of its isolated logits. With a label weight w > 0
    the neighbours also pass on their training targets y_j (one step of label
    propagation, as in Correct and Smooth, Huang et al. 2021):

        p_q = (1 - w) softmax(logits_q) + w (sum_j a_qj y_j) / (sum_j a_qj)

    and the answer is log p_q, whose softmax is p_q. Until `fill`, or with no
    edge, the query is isolated; a neighbour stored without a target passes on
    none. A query never sees another query.
    """

    def __init__(self, size: int, embedding_dim: int, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

        def weight(shape, name, init="zeros"):
            return stored_weight(self, shape, name, init)

        self.embeddings = weight((self.size, int(embedding_dim)), "embeddings")
        self.logits = weight((self.size, int(num_classes)), "logits")
        self.valid = weight((self.size,), "valid")  # 1 where a slot holds an image
        # The embedding's normalisation: e = raw * scale + shift.
        self.scale = weight((int(embedding_dim),), "scale", "ones")
        self.shift = weight((int(embedding_dim),), "shift")
        self.targets = weight((self.size, int(num_classes)), "targets")

    def fill(self, raw, logits, bn=None, targets=None) -> None:
        """raw embeddings (N, E), isolated logits (N, C) and training targets
        (N, C) (None: none stored) of N <= size training images; `bn` the
        embedding's batch norm (None: no normalisation)."""
        raw = np.asarray(raw, np.float32)
        n = len(raw)
        if not 0 < n <= self.size:
            raise ValueError(f"Expected 1 to {self.size} memory images. Received: {n}")
        scale = np.ones(raw.shape[1], np.float32)
        shift = np.zeros(raw.shape[1], np.float32)
        if bn is not None:
            mean, var = raw.mean(axis=0), raw.var(axis=0)
            scale = np.asarray(bn.gamma) / np.sqrt(var + bn.epsilon)
            shift = np.asarray(bn.beta) - mean * scale
        e = raw * scale + shift
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        pad = self.size - n
        self.embeddings.assign(np.pad(e, [(0, pad), (0, 0)]))
        self.logits.assign(np.pad(np.asarray(logits, np.float32), [(0, pad), (0, 0)]))
        self.valid.assign(np.pad(np.ones(n, np.float32), [(0, pad)]))
        if targets is None:
            targets = np.zeros_like(logits, np.float32)
        targets = np.asarray(targets, np.float32)
        if targets.shape != (n, self.targets.shape[1]):
            raise ValueError(
                f"Expected targets of shape {(n, self.targets.shape[1])}. "
                f"Received: {targets.shape}"
            )
        self.targets.assign(np.pad(targets, [(0, pad), (0, 0)]))
        self.scale.assign(scale)
        self.shift.assign(shift)

    def neighbours(self, raw, k: int):
        """(cosines (Q, k), indices (Q, k)) of each query's k most similar stored
        images, most similar first; empty slots come last (cosine -2)."""
        e = raw * self.scale + self.shift
        e = tf.math.l2_normalize(e, axis=-1, epsilon=1e-12)
        cs = tf.matmul(e, self.embeddings, transpose_b=True)  # (Q, size)
        cs = tf.where(self.valid[None, :] > 0, cs, -2.0)
        return tf.math.top_k(cs, k=min(int(k), self.size))

    def call(
        self,
        logits,
        raw,
        k: int,
        tau1: float,
        gate=1.0,
        label_weight=0.0,
    ):
        """Nearest-graph logits (Q, C) of queries with isolated `logits` (Q, C)
        and raw embeddings (Q, E); edges times `gate` (0: isolated)."""
        cs, idx = self.neighbours(raw, k)
        a = tf.cast(cs >= tau1, logits.dtype) * gate  # (Q, k); empty slots: 0
        mixed = logits + tf.einsum("qk,qkc->qc", a, tf.gather(self.logits, idx))
        mixed = mixed / (1.0 + tf.reduce_sum(a, axis=1, keepdims=True))
        if label_weight:
            mixed = self._with_targets(mixed, a, idx, label_weight)
        return mixed

    def _with_targets(self, logits, a, idx, w: float):
        """log((1 - w) softmax(logits) + w * the joined neighbours' mean target),
        (Q, C), for a query joined to a neighbour with a target; `logits`
        unchanged for any other (no edge, the warm-up, or a store without
        targets), so that there the graph stays exactly the network alone."""
        votes = tf.einsum("qk,qkc->qc", a, tf.gather(self.targets, idx))
        count = tf.reduce_sum(votes, axis=1, keepdims=True)  # (Q, 1)
        labelled = count > 0
        w = w * tf.cast(labelled, logits.dtype)
        share = tf.math.divide_no_nan(votes, count)
        # In log space: a class no neighbour names adds log(0) = -inf, exactly.
        own = tf.math.log1p(-w) + tf.nn.log_softmax(logits)
        theirs = tf.math.log(w) + tf.math.log(share)
        mixed = tf.reduce_logsumexp(tf.stack([own, theirs]), axis=0)
        return tf.where(labelled, mixed, logits)

    def get_config(self):
        return {**super().get_config(), "size": self.size}
