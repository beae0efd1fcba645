"""The mini-batch expression graph (paper eq. 3-6, 8), as pure TF functions.

All functions take and return dense tensors, work for N = 1 and for an N unknown
until run time (inside `tf.function`), and never divide by zero: an isolated node
keeps its self-loop. `normalized_adjacency` agrees with `spektral.utils.gcn_filter`.
"""

from __future__ import annotations

import math

import tensorflow as tf


def cosine_similarity(x: tf.Tensor, y: tf.Tensor | None = None) -> tf.Tensor:
    """C_s(i, j) = x_i . y_j / (|x_i| |y_j|)   (eq. 3).

    x: (N, D); y: (M, D), default x. Returns (N, M) in [-1, 1]; a zero vector has
    similarity 0 with everything.
    """
    y = x if y is None else y
    xn = tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1, epsilon=1e-12)
    yn = tf.math.l2_normalize(tf.cast(y, tf.float32), axis=-1, epsilon=1e-12)
    return tf.matmul(xn, yn, transpose_b=True)  # (N, M)


def threshold_adjacency(
    cs: tf.Tensor, tau1: float, tau2: float = -math.inf
) -> tf.Tensor:
    """Hard two-threshold adjacency (eq. 4).

    A = 1 where C_s >= tau1 (similar) or C_s <= tau2 (opposite), else 0.
    tau2 = -inf is the single-threshold form.
    cs: (N, M). Returns (N, M) float32.
    """
    similar = tf.cast(cs >= tau1, tf.float32)
    if math.isinf(tau2) and tau2 < 0:
        return similar
    return similar + tf.cast(cs <= tau2, tf.float32)


def relaxed_adjacency(
    cs: tf.Tensor,
    tau1: float,
    tau2: float = -math.inf,
    temperature: float = 0.1,
    similar_only: bool = False,
) -> tf.Tensor:
    """Differentiable edges: sigma((C_s - tau1) / T) + sigma((tau2 - C_s) / T).

    With `similar_only`, only the first term (what Adj_loss uses). cs: (N, M).
    Returns (N, M) float32; tends to `threshold_adjacency` as T -> 0.
    """
    cs = tf.cast(cs, tf.float32)
    similar = tf.sigmoid((cs - tau1) / temperature)
    if similar_only or (math.isinf(tau2) and tau2 < 0):
        return similar
    return similar + tf.sigmoid((tau2 - cs) / temperature)


def straight_through(hard: tf.Tensor, soft: tf.Tensor) -> tf.Tensor:
    """Forward value `hard`, gradient of `soft`."""
    return hard + soft - tf.stop_gradient(soft)


def zero_diagonal(a: tf.Tensor) -> tf.Tensor:
    """a: (..., N, N) -> a with a zero diagonal."""
    return tf.linalg.set_diag(a, tf.zeros_like(tf.linalg.diag_part(a)))


def normalized_adjacency(a: tf.Tensor) -> tf.Tensor:
    """Â = D̃^-1/2 (A + I) D̃^-1/2 with A's diagonal zeroed first (eq. 8).

    a: (..., N, N), any leading batch dimensions. Degrees are the plain row sums of
    A + I, so that the gradient through a straight-through A is the derivative of
    eq. 8 itself (an absent edge still moves its degree). Each node has its
    self-loop, so no degree is zero. For a symmetric non-negative A with a zero
    diagonal this equals `spektral.utils.gcn_filter(A)`.
    """
    a = zero_diagonal(tf.cast(a, tf.float32))
    a_tilde = a + tf.eye(tf.shape(a)[-1], dtype=a.dtype)  # (..., N, N)
    d_inv_sqrt = tf.math.rsqrt(tf.reduce_sum(a_tilde, axis=-1))  # (..., N), >= 1
    return a_tilde * d_inv_sqrt[..., :, None] * d_inv_sqrt[..., None, :]


def label_mask(labels: tf.Tensor) -> tf.Tensor:
    """A_mask(i, j) = [y_i = y_j] (eq. 5), diagonal zeroed. labels: (N,) -> (N, N)."""
    labels = tf.reshape(labels, [-1])
    same = tf.cast(tf.equal(labels[:, None], labels[None, :]), tf.float32)
    return zero_diagonal(same)


def adj_loss(
    a_similar: tf.Tensor, labels: tf.Tensor, reduction: str = "sum"
) -> tf.Tensor:
    """(Σ A_mask ∘ A − Σ A_mask)² over off-diagonal pairs (eq. 6 without alpha).

    a_similar: (N, N) similar-edge part of A (hard, or relaxed for a gradient).
    labels: (N,) int. `sum` is the paper's form (it grows like N⁴); `mean` divides
    the inner difference by Σ A_mask first. Returns a scalar; 0 when no two nodes
    share a label.
    """
    mask = label_mask(labels)  # (N, N)
    a = zero_diagonal(tf.cast(a_similar, tf.float32))
    diff = tf.reduce_sum(mask * a) - tf.reduce_sum(mask)
    if reduction == "mean":
        diff = tf.math.divide_no_nan(diff, tf.reduce_sum(mask))
    elif reduction != "sum":
        raise ValueError(f"Expected reduction 'sum' or 'mean'. Received: {reduction!r}")
    return tf.square(diff)
