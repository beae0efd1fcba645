"""The served (context) graph, its selection, and the graph maths it shares with
training: one source of defaults, and the same embedding statistics."""

import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ean_tf.config import ConfigError, ModelConfig, make_config
from ean_tf.models import adjacency as adj
from ean_tf.models.ean import EAN
from ean_tf.models.reference import prior_counts, select_context

TINY = dict(image_size=32, width=8, embedding_dim=16, bank_per_class=2)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)


def _context_model(sets=1, size=7, tau1=0.0, seed=3, **kwargs):
    keras.utils.set_random_seed(seed)
    model = EAN(4, tau1=tau1, context_size=size, context_sets=sets, **TINY, **kwargs)
    model.graph_enabled.assign(1.0)
    context = _images(sets * size, seed=10)
    model.build_context([context])
    return model, context


def test_prior_counts_follow_the_class_prior_and_sum_to_size():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)
    assert prior_counts(labels, 10, 4).tolist() == [5, 3, 2, 0]  # 1.5, 0.5: ties
    assert prior_counts(labels, 63, 4).sum() == 63
    assert prior_counts(labels, 63, 5)[4] == 0  # a class without images


def test_select_context_is_disjoint_seeded_and_class_proportional():
    rng = np.random.default_rng(0)
    labels = rng.choice(4, 400, p=[0.5, 0.3, 0.15, 0.05])
    pick = select_context(labels, 63, sets=3, seed=1)
    assert pick.shape == (3, 63)
    assert len(np.unique(pick)) == 3 * 63  # the sets are disjoint
    want = prior_counts(labels, 63, 4)
    for row in pick:
        np.testing.assert_array_equal(np.bincount(labels[row], minlength=4), want)
    np.testing.assert_array_equal(pick, select_context(labels, 63, 3, seed=1))
    assert not np.array_equal(pick, select_context(labels, 63, 3, seed=2))
    # A class too small for disjoint sets is drawn again, never left short.
    few = np.array([0] * 40 + [1] * 2)
    pick = select_context(few, 21, sets=4, seed=0)
    assert all(np.sum(few[row] == 1) == 1 for row in pick)
    with pytest.raises(ValueError, match="only 42 training images"):
        select_context(few, 50)


def test_context_graph_is_the_training_batch_completed_by_the_query():
    """Each query's answer is the batch graph of [context; query]: the edges,
    degrees and embedding statistics of a training batch of size + 1 nodes."""
    model, context = _context_model(size=7)
    queries = _images(3, seed=5)
    got = model(queries, graph="context").numpy()
    for i, q in enumerate(queries):
        batch = np.concatenate([context, q[None]])
        want = model(batch, graph="batch").numpy()[-1]
        np.testing.assert_allclose(got[i], want, atol=1e-5)
    assert not np.allclose(got, model(queries, graph="isolated"), atol=1e-4)


def test_context_sets_average_their_logits():
    model, context = _context_model(sets=2, size=5)
    q = _images(1, seed=6)
    want = np.mean(
        [
            model(np.concatenate([context[s * 5 : s * 5 + 5], q]), graph="batch")[-1]
            for s in range(2)
        ],
        axis=0,
    )
    np.testing.assert_allclose(model(q, graph="context")[0], want, atol=1e-5)


def test_context_answer_does_not_depend_on_the_batch():
    model, _ = _context_model(size=7)
    x = _images(9, seed=7)
    alone = model(x[:1], graph="context").numpy()
    among = model(x, graph="context").numpy()[:1]
    padded = model(np.repeat(x[:1], 4, axis=0), graph="context").numpy()
    np.testing.assert_allclose(alone, among, atol=1e-5)
    np.testing.assert_allclose(np.repeat(alone, 4, axis=0), padded, atol=1e-5)


