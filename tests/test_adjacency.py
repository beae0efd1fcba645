import math

import numpy as np
import pytest
import tensorflow as tf
from spektral.utils import gcn_filter

from ean_tf.models import adjacency as adj

RNG = np.random.default_rng(0)


def np_cosine(x, y=None):
    y = x if y is None else y
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    yn = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return xn @ yn.T


def np_threshold(cs, tau1, tau2):
    return ((cs >= tau1) | (cs <= tau2)).astype(np.float32)


def np_normalized(a):
    a = a.copy()
    np.fill_diagonal(a, 0)
    a = a + np.eye(len(a))
    d = a.sum(1)
    return a / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]


@pytest.mark.parametrize("n", [1, 2, 7, 33])
def test_cosine_matches_numpy(n):
    x = RNG.normal(size=(n, 5)).astype(np.float32)
    np.testing.assert_allclose(
        adj.cosine_similarity(x).numpy(), np_cosine(x), atol=1e-5
    )


def test_cosine_of_zero_vector_is_zero_not_nan():
    x = np.array([[0, 0, 0], [1, 2, 3]], np.float32)
    cs = adj.cosine_similarity(x).numpy()
    assert np.all(np.isfinite(cs)) and cs[0, 1] == 0


@pytest.mark.parametrize("tau1,tau2", [(0.3, -0.3), (0.5, -math.inf), (0.0, -0.9)])
def test_threshold_matches_numpy(tau1, tau2):
    cs = np_cosine(RNG.normal(size=(12, 4)))
    np.testing.assert_array_equal(
        adj.threshold_adjacency(cs, tau1, tau2).numpy(), np_threshold(cs, tau1, tau2)
    )


def test_relaxed_matches_numpy_and_tends_to_hard():
    cs = np_cosine(RNG.normal(size=(9, 4)))
    sig = lambda z: 1 / (1 + np.exp(-z))
    expected = sig((cs - 0.4) / 0.1) + sig((-0.4 - cs) / 0.1)
    got = adj.relaxed_adjacency(cs, 0.4, -0.4, 0.1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    sharp = adj.relaxed_adjacency(cs, 0.4, -0.4, 1e-4).numpy()
    far = np.abs(np.abs(cs) - 0.4) > 0.01
    np.testing.assert_allclose(sharp[far], np_threshold(cs, 0.4, -0.4)[far], atol=1e-3)


def test_straight_through_forward_is_hard_gradient_is_soft():
    cs = tf.constant(np_cosine(RNG.normal(size=(5, 3))), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(cs)
        hard = adj.threshold_adjacency(cs, 0.2)
        soft = adj.relaxed_adjacency(cs, 0.2, temperature=0.5)
        out = adj.straight_through(hard, soft)
        total = tf.reduce_sum(out)
    np.testing.assert_allclose(out.numpy(), hard.numpy(), atol=1e-6)
    grad = tape.gradient(total, cs).numpy()
    assert np.all(grad > 0)


@pytest.mark.parametrize("n", [1, 2, 10])
def test_normalized_matches_gcn_filter(n):
    a = (RNG.random((n, n)) > 0.5).astype(np.float32)
    a = np.maximum(a, a.T)
    np.fill_diagonal(a, 0)
    expected = gcn_filter(a.copy())
    np.testing.assert_allclose(adj.normalized_adjacency(a).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(
        adj.normalized_adjacency(a).numpy(), np_normalized(a), atol=1e-6
    )


def test_normalized_gradient_is_the_derivative_of_eq8_at_absent_edges():
    """With straight-through edges the GCN sees a hard 0/1 A, and the gradient
    reaches the soft edges through dÂ/dA at that A. Every absent edge (A = 0)
    still moves its row's degree; degrees from |A| dropped that term."""
    n = 6
    a = (RNG.random((n, n)) > 0.6).astype(np.float64)
    a = np.maximum(a, a.T)
    np.fill_diagonal(a, 0)
    w = RNG.normal(size=(n, n))
    a_var = tf.Variable(a.astype(np.float32))
    with tf.GradientTape() as tape:
        f = tf.reduce_sum(w.astype(np.float32) * adj.normalized_adjacency(a_var))
    got = tape.gradient(f, a_var).numpy()
    eps = 1e-6
    want = np.zeros_like(a)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue  # the diagonal is zeroed: no gradient
            up, down = a.copy(), a.copy()
            up[i, j] += eps
            down[i, j] -= eps
            diff = np.sum(w * np_normalized(up)) - np.sum(w * np_normalized(down))
            want[i, j] = diff / (2 * eps)
    assert np.any(a == 0) and np.any(a[~np.eye(n, dtype=bool)] == 0)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_normalized_zeroes_a_given_diagonal_and_keeps_isolated_nodes_finite():
    a = np.zeros((4, 4), np.float32)
    a[0, 1] = a[1, 0] = 1
    a[2, 2] = 1  # a self edge from the threshold; must not count twice
    out = adj.normalized_adjacency(a).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[2], [0, 0, 1, 0])
    np.testing.assert_allclose(out[3], [0, 0, 0, 1])
    np.testing.assert_allclose(out[0, :2], [0.5, 0.5])


def test_functions_work_in_tf_function_with_unknown_batch():
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 6], tf.float32),
            tf.TensorSpec([None], tf.int64),
        ]
    )
    def graph(e, y):
        cs = adj.cosine_similarity(e)
        a = adj.threshold_adjacency(cs, 0.1, -0.1)
        soft = adj.relaxed_adjacency(cs, 0.1, similar_only=True)
        return adj.normalized_adjacency(a), adj.adj_loss(soft, y, "mean")

    for n in (1, 3, 17):
        e = RNG.normal(size=(n, 6)).astype(np.float32)
        y = RNG.integers(0, 3, n)
        a_hat, loss = graph(e, y)
        expected = np_normalized(np_threshold(np_cosine(e), 0.1, -0.1))
        np.testing.assert_allclose(a_hat.numpy(), expected, atol=1e-5)
        assert np.isfinite(loss.numpy())


