import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from ean_tf.models import adjacency, backbones
from ean_tf.models.ean import EAN, AdjacencyWarmup
from ean_tf.models.gcn import GCNHead

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=32, width=8, embedding_dim=16, bank_per_class=2)


def _data(n=16, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)
    y = np.eye(classes, dtype=np.float32)[np.arange(n) % classes]
    return x, y


@pytest.mark.parametrize("name", backbones.BACKBONE_NAMES)
@pytest.mark.parametrize("stem", ["imagenet", "small"])
def test_backbone_outputs_pooled_and_conv3(name, stem):
    model = backbones.build_backbone(name, 64 if stem == "imagenet" else 32, stem, 4)
    pooled, conv3 = model(
        np.zeros((2, model.input_shape[1], model.input_shape[2], 3), np.float32)
    )
    assert pooled.shape[0] == 2 and len(pooled.shape) == 2
    assert conv3.shape[0] == 2 and len(conv3.shape) == 4


def test_small_stem_keeps_resolution():
    s1 = backbones.build_backbone("resnet18", 48, "small", 8)
    s2 = backbones.build_backbone("resnet18", 48, "small_s2", 8)
    big = backbones.build_backbone("resnet18", 48, "imagenet", 8)
    assert s1.outputs[1].shape[1] == 12  # 48 / 4 at stage 3
    assert s2.outputs[1].shape[1] == 6
    assert big.outputs[1].shape[1] == 3


def test_backbone_weights_round_trip_and_mismatch(tmp_path):
    a = backbones.build_backbone("resnet18", 32, "small", 8)
    path = str(tmp_path / "bb.weights.h5")
    a.save_weights(path)
    b = backbones.build_backbone("resnet18", 32, "small", 8)
    backbones.load_backbone_weights(b, path)
    for wa, wb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    wrong = backbones.build_backbone("resnet18", 32, "small", 16)
    before = [w.numpy().copy() for w in wrong.weights]
    with pytest.raises(ValueError, match=r"layer stem_conv: file has shapes"):
        backbones.load_backbone_weights(wrong, path)
    for w, v in zip(wrong.weights, before, strict=True):
        np.testing.assert_array_equal(w.numpy(), v)  # nothing loaded half-way
    with pytest.raises(ValueError, match="does not fit backbone"):
        backbones.load_backbone_weights(
            backbones.build_backbone("vgg13", 32, "small", 8), path
        )
    with pytest.raises(ValueError, match="no such file"):
        backbones.load_backbone_weights(b, str(tmp_path / "nope.weights.h5"))


def test_constructor_errors_are_actionable():
    with pytest.raises(ValueError, match="inference_graph"):
        EAN(4, inference_graph="global", **TINY)
    with pytest.raises(ValueError, match="tau2: expected a float below tau1"):
        EAN(4, tau1=0.1, tau2=0.5, **TINY)


def test_warmup_gcn_sees_identity_and_adj_loss_is_off():
    model = EAN(4, tau1=-1.0, **TINY)  # tau1 = -1: every pair is an edge
    x, y = _data()
    model.graph_enabled.assign(0.0)
    np.testing.assert_allclose(
        model(x, graph="batch"), model(x, graph="isolated"), atol=1e-5
    )
    _, adj_value, _, stats = model.compute_losses(x, y, training=False)
    assert float(adj_value) == 0 and float(stats["edges_per_node"]) == 0
    model.graph_enabled.assign(1.0)
    assert not np.allclose(
        model(x, graph="batch"), model(x, graph="isolated"), atol=1e-5
    )
    _, adj_value, _, stats = model.compute_losses(x, y, training=False)
    assert float(stats["edges_per_node"]) == 15  # all 15 other nodes
    assert float(stats["graph_nodes"]) == 16


def _ce_of(model, x, y):
    """The per-example training cross-entropy of `compute_losses`, no dropout."""
    return model.compute_losses(x, y, training=False)[0]


def _isolated_ce(model, x, y):
    """The mean cross-entropy of the same head on each image alone (A = I)."""
    logits = model.head([model.features(x)[0], tf.eye(len(x))])
    return tf.reduce_mean(model._ce(y, logits))