def test_context_is_isolated_during_warmup_and_before_it_is_filled():
    model, _ = _context_model()
    x = _images(4, seed=8)
    model.graph_enabled.assign(0.0)
    np.testing.assert_allclose(
        model(x, graph="context"), model(x, graph="isolated"), atol=1e-5
    )
    empty = EAN(4, tau1=-1.0, context_size=5, **TINY)  # every pair an edge
    empty.graph_enabled.assign(1.0)
    np.testing.assert_allclose(
        empty(x, graph="context"), empty(x, graph="isolated"), atol=1e-5
    )


def test_inference_graph_uses_the_training_embedding_statistics():
    """The batch graph at inference normalises the embedding with the graph's
    own statistics, as batch norm does in training, not the moving ones."""
    keras.utils.set_random_seed(4)
    model = EAN(4, tau1=0.2, **TINY)
    model.graph_enabled.assign(1.0)
    bn = model.embedding_bn
    bn.moving_mean.assign(np.full(bn.moving_mean.shape, 0.3, np.float32))
    bn.moving_variance.assign(np.full(bn.moving_variance.shape, 4.0, np.float32))
    pooled, raw, _ = model.encode(_images(16, seed=9))
    trained = model.embedding_bn(raw, training=True)  # what training builds on
    a_train, cs_train = model.batch_graph(trained)
    a_infer, cs_infer = model.batch_graph(model.graph_embeddings(raw))
    np.testing.assert_allclose(cs_infer, cs_train, atol=1e-5)
    np.testing.assert_allclose(a_infer, a_train, atol=1e-6)
    want = model.head([pooled, adj.normalized_adjacency(a_train)])
    np.testing.assert_allclose(model.classify(pooled, raw, "batch"), want, atol=1e-5)


def test_constructor_defaults_are_the_config_defaults():
    model = EAN(4, image_size=32)
    config = model.get_config()
    defaults = ModelConfig()
    for f in dataclasses.fields(ModelConfig):
        if f.name in config and f.name not in ("num_classes", "context_size"):
            want = getattr(defaults, f.name)
            want = list(want) if isinstance(want, tuple) else want
            assert config[f.name] == want, f.name
    # context_size 0 in the config means "a training batch minus one"
    assert config["context_size"] == make_config().train.batch_size - 1
    assert config["gcn_units"] == [] and config["gcn_dropout"] == 0.0
    assert config["straight_through"] is True and config["adj_reduction"] == "mean"
    assert config["inference_graph"] == "nearest"
    assert config["isolated_ce_weight"] == 1.0
    assert config["graph_backbone_grad"] is config["graph_head_grad"] is False


def test_default_path_gradient_reaches_the_embedding_through_the_graph():
    """Straight-through edges (the default): the cross-entropy alone moves the
    embedding, through Â."""
    keras.utils.set_random_seed(5)
    model = EAN(4, tau1=0.0, adj_loss_weight=0.0, **TINY)
    model.graph_enabled.assign(1.0)
    x = _images(16, seed=11)
    y = np.eye(4, dtype=np.float32)[np.arange(16) % 4]
    with tf.GradientTape() as tape:
        ce, _, _, _ = model.compute_losses(x, y)
        loss = tf.reduce_mean(ce)
    grad = tape.gradient(loss, model.embedding.kernel)
    assert grad is not None and float(tf.reduce_sum(tf.abs(grad))) > 0


def test_warmup_must_end_before_training_does():
    with pytest.raises(ConfigError, match="adj_warmup_epochs.*fewer than --epochs=3"):
        make_config("tiny", epochs=3, adj_warmup_epochs=3)
    make_config("tiny", epochs=3, adj_warmup_epochs=2)
    make_config("tiny", epochs=3, adj_warmup_epochs=3, head="linear")  # no graph
    for preset in ("default", "tiny", "ferplus48", "ferplus48_gpu", "ferplus"):
        config = make_config(preset)
        assert config.model.gcn_units == () and config.model.gcn_dropout == 0.0


def _nearest_model(size=12, tau1=0.0, seed=3, **kwargs):
    keras.utils.set_random_seed(seed)
    model = EAN(4, tau1=tau1, memory_size=size, **TINY, **kwargs)
    model.graph_enabled.assign(1.0)
    memory = _images(size - 2, seed=12)  # two slots stay empty
    model.build_memory([memory[:5], memory[5:]])
    return model, memory


