"""The served (nearest) graph, its store and its selection, and the graph maths
it shares with training (the same embedding statistics)."""


import keras
import numpy as np
import pytest
from conftest import run_cli

from ean_tf.config import ConfigError, make_config
from ean_tf.models import adjacency as adj
from ean_tf.models.ean import EAN
from ean_tf.models.memory import memory_images, prior_counts

TINY = dict(image_size=32, width=8, embedding_dim=16)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)


def test_prior_counts_follow_the_class_prior_and_sum_to_size():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)
    assert prior_counts(labels, 10, 4).tolist() == [5, 3, 2, 0]  # 1.5, 0.5: ties
    assert prior_counts(labels, 63, 4).sum() == 63
    assert prior_counts(labels, 63, 5)[4] == 0  # a class without images


def test_memory_images_are_seeded_and_class_proportional():
    rng = np.random.default_rng(0)
    labels = rng.choice(4, 400, p=[0.5, 0.3, 0.15, 0.05])
    pick = memory_images(labels, 63, seed=1)
    assert len(set(pick.tolist())) == 63 and list(pick) == sorted(pick)
    np.testing.assert_array_equal(
        np.bincount(labels[pick], minlength=4), prior_counts(labels, 63, 4)
    )
    np.testing.assert_array_equal(pick, memory_images(labels, 63, seed=1))
    assert not np.array_equal(pick, memory_images(labels, 63, seed=2))
    np.testing.assert_array_equal(memory_images(labels, 400), np.arange(400))


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
    the isolated network; filling it, or asking a run's evaluation for it, is a
    clear error, not a mislabelled answer."""
    from ean_tf.evaluate import evaluation_graphs
    from ean_tf.served import check_graph

    bare = EAN(4, **TINY)
    bare.graph_enabled.assign(1.0)
    assert bare.inference_graph == "nearest" and bare.memory is None
    x = _images(3, seed=15)
    np.testing.assert_allclose(bare(x), bare(x, graph="isolated"), atol=1e-6)
    with pytest.raises(ValueError, match=r"memory_size=0\): build it with EAN"):
        bare.build_memory([x])
    with pytest.raises(ValueError, match="old.keras stores no training images"):
        check_graph(bare, "nearest", "old.keras")
    check_graph(bare, "batch", "old.keras")
    assert evaluation_graphs(bare) == ("nearest", "batch", "isolated")
    bare.set_inference_graph("batch")
    assert evaluation_graphs(bare) == ("batch", "isolated")


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
    """A model built without a store, serving the batch graph, evaluated with
    the default flags: one line naming the file and the flag to pass, before any
    data is read."""
    path = str(tmp_path / "old.keras")
    EAN(4, inference_graph="batch", **TINY).save(path)
    result = run_cli("--mode=eval", f"--checkpoint={path}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(f"error: --inference_graph=nearest: {path} stores no")
    assert last.endswith("pass --inference_graph=batch.")