def _grads(model, x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(_ce_of(model, x, y))
    return tape.gradient(loss, model.trainable_variables)


def _neighbour_target(model, x, y, lam):
    """(1 - lam) y + lam * the mean isolated softmax of every other image: the
    neighbour target where every pair is an edge (tau1 = -1)."""
    probs = tf.nn.softmax(model(x, graph="isolated")).numpy()
    others = (probs.sum(axis=0, keepdims=True) - probs) / (len(x) - 1)
    return tf.constant((1 - lam) * y + lam * others)


def test_isolated_ce_mixes_the_graph_and_isolated_losses():
    """--isolated_ce_weight=beta: ce = (CE(graph logits) + beta CE(A = I logits)) /
    (1 + beta); while the warm-up lasts the two are the same logits, so the loss
    is the paper's."""
    x, y = _data()
    paper = dict(tau1=-1.0, graph_backbone_grad=True, graph_head_grad=True, **TINY)
    plain = EAN(4, isolated_ce_weight=0.0, **paper)  # the paper's loss
    mixed = EAN(4, isolated_ce_weight=3.0, **paper)
    mixed.set_weights(plain.get_weights())
    for model in (plain, mixed):
        model.graph_enabled.assign(0.0)
    np.testing.assert_allclose(_ce_of(mixed, x, y), _ce_of(plain, x, y), rtol=1e-5)
    for model in (plain, mixed):
        model.graph_enabled.assign(1.0)
    ce_graph = keras.losses.categorical_crossentropy(
        y, plain(x, graph="batch"), from_logits=True
    )
    ce_alone = keras.losses.categorical_crossentropy(
        y, plain(x, graph="isolated"), from_logits=True
    )
    assert not np.allclose(ce_graph, ce_alone, atol=1e-4)
    np.testing.assert_allclose(
        _ce_of(mixed, x, y),
        (ce_graph + 3.0 * ce_alone) / 4.0,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="isolated_ce_weight"):
        EAN(4, isolated_ce_weight=-1.0, **TINY)


def test_neighbour_targets_mix_the_label_with_the_neighbours_predictions():
    """--neighbour_target_weight=lambda: the target of both cross-entropies is
    (1 - lambda) y + lambda * the mean isolated softmax of the node's similar
    neighbours, a constant for the gradient; while the warm-up lasts, and
    for a node with no neighbour, the target is the label. (Hard edges on the
    plain embedding, so that the loss's graph and the batch graph are the same
    function of the weights; the graph's terms in the backbone, as it was
    measured.)"""
    x, y = _data()
    kw = dict(
        embedding_norm="none",
        straight_through=False,
        graph_backbone_grad=True,
        graph_head_grad=True,
        **TINY,
    )
    plain = EAN(4, tau1=-1.0, **kw)  # every other node is a neighbour
    mixed = EAN(4, tau1=-1.0, neighbour_target_weight=0.4, **kw)
    lonely = EAN(4, tau1=1.0, neighbour_target_weight=0.4, **kw)
    for model in (mixed, lonely):
        model.set_weights(plain.get_weights())
    for model in (plain, mixed):
        model.graph_enabled.assign(0.0)
    np.testing.assert_allclose(_ce_of(mixed, x, y), _ce_of(plain, x, y), rtol=1e-6)
    for model in (plain, mixed, lonely):
        model.graph_enabled.assign(1.0)
    graph_plain = EAN(4, tau1=1.0, **kw)
    graph_plain.set_weights(plain.get_weights())
    graph_plain.graph_enabled.assign(1.0)
    np.testing.assert_allclose(  # no neighbour: the label alone
        _ce_of(lonely, x, y), _ce_of(graph_plain, x, y), rtol=1e-6
    )
    target = _neighbour_target(mixed, x, y, 0.4)

    def expected():
        def ce(logits):
            return keras.losses.categorical_crossentropy(
                target, logits, from_logits=True
            )

        return (ce(mixed(x, graph="batch")) + ce(mixed(x, graph="isolated"))) / 2

    np.testing.assert_allclose(_ce_of(mixed, x, y), expected(), rtol=1e-5)
    assert not np.allclose(  # the mixed target is not the label's loss
        expected(), _ce_of(plain, x, y), rtol=1e-3
    )
    weights = mixed.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        mine = tf.reduce_mean(_ce_of(mixed, x, y))
        theirs = tf.reduce_mean(expected())
    for w, g_mine, g_theirs in zip(
        weights,
        tape.gradient(mine, weights),
        tape.gradient(theirs, weights),
        strict=True,
    ):
        zero = np.zeros(w.shape, np.float32)  # the embedding's: None or zeros
        np.testing.assert_allclose(
            zero if g_mine is None else g_mine,
            zero if g_theirs is None else g_theirs,
            rtol=1e-4,
            atol=1e-6,
        )
    with pytest.raises(ValueError, match="neighbour_target_weight"):
        EAN(4, neighbour_target_weight=1.0, **TINY)


def _scoped(tau1):
    """A default EAN and two with neighbour targets (lambda 0.4), scopes
    isolated and both, with its weights and the graph on."""
    plain = EAN(4, tau1=tau1, **TINY)
    models = {
        scope: EAN(
            4,
            tau1=tau1,
            neighbour_target_weight=0.4,
            neighbour_target_scope=scope,
            **TINY,
        )
        for scope in ("isolated", "both")
    }
    for model in models.values():
        model.set_weights(plain.get_weights())
    for model in (plain, *models.values()):
        model.graph_enabled.assign(1.0)
    return plain, models


def test_neighbour_target_scope_isolated_keeps_the_stored_labels_in_the_graph():
    """--neighbour_target_scope=isolated: only the cross-entropy on each image
    alone learns from the mixed targets; the graph's keeps the stored labels, so
    the edges (the embedding, which only the graph's terms train) get the same
    gradient as without neighbour targets, where `both` changes it."""
    x, y = _data()
    plain, models = _scoped(-1.0)  # tau1 = -1: every graph is the full one
    target = _neighbour_target(plain, x, y, 0.4)

    def ce(targets, graph):
        logits = plain(x, graph=graph)
        return keras.losses.categorical_crossentropy(targets, logits, from_logits=True)

    expected = (ce(y, "batch") + ce(target, "isolated")) / 2
    np.testing.assert_allclose(_ce_of(models["isolated"], x, y), expected, rtol=1e-5)

    def embedding_grads(model):
        weights = model.embedding.trainable_variables
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(_ce_of(model, x, y))
        return [g.numpy() for g in tape.gradient(loss, weights)]

    plain, models = _scoped(0.0)  # edges whose relaxation has a gradient
    reference = embedding_grads(plain)
    assert np.abs(reference[0]).max() > 0  # the graph's ce trains the edges
    for g, g_ref in zip(embedding_grads(models["isolated"]), reference, strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4 * np.abs(g_ref).max())
    both = embedding_grads(models["both"])[0]
    assert np.abs(both - reference[0]).max() > 0.1 * np.abs(reference[0]).max()
    with pytest.raises(ValueError, match="neighbour_target_scope"):
        EAN(4, neighbour_target_scope="graph", **TINY)


def test_graph_target_mixing_mixes_the_labels_as_the_features_are_mixed():
    """--graph_target_mixing: the graph cross-entropy's target for node i is
    sum_j Â_ij y_j / sum_j Â_ij (Â the normalised adjacency its features are
    mixed with); the cross-entropy on each image alone keeps y. While the
    warm-up lasts (Â = I) the loss is the default's. (Hard edges on the plain
    embedding, so that the loss's graph is the batch graph.)"""
    keras.utils.set_random_seed(0)
    x, y = _data()
    y[0] = [0.5, 0.5, 0.0, 0.0]  # a label distribution mixes as a label does
    kw = dict(embedding_norm="none", straight_through=False, **TINY)
    probe = EAN(4, **kw)
    _, raw, _ = probe.encode(x, training=False)
    cs = adjacency.cosine_similarity(probe.graph_embeddings(raw)).numpy()
    tau1 = float(np.median(cs[~np.eye(len(x), dtype=bool)]))  # half the pairs
    plain = EAN(4, tau1=tau1, **kw)
    mixing = EAN(4, tau1=tau1, graph_target_mixing=True, **kw)
    for model in (plain, mixing):
        model.set_weights(probe.get_weights())
    for model in (plain, mixing):
        model.graph_enabled.assign(0.0)
    np.testing.assert_allclose(_ce_of(mixing, x, y), _ce_of(plain, x, y), rtol=1e-6)
    for model in (plain, mixing):
        model.graph_enabled.assign(1.0)
    _, raw, _ = mixing.encode(x, training=False)
    a, _ = mixing.batch_graph(mixing.graph_embeddings(raw))
    a_hat = mixing.normalize(a).numpy()
    degree = a.numpy().sum(axis=1) - np.diag(a.numpy())
    assert 0 < degree.min() and degree.mean() < len(x) - 1  # a partial graph
    target = (a_hat @ y) / a_hat.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(target.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(target, y, atol=0.05)

    def ce(t, logits):
        return keras.losses.categorical_crossentropy(t, logits, from_logits=True)

    expected = (
        ce(target, mixing(x, graph="batch")) + ce(y, mixing(x, graph="isolated"))
    ) / 2
    np.testing.assert_allclose(_ce_of(mixing, x, y), expected, rtol=1e-5)
    assert not np.allclose(_ce_of(plain, x, y), expected, rtol=1e-3)
    with pytest.raises(ValueError, match="graph_target_mixing"):
        EAN(4, graph_target_mixing=True, signed_edges=True, tau2=-0.3, **TINY)


def test_label_filter_leaves_out_the_labels_the_graph_disputes():
    """--neighbour_label_filter: once the graph is on, an image whose own isolated
    prediction and whose neighbours' mean prediction both name another class than
    its label leaves the loss; the kept images' mean keeps the batch's scale.
    While the warm-up lasts, and for an image with no neighbour, nothing changes."""
    x, y = _data()
    kw = dict(embedding_norm="none", straight_through=False, **TINY)
    plain = EAN(4, tau1=-1.0, **kw)  # every other node is a neighbour
    kept = EAN(4, tau1=-1.0, neighbour_label_filter=True, **kw)
    lonely = EAN(4, tau1=1.0, neighbour_label_filter=True, **kw)
    lonely_plain = EAN(4, tau1=1.0, **kw)
    for model in (kept, lonely, lonely_plain):
        model.set_weights(plain.get_weights())
    np.testing.assert_allclose(_ce_of(kept, x, y), _ce_of(plain, x, y), rtol=1e-6)
    for model in (plain, kept, lonely, lonely_plain):
        model.graph_enabled.assign(1.0)
    np.testing.assert_allclose(
        _ce_of(lonely, x, y), _ce_of(lonely_plain, x, y), rtol=1e-6
    )
    probs = tf.nn.softmax(plain(x, graph="isolated")).numpy()
    others = (probs.sum(axis=0, keepdims=True) - probs) / (len(x) - 1)
    labels = y.argmax(-1)
    disputed = (probs.argmax(-1) != labels) & (others.argmax(-1) != labels)
    assert 0 < disputed.sum() < len(x)  # the data exercises both cases
    ce = _ce_of(plain, x, y).numpy()
    expected = np.where(disputed, 0.0, ce) * len(x) / (len(x) - disputed.sum())
    np.testing.assert_allclose(_ce_of(kept, x, y), expected, rtol=1e-5)
    # With a confidence, only the disputes where both name their class with at
    # least that probability leave the loss.
    sure = np.minimum(probs.max(-1), others.max(-1))
    confidence = float(np.median(sure[disputed]))
    confident = EAN(
        4,
        tau1=-1.0,
        neighbour_label_filter=True,
        neighbour_label_filter_confidence=confidence,
        **kw,
    )
    confident.set_weights(plain.get_weights())
    confident.graph_enabled.assign(1.0)
    dropped = disputed & (sure >= confidence)
    assert 0 < dropped.sum() < disputed.sum()
    expected = np.where(dropped, 0.0, ce) * len(x) / (len(x) - dropped.sum())
    np.testing.assert_allclose(_ce_of(confident, x, y), expected, rtol=1e-5)
    # With a share, of each label's 4 images at most 2 leave the loss, those
    # whose label the own and neighbours' predictions find least likely first.
    bounded = EAN(
        4,
        tau1=-1.0,
        neighbour_label_filter=True,
        neighbour_label_filter_share=0.5,
        **kw,
    )
    bounded.set_weights(plain.get_weights())
    bounded.graph_enabled.assign(1.0)
    likely = (probs + others)[np.arange(len(x)), labels]
    dropped = np.zeros(len(x), bool)
    for c in range(4):
        ranked = [i for i in np.argsort(likely, kind="stable") if labels[i] == c]
        dropped[[i for i in ranked if disputed[i]][:2]] = True
    assert 0 < dropped.sum() < disputed.sum()  # the bound bites
    expected = np.where(dropped, 0.0, ce) * len(x) / (len(x) - dropped.sum())
    np.testing.assert_allclose(_ce_of(bounded, x, y), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="neighbour_label_filter_share"):
        EAN(4, neighbour_label_filter_share=0.0, **TINY)


def test_label_filter_waits_for_its_start_step():
    """--label_filter_warmup_epochs (as training sets it, an optimizer step):
    before that step the filter keeps every image, from it on it filters."""
    x, y = _data()
    kw = dict(embedding_norm="none", straight_through=False, tau1=-1.0, **TINY)
    plain = EAN(4, **kw)
    late = EAN(4, neighbour_label_filter=True, **kw)
    now = EAN(4, neighbour_label_filter=True, **kw)
    late.set_weights(plain.get_weights())
    now.set_weights(plain.get_weights())
    for model in (plain, late, now):
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        model.optimizer.build(model.trainable_variables)
        model.graph_enabled.assign(1.0)
    late.label_filter_from_step = 3
    filtered = _ce_of(now, x, y).numpy()
    assert (filtered == 0).any()  # the data exercises the filter
    late.optimizer.iterations.assign(2)
    np.testing.assert_allclose(_ce_of(late, x, y), _ce_of(plain, x, y), rtol=1e-6)
    late.optimizer.iterations.assign(3)
    np.testing.assert_allclose(_ce_of(late, x, y), filtered, rtol=1e-6)


def test_label_filter_share_bounds_each_label_and_breaks_ties_by_position():
    """The share is rounded down per label (3 images at 0.5: one may go) and,
    among equally unlikely labels, the first in the batch goes first."""
    model = EAN(
        4, neighbour_label_filter=True, neighbour_label_filter_share=0.5, **TINY
    )
    labels = tf.constant([0, 0, 0, 1, 1, 2], tf.int64)
    # Every image's own and neighbours' predictions name class 3: all disputed.
    own = np.full((6, 4), 0.1, np.float32)
    own[:, 3] = 0.7
    own[1, 0] = own[4, 1] = 0.05  # the least likely of their labels
    mean = own.copy()
    degree = tf.ones((6, 1))
    keep = model._undisputed(labels, own, mean, degree).numpy()
    # label 0: floor(1.5) = 1 goes (image 1); label 1: 1 goes (image 4);
    # label 2: floor(0.5) = 0.
    np.testing.assert_array_equal(keep, [1, 0, 1, 1, 0, 1])
    own[4, 1] = 0.1  # images 3 and 4 now tie: the first goes
    keep = model._undisputed(labels, own, own.copy(), degree).numpy()
    np.testing.assert_array_equal(keep, [1, 0, 1, 0, 1, 1])
    unbounded = model._undisputed(labels, own, own.copy(), degree, share=1.0)
    np.testing.assert_array_equal(unbounded.numpy(), np.zeros(6))


def test_own_feature_grad_keeps_the_logits_and_drops_the_neighbours_gradient():
    """--neighbour_feature_grad=False: the head's logits are still Â X W + b, but
    d(sum R * logits)/dX is diag(Â) R W^T (each node's own row) instead of
    Â^T R W^T, and the kernel's gradient is unchanged. In the model the loss
    and every gradient but the backbone's are the graph-in-backbone EAN's (on
    which it was measured; with the default, the graph's terms never reach the
    backbone)."""
    rng = np.random.default_rng(0)
    head = GCNHead((), 3)
    head.build([(None, 5), (None, None)])
    x = tf.constant(rng.normal(size=(6, 5)), tf.float32)
    a = rng.random((6, 6)).astype(np.float32)
    a = (a + a.T) / 2
    r = rng.normal(size=(6, 3)).astype(np.float32)
    out = {}
    for flag in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = head([x, tf.constant(a)], neighbour_grad=flag)
            loss = tf.reduce_sum(logits * r)
        out[flag] = (logits, *tape.gradient(loss, [x, head.convs[0].kernel]))
    kernel = head.convs[0].kernel.numpy()
    np.testing.assert_allclose(out[False][0], out[True][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[True][1], a.T @ r @ kernel.T, rtol=1e-4, atol=1e-5)
    own = np.diag(a)[:, None] * (r @ kernel.T)
    np.testing.assert_allclose(out[False][1], own, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[False][2], out[True][2], rtol=1e-4, atol=1e-5)

    x, y = _data()
    # every pair an edge; the graph's terms in the backbone and the head
    kw = dict(tau1=-1.0, graph_backbone_grad=True, graph_head_grad=True, **TINY)
    plain = EAN(4, **kw)
    own_only = EAN(4, neighbour_feature_grad=False, **kw)
    own_only.set_weights(plain.get_weights())
    for model in (plain, own_only):  # the warm-up (A = I): the same floats
        model.graph_enabled.assign(0.0)
    for g0, g1 in zip(*(_grads(m, x, y) for m in (plain, own_only)), strict=True):
        if g0 is not None:
            np.testing.assert_array_equal(g0, g1)
    for model in (plain, own_only):
        model.graph_enabled.assign(1.0)
    np.testing.assert_allclose(_ce_of(own_only, x, y), _ce_of(plain, x, y), rtol=1e-6)
    grads = [_grads(m, x, y) for m in (plain, own_only)]
    backbone = {id(v) for v in plain.backbone.trainable_variables}
    differ = []
    pairs = zip(plain.trainable_variables, *grads, strict=True)
    for v, g0, g1 in pairs:
        if g0 is None:
            assert g1 is None, v.path
            continue
        same = np.allclose(g0, g1, rtol=1e-4, atol=1e-6)
        assert same or id(v) in backbone, v.path
        differ.append(not same)
    assert any(differ)  # the backbone's gradient is not plain's


def test_graph_backbone_grad_off_trains_the_backbone_on_the_isolated_ce_alone():
    """--graph_backbone_grad=False (the default): the loss is the paper's way's
    (True), (CE_graph + beta CE_isolated) / (1 + beta) + alpha Adj_loss, and so
    are the gradients of the embedding and the head; the backbone's is that of
    CE_isolated alone, at full weight. While the warm-up lasts every gradient is
    the paper's way's, to float rounding (bit-equal on some CPUs, not on all: the
    two sum the same terms in another order). Without a weight on CE_isolated
    nothing would train the backbone: an error."""
    x, y = _data()
    # some edges, and Adj_loss's sigmoids not flat; the graph's terms in the head
    kw = dict(tau1=0.0, graph_head_grad=True, **TINY)
    coupled = EAN(4, isolated_ce_weight=2.0, graph_backbone_grad=True, **kw)
    detached = EAN(4, isolated_ce_weight=2.0, **kw)
    assert not detached.graph_backbone_grad  # the default
    detached.set_weights(coupled.get_weights())
    warm = [EAN(4, graph_backbone_grad=flag, **kw) for flag in (True, False)]
    warm[1].set_weights(warm[0].get_weights())
    for g0, g1 in zip(*(_grads(m, x, y) for m in warm), strict=True):
        if g0 is not None:  # the warm-up (A = I): beta = 1 scales by 1/2, then 2
            np.testing.assert_allclose(g0, g1, rtol=1e-5, atol=1e-6)

    def grads(model, loss_of):  # one gradient per trainable variable, in order
        with tf.GradientTape() as tape:
            loss = loss_of(model)
        return tape.gradient(loss, model.trainable_variables)

    def total(model):
        ce, adj_value, _, _ = model.compute_losses(x, y, training=False)
        return tf.reduce_mean(ce) + adj_value

    for model in (coupled, detached):
        model.graph_enabled.assign(1.0)
    np.testing.assert_allclose(_ce_of(detached, x, y), _ce_of(coupled, x, y), rtol=1e-6)
    got, alone, by_coupled = (
        grads(detached, total),
        grads(detached, lambda model: _isolated_ce(model, x, y)),
        grads(coupled, total),
    )
    backbone = {id(v) for v in detached.backbone.trainable_variables}
    for v, g, g_alone, g_coupled in zip(
        detached.trainable_variables, got, alone, by_coupled, strict=True
    ):
        if id(v) in backbone:
            np.testing.assert_allclose(g, g_alone, rtol=1e-4, atol=1e-6)
            assert not np.allclose(g, g_coupled, rtol=1e-4, atol=1e-6), v.path
        elif g is not None:
            np.testing.assert_allclose(g, g_coupled, rtol=1e-4, atol=1e-6)
    ids = [id(v) for v in detached.trainable_variables]
    embedding = got[ids.index(id(detached.embedding.kernel))]
    assert np.abs(embedding).max() > 0  # the graph's terms still train it
    with pytest.raises(ValueError, match="isolated_ce_weight"):
        EAN(4, isolated_ce_weight=0.0, **TINY)


def test_graph_head_grad_off_trains_head_and_backbone_on_the_isolated_ce_alone():
    """--graph_head_grad=false (the default since 2026-12-05): the head's logits
    are the same, the graph's cross-entropy gives its kernel and bias no
    gradient, and in the model the loss is the paper's way's (true) while the
    head and the backbone get the gradient of CE_isolated alone, at full weight,
    as a linear twin's; the graph's terms still train the embedding (through the
    straight-through edges). With the graph's terms in the backbone: an error."""
    rng = np.random.default_rng(0)
    head = GCNHead((), 3)
    head.build([(None, 5), (None, None)])
    x = tf.constant(rng.normal(size=(6, 5)), tf.float32)
    a = tf.constant(rng.random((6, 6)).astype(np.float32))
    out = {}
    for flag in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([x, a])
            logits = head([x, a], weight_grad=flag)
            loss = tf.reduce_sum(logits * rng.normal(size=(6, 3)).astype(np.float32))
        out[flag] = logits, tape.gradient(loss, head.convs[0].kernel)
    np.testing.assert_array_equal(out[False][0], out[True][0])
    assert out[False][1] is None and np.abs(out[True][1]).max() > 0

    keras.utils.set_random_seed(0)
    x, y = _data()
    kw = dict(tau1=0.0, isolated_ce_weight=2.0, **TINY)  # some edges
    in_head = EAN(4, graph_head_grad=True, **kw)  # the paper's way
    edges_only = EAN(4, **kw)
    assert not edges_only.graph_head_grad  # the default
    edges_only.set_weights(in_head.get_weights())
    for model in (in_head, edges_only):
        model.graph_enabled.assign(1.0)
    np.testing.assert_allclose(_ce_of(edges_only, x, y), _ce_of(in_head, x, y))

    with tf.GradientTape(persistent=True) as tape:
        got = tf.reduce_mean(_ce_of(edges_only, x, y))
        alone = _isolated_ce(edges_only, x, y)  # at full weight
    v = edges_only.trainable_variables
    got, alone = tape.gradient(got, v), tape.gradient(alone, v)
    in_head_grads = _grads(in_head, x, y)
    twin_like = {id(w) for w in edges_only.backbone.trainable_variables}
    twin_like |= {id(w) for w in edges_only.head.trainable_variables}
    for w, g, g_alone, g_in_head in zip(v, got, alone, in_head_grads, strict=True):
        if id(w) in twin_like:
            np.testing.assert_allclose(g, g_alone, rtol=1e-4, atol=1e-6)
            if id(w) in {id(u) for u in edges_only.head.trainable_variables}:
                assert not np.allclose(g, g_in_head, rtol=1e-4, atol=1e-6), w.path
    embedding = got[[id(w) for w in v].index(id(edges_only.embedding.kernel))]
    assert np.abs(embedding).max() > 0  # the graph's cross-entropy still trains it
    with pytest.raises(ValueError, match="graph_head_grad"):
        EAN(4, graph_head_grad=False, graph_backbone_grad=True, **TINY)


def test_gcn_head_gradient_paths_under_mixed_precision():
    """Under the mixed_float16 policy (--mixed_precision), in a float32 head as
    EAN builds it, the head's own paths (`weight_grad=False`, the default's
    graph cross-entropy, and `neighbour_grad=False`) compute in GCNConv's dtype
    and give its logits."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        rng = np.random.default_rng(0)
        head = GCNHead((8,), 3, dtype="float32")  # its dropouts: mixed_float16
        head.build([(None, 5), (None, None)])
        x = tf.constant(rng.normal(size=(6, 5)), tf.float32)
        a = tf.constant(rng.random((6, 6)) / 6, tf.float32)
        want = head([x, a])
        for kw in (dict(weight_grad=False), dict(neighbour_grad=False)):
            got = head([x, a], **kw)
            assert got.dtype == tf.float32
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_self_weight_mixes_the_isolated_and_graph_logits_in_training_and_serving():
    """--self_weight=alpha: Â -> alpha I + (1 - alpha) Â. With one GCN layer the
    logits are alpha * isolated + (1 - alpha) * graph, in the training loss as in
    the batch and context graphs; the setting survives saving. (No embedding
    norm, so that the loss's graph and the batch graph have the same edges.)"""
    x, y = _data()
    kw = dict(
        tau1=0.0,
        context_size=15,
        embedding_norm="none",
        isolated_ce_weight=0.0,  # the loss on the graph logits alone
        graph_backbone_grad=True,
        graph_head_grad=True,
        **TINY,
    )
    plain = EAN(4, **kw)
    weighted = EAN(4, self_weight=0.3, **kw)
    weighted.set_weights(plain.get_weights())
    for model in (plain, weighted):
        model.graph_enabled.assign(1.0)
        model.build_context([x[::-1][:15]])
    for graph in ("batch", "context"):
        want = 0.3 * plain(x, graph="isolated") + 0.7 * plain(x, graph=graph)
        assert not np.allclose(want, plain(x, graph=graph), atol=1e-4)
        np.testing.assert_allclose(weighted(x, graph=graph), want, atol=1e-5)
    np.testing.assert_allclose(
        weighted(x, graph="isolated"), plain(x, graph="isolated"), atol=1e-6
    )
    graph_ce = _ce_of(weighted, x, y)
    want = 0.3 * plain(x, graph="isolated") + 0.7 * plain(x, graph="batch")
    np.testing.assert_allclose(
        graph_ce,
        keras.losses.categorical_crossentropy(y, want, from_logits=True),
        rtol=1e-5,
    )
    assert weighted.get_config()["self_weight"] == 0.3
    assert EAN.from_config(weighted.get_config()).self_weight == 0.3
    with pytest.raises(ValueError, match="self_weight"):
        EAN(4, self_weight=1.0, **TINY)


def test_warmup_callback_flips_the_variable():
    model = EAN(4, **TINY)
    callback = AdjacencyWarmup(2)
    callback.set_model(model)
    flags = []
    for epoch in range(4):
        callback.on_epoch_begin(epoch)
        flags.append(float(model.graph_enabled.numpy()))
    assert flags == [0, 0, 1, 1]


def test_adj_loss_gradient_reaches_the_embedding():
    model = EAN(4, tau1=0.0, temperature=0.5, **TINY)
    model.graph_enabled.assign(1.0)
    x, y = _data()
    with tf.GradientTape() as tape:
        _, adj_value, _, _ = model.compute_losses(x, y)
    grad = tape.gradient(adj_value, model.embedding.kernel)
    assert grad is not None and float(tf.reduce_sum(tf.abs(grad))) > 0


@pytest.mark.parametrize("head", ["ean", "linear"])
def test_fit_lowers_the_loss(head):
    keras.utils.set_random_seed(0)
    model = EAN(4, head=head, tau1=0.3, **TINY)
    model.graph_enabled.assign(1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    x, y = _data(32)
    history = model.fit(x, y, batch_size=16, epochs=8, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def _trained_bank_model():
    keras.utils.set_random_seed(1)
    model = EAN(4, tau1=0.0, **TINY)
    model.graph_enabled.assign(1.0)
    x, y = _data(32)
    counts = model.build_bank([(x, y)])
    assert sum(counts.values()) == 8
    assert float(tf.reduce_sum(model.bank.valid)) == 8
    return model, x


def test_bank_mode_answer_does_not_depend_on_the_batch():
    model, x = _trained_bank_model()
    alone = model(x[:1], graph="bank").numpy()
    among = model(x, graph="bank").numpy()[:1]
    padded = model(np.repeat(x[:1], 5, axis=0), graph="bank").numpy()
    np.testing.assert_allclose(alone, among, atol=1e-5)
    np.testing.assert_allclose(np.repeat(alone, 5, axis=0), padded, atol=1e-5)
    # The batch graph, by contrast, does mix the batch.
    b_alone = model(x[:1], graph="batch").numpy()
    b_among = model(x, graph="batch").numpy()[:1]
    assert not np.allclose(b_alone, b_among, atol=1e-5)
    # The bank is used: bank and isolated answers differ.
    assert not np.allclose(alone, model(x[:1], graph="isolated").numpy(), atol=1e-5)


def test_keras_file_reloads_in_a_new_process(tmp_path):
    model, x = _trained_bank_model()
    path = str(tmp_path / "ean.keras")
    model.save(path)
    np.save(tmp_path / "x.npy", x[:6])
    np.save(tmp_path / "expected.npy", model(x[:6]).numpy())
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {ROOT!r})
        import numpy as np, keras
        import ean_tf
        model = keras.models.load_model({path!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        expected = np.load({str(tmp_path / "expected.npy")!r})
        got = model(x).numpy()
        assert type(model).__name__ == "EAN", type(model)
        assert model.inference_graph == "nearest"
        np.testing.assert_allclose(got, expected, atol=1e-5)
        print("RELOAD_OK")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert "RELOAD_OK" in result.stdout, result.stderr[-3000:]


def test_config_round_trip():
    model = EAN(
        4,
        tau2=-0.5,
        signed_edges=True,
        isolated_ce_weight=0.5,
        class_names=list("abcd"),
        **TINY,
    )
    clone = EAN.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert clone.count_params() == model.count_params()


@pytest.mark.parametrize(
    "tau2,signed,units,alpha",
    [
        (-math.inf, False, (16, 8), 0.0),
        (-0.2, False, (16, 8), 0.0),
        (-0.2, True, (16, 8), 0.0),
        (-0.2, False, (), 0.0),  # one GCN layer: the linear head on aggregated features
        (-0.2, False, (16, 8), 0.4),  # --self_weight
    ],
)
def test_cached_bank_forward_equals_the_full_bank_graph(tau2, signed, units, alpha):
    keras.utils.set_random_seed(2)
    model = EAN(
        4,
        tau1=0.1,
        tau2=tau2,
        signed_edges=signed,
        gcn_units=units,
        self_weight=alpha,
        **TINY,
    )
    model.graph_enabled.assign(1.0)
    x, y = _data(24)
    labels = np.eye(4, dtype=np.float32)[[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 0, 1]]
    model.build_bank([(x[:12], labels)])  # class 3 has one sample: a slot stays empty
    assert float(tf.reduce_sum(model.bank.valid)) == 7
    q = x[12:]
    np.testing.assert_allclose(
        model(q, graph="bank"), model(q, graph="bank_full"), atol=1e-5
    )
    model.graph_enabled.assign(0.0)  # warm-up: the bank graph is I
    np.testing.assert_allclose(
        model(q, graph="bank"), model(q, graph="isolated"), atol=1e-5
    )