def test_nearest_graph_averages_the_query_and_its_nearest_stored_images():
    """Against the maths written out in NumPy: the k most similar stored images
    (cosine of embeddings normalised with the stored images' statistics), those
    >= tau1, each a node alone, so the query's logits are their mean with its own."""
    model, memory = _nearest_model(tau1=0.2, nearest_k=3)
    x = _images(6, seed=13)
    pooled, raw, _ = model.encode(x)
    alone = model.classify(pooled, raw, "isolated").numpy()
    m_pooled, m_raw, _ = model.encode(memory)
    m_logits = model.classify(m_pooled, m_raw, "isolated").numpy()
    bn = model.embedding_bn
    mean, var = m_raw.numpy().mean(0), m_raw.numpy().var(0)

    def unit(r):
        e = (r - mean) / np.sqrt(var + bn.epsilon) * bn.gamma.numpy() + bn.beta.numpy()
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    cs = unit(raw.numpy()) @ unit(m_raw.numpy()).T  # (6, 10)
    want = []
    for q in range(len(x)):
        top = np.argsort(-cs[q])[:3]
        top = top[cs[q, top] >= 0.2]
        want.append((alone[q] + m_logits[top].sum(0)) / (1 + len(top)))
    got = model(x, graph="nearest").numpy()
    np.testing.assert_allclose(got, np.stack(want), atol=1e-4)
    assert not np.allclose(got, alone, atol=1e-4)  # some queries have edges
    # A query's answer does not depend on the rest of the batch.
    np.testing.assert_allclose(
        model(x[:1], graph="nearest").numpy(), got[:1], atol=1e-5
    )


def test_nearest_graph_passes_on_its_neighbours_training_targets():
    """--nearest_label_weight=w: the answer's softmax is (1 - w) the nearest
    graph's probabilities and w the mean training target of the stored images
    the query is joined to; a query with no edge keeps the graph's answer."""
    model, memory = _nearest_model(tau1=0.45, nearest_k=3)
    targets = np.eye(4, dtype=np.float32)[np.arange(len(memory)) % 4]
    targets[1] = [0.5, 0.0, 0.25, 0.25]  # a label distribution (FERPlus's soft modes)
    model.build_memory([memory[:5], memory[5:]], targets)
    x = _images(8, seed=13)
    model.set_nearest_label_weight(0.0)
    graph = model(x, graph="nearest").numpy()  # w = 0: targets stored, not used
    cs, idx = (t.numpy() for t in model.memory.neighbours(model.encode(x)[1], 3))
    model.set_nearest_label_weight(0.3)  # drops the traced functions
    got = keras.ops.softmax(model(x, graph="nearest")).numpy()
    want = keras.ops.softmax(graph).numpy()
    for q in range(len(x)):
        joined = idx[q][cs[q] >= 0.45]
        if len(joined):
            want[q] = 0.7 * want[q] + 0.3 * targets[joined].mean(axis=0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, keras.ops.softmax(graph).numpy(), atol=1e-3)
    assert (cs[:, 0] < 0.45).any() and (
        cs[:, 0] >= 0.45
    ).any()  # queries with and without edges
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    # A query with no edge answers with the graph's own logits, not only its
    # probabilities: there the nearest graph is exactly the network alone.
    alone = cs[:, 0] < 0.45
    got_logits = model(x, graph="nearest").numpy()
    np.testing.assert_allclose(got_logits[alone], graph[alone], atol=1e-6)
    with pytest.raises(ValueError, match="nearest_label_weight"):
        model.set_nearest_label_weight(1.0)
    assert model.nearest_label_weight == 0.3