def test_adj_loss_by_hand():
    # Labels 0, 0, 1: the only same-label off-diagonal pairs are (0,1) and (1,0).
    a = np.array([[1.0, 0.25, 1.0], [0.25, 1.0, 0.0], [1.0, 0.0, 1.0]], np.float32)
    y = np.array([0, 0, 1])
    # Σ mask*A = 0.25 + 0.25 = 0.5; Σ mask = 2 -> (0.5 - 2)^2 = 2.25.
    assert adj.adj_loss(a, y, "sum").numpy() == pytest.approx(2.25)
    # mean: ((0.5 - 2) / 2)^2 = 0.5625.
    assert adj.adj_loss(a, y, "mean").numpy() == pytest.approx(0.5625)
    # No two nodes share a label: nothing to pull together.
    assert adj.adj_loss(a, np.array([0, 1, 2]), "sum").numpy() == 0
    assert adj.adj_loss(a[:1, :1], y[:1], "mean").numpy() == 0  # B = 1


def test_adj_loss_gradient_reaches_embeddings_through_relaxed_edges():
    e = tf.Variable(RNG.normal(size=(6, 4)).astype(np.float32))
    y = np.array([0, 0, 0, 1, 1, 1])
    with tf.GradientTape() as tape:
        cs = adj.cosine_similarity(e)
        soft = adj.relaxed_adjacency(cs, 0.5, temperature=0.2, similar_only=True)
        loss = adj.adj_loss(soft, y, "sum")
    grad = tape.gradient(loss, e)
    assert grad is not None and np.abs(grad.numpy()).sum() > 0
    # One gradient step lowers the loss.
    e.assign_sub(0.01 * grad)
    cs = adj.cosine_similarity(e)
    after = adj.adj_loss(
        adj.relaxed_adjacency(cs, 0.5, temperature=0.2, similar_only=True), y, "sum"
    )
    assert after.numpy() < loss.numpy()