def test_a_model_saved_before_the_nearest_graph_stored_targets_loads(tmp_path):
    """Its store has five weights, not six: it loads, and its neighbours pass on
    no target, so with any label weight it answers as it did."""
    import shutil
    import zipfile

    import h5py

    model, _ = _nearest_model(tau1=0.2, nearest_label_weight=0.5)
    path, old = str(tmp_path / "new.keras"), str(tmp_path / "old.keras")
    model.save(path)
    with zipfile.ZipFile(path) as z:
        z.extractall(tmp_path / "unzipped")
    with h5py.File(tmp_path / "unzipped" / "model.weights.h5", "a") as f:
        del f["layers/reference_memory/vars/5"]  # the targets, stored last
    shutil.make_archive(old[: -len(".keras")], "zip", tmp_path / "unzipped")
    os.rename(old[: -len(".keras")] + ".zip", old)
    again = keras.models.load_model(old)
    assert not again.memory.targets.numpy().any()
    x = _images(3, seed=15)
    np.testing.assert_allclose(again(x), model(x), atol=1e-5)  # none stored either
    assert again.nearest_label_weight == 0.5


def test_nearest_graph_is_isolated_without_edges_and_during_warmup():
    """Its logits equal the network alone's during the warm-up, labels stored
    and weighed or not, and in a store never filled."""
    model, memory = _nearest_model(tau1=0.2)
    model.set_nearest_label_weight(0.25)
    model.build_memory([memory], np.eye(4, dtype="float32")[np.arange(10) % 4])
    x = _images(4, seed=14)
    model.graph_enabled.assign(0.0)
    np.testing.assert_allclose(
        model(x, graph="nearest"), model(x, graph="isolated"), atol=1e-5
    )
    empty = EAN(4, tau1=-1.0, memory_size=5, **TINY)  # never filled
    empty.graph_enabled.assign(1.0)
    np.testing.assert_allclose(
        empty(x, graph="nearest"), empty(x, graph="isolated"), atol=1e-5
    )


def test_a_model_without_stored_images_serves_the_network_alone():
    """The default graph of a model built without its store (memory_size 0) is
    the isolated network, as an unfilled context is; filling it, or asking a
    run's evaluation for it, is a clear error, not a mislabelled answer."""
    from ean_tf.evaluate import evaluation_graphs
    from ean_tf.predict import check_graph

    bare = EAN(4, **TINY)
    bare.graph_enabled.assign(1.0)
    assert bare.inference_graph == "nearest" and bare.memory is None
    x = _images(3, seed=15)
    np.testing.assert_allclose(bare(x), bare(x, graph="isolated"), atol=1e-6)
    with pytest.raises(ValueError, match=r"memory_size=0\): build it with EAN"):
        bare.build_memory([x])
    with pytest.raises(ValueError, match="old.keras stores no training images"):
        check_graph(bare, "nearest", "old.keras")
    check_graph(bare, "context", "old.keras")
    served_first = ("nearest", "context", "bank", "batch", "isolated")
    assert evaluation_graphs(bare) == served_first
    bare.set_inference_graph("context")  # a model saved before the nearest graph
    assert evaluation_graphs(bare) == ("context", "bank", "batch", "isolated")


def test_nearest_graph_round_trips(tmp_path):
    model, _ = _nearest_model(tau1=0.2)
    assert model.inference_graph == "nearest"  # the default
    path = str(tmp_path / "nearest.keras")
    model.save(path)
    again = keras.models.load_model(path)
    assert again.memory_size == 12 and again.inference_graph == "nearest"
    x = _images(3, seed=15)
    np.testing.assert_allclose(again(x), model(x), atol=1e-5)
    assert not np.allclose(again(x), again(x, graph="isolated"), atol=1e-4)


def test_eval_of_a_model_without_stored_images_says_so_in_one_line(tmp_path):
    """A model saved before the nearest graph existed (serving context, no store)
    evaluated with the default flags: one line naming the file and the flag to
    pass, before any data is read."""
    path = str(tmp_path / "old.keras")
    EAN(4, inference_graph="context", **TINY).save(path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "run.py", "--mode=eval", f"--checkpoint={path}"],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=600,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(f"error: --inference_graph=nearest: {path} stores no")
    assert last.endswith("pass --inference_graph=context.")
