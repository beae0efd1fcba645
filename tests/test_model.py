import dataclasses
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from ean_tf.models import backbones, objective
from ean_tf.models.ean import EAN, FORMAT_VERSION, AdjacencyWarmup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=32, width=8, embedding_dim=16)


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
    with pytest.raises(ValueError, match="tau2 < tau1"):
        EAN(4, tau1=0.1, tau2=0.5, **TINY)
    with pytest.raises(ValueError, match="objective split or paper"):
        EAN(4, objective="mixed", **TINY)


def test_constructor_defaults_are_the_configuration_defaults():
    """One model, two front doors: EAN's own defaults and the flags' agree."""
    import inspect

    from ean_tf.build import MODEL_ARGUMENTS
    from ean_tf.config import ModelConfig

    signature = inspect.signature(EAN.__init__).parameters
    config = ModelConfig()
    for name in MODEL_ARGUMENTS:
        default = signature[name].default
        if name == "gcn_units":
            default = tuple(default)
        assert default == getattr(config, name), name
    assert "nearest_memory" in dataclasses.asdict(config)  # build_model's, not EAN's


def test_warmup_gcn_sees_identity_and_adj_loss_is_off():
    model = EAN(4, tau1=-1.0, **TINY)  # tau1 = -1: every pair is an edge
    x, y = _data()
    model.graph_enabled.assign(0.0)
    np.testing.assert_allclose(
        model(x, graph="batch"), model(x, graph="isolated"), atol=1e-5
    )
    terms, _, stats = model.compute_terms(x, y, training=False)
    assert float(terms["adj_loss"]) == 0 and float(stats["edges_per_node"]) == 0
    model.graph_enabled.assign(1.0)
    assert not np.allclose(
        model(x, graph="batch"), model(x, graph="isolated"), atol=1e-5
    )
    _, _, stats = model.compute_terms(x, y, training=False)
    assert float(stats["edges_per_node"]) == 15  # all 15 other nodes
    assert float(stats["graph_nodes"]) == 16


def _reaches(model, x, y, name):
    """part -> whether term `name` has a non-zero gradient on any of the part's
    variables, with no routing: the term's full gradient."""
    with tf.GradientTape(persistent=True) as tape:
        terms, _, _ = model.compute_terms(x, y)
        value = tf.reduce_mean(terms[name])
    out = {}
    for part in objective.PARTS:
        grads = tape.gradient(value, model.part_variables(part))
        out[part] = any(
            g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads
        )
    return out


def _step_gradients(model, x, y, only):
    """The gradients train_step applies, with every term but `only` set to 0:
    part -> whether any of its variables gets a non-zero gradient."""
    applied = {}

    class Recorder(keras.optimizers.SGD):
        def apply_gradients(self, pairs):
            for g, v in pairs:
                applied[id(v)] = g

    model.compile(optimizer=Recorder(0.0))
    keep = model.compute_terms

    def masked(images, targets, training=True):
        terms, logits, stats = keep(images, targets, training)
        zeroed = {n: t if n == only else 0.0 * t for n, t in terms.items()}
        return zeroed, logits, stats

    model.compute_terms = masked
    try:
        model.train_step((tf.constant(x), tf.constant(y)))
    finally:
        model.compute_terms = keep
    out = {}
    for part in objective.PARTS:
        grads = [applied.get(id(v)) for v in model.part_variables(part)]
        out[part] = any(
            g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads
        )
    return out


@pytest.mark.parametrize("name", ["split", "paper"])
def test_each_term_trains_exactly_its_parts(name):
    """The objective's routing table, checked on the gradients train_step
    applies: each term reaches its parts and nothing else."""
    keras.utils.set_random_seed(0)
    model = EAN(4, tau1=0.0, temperature=0.5, objective=name, **TINY)
    model.graph_enabled.assign(1.0)
    x, y = _data()
    expected = {
        "split": {
            "ce_isolated": {"backbone", "head"},
            "ce_graph": {"embedding"},
            "adj_loss": {"embedding"},
        },
        "paper": {
            "ce_graph": {"backbone", "embedding", "head"},
            "adj_loss": {"backbone", "embedding"},
        },
    }[name]
    assert set(model.route) == set(expected)
    for term, parts in expected.items():
        reached = _step_gradients(model, x, y, term)
        assert {p for p, r in reached.items() if r} == parts, term
    if name == "split":
        # Without the routing, the graph's cross-entropy would reach all three.
        assert all(_reaches(model, x, y, "ce_graph").values())


def test_linear_head_trains_backbone_and_head_on_its_cross_entropy():
    model = EAN(4, head="linear", **TINY)
    x, y = _data()
    assert set(model.route) == {"ce_isolated"}
    reached = _step_gradients(model, x, y, "ce_isolated")
    assert reached == {"backbone": True, "embedding": False, "head": True}


def test_parts_cover_every_trainable_variable_once():
    model = EAN(4, **TINY)
    ids = [id(v) for p in objective.PARTS for v in model.part_variables(p)]
    assert sorted(ids) == sorted(id(v) for v in model.trainable_variables)


def test_logged_loss_is_the_weighted_sum_of_the_logged_terms():
    keras.utils.set_random_seed(0)
    model = EAN(4, tau1=0.0, **TINY)
    model.graph_enabled.assign(1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    x, y = _data()
    logs = model.train_step((tf.constant(x), tf.constant(y)))
    expected = (
        float(logs["ce_isolated"])
        + 0.5 * float(logs["ce_graph"])
        + float(logs["adj_loss"])
    )
    assert float(logs["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(logs["adj_loss"]) > 0


def test_warmup_callback_flips_the_variable():
    model = EAN(4, **TINY)
    callback = AdjacencyWarmup(2)
    callback.set_model(model)
    flags = []
    for epoch in range(4):
        callback.on_epoch_begin(epoch)
        flags.append(float(model.graph_enabled.numpy()))
    assert flags == [0, 0, 1, 1]


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


def _model_with_memory():
    keras.utils.set_random_seed(1)
    model = EAN(4, tau1=0.0, memory_size=32, **TINY)
    model.graph_enabled.assign(1.0)
    x, y = _data(32)
    model.build_memory([x], y)
    return model, x


def test_nearest_answer_does_not_depend_on_the_batch():
    model, x = _model_with_memory()
    alone = model(x[:1]).numpy()
    among = model(x).numpy()[:1]
    padded = model(np.repeat(x[:1], 5, axis=0)).numpy()
    np.testing.assert_allclose(alone, among, atol=1e-5)
    np.testing.assert_allclose(np.repeat(alone, 5, axis=0), padded, atol=1e-5)
    # The batch graph, by contrast, does mix the batch.
    b_alone = model(x[:1], graph="batch").numpy()
    b_among = model(x, graph="batch").numpy()[:1]
    assert not np.allclose(b_alone, b_among, atol=1e-5)
    # The store is used: nearest and isolated answers differ.
    assert not np.allclose(alone, model(x[:1], graph="isolated").numpy(), atol=1e-5)


def test_keras_file_reloads_in_a_new_process(tmp_path):
    model, x = _model_with_memory()
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
    model = EAN(4, tau2=-0.5, objective="paper", class_names=list("abcd"), **TINY)
    config = model.get_config()
    assert config["format_version"] == FORMAT_VERSION
    clone = EAN.from_config(config)
    assert clone.get_config() == config
    assert clone.count_params() == model.count_params()


def test_a_model_of_another_format_is_refused_in_one_line(tmp_path):
    import json
    import zipfile

    from ean_tf.runs import TrainingError, load_model

    model = EAN(4, **TINY)
    config = model.get_config()
    for old in ({k: v for k, v in config.items() if k != "format_version"},):
        with pytest.raises(
            ValueError, match=f"format 1; this ean_tf reads format {FORMAT_VERSION}"
        ):
            EAN.from_config(old)
    path = str(tmp_path / "ean.keras")
    model.save(path)
    # The same file, its format version set to another.
    edited = str(tmp_path / "old.keras")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(edited, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                saved = json.loads(data)
                saved["config"]["format_version"] = FORMAT_VERSION + 1
                data = json.dumps(saved).encode()
            dst.writestr(item, data)
    with pytest.raises(TrainingError) as error:
        load_model(edited)
    message = str(error.value)
    assert "\n" not in message and edited in message
    assert f"format {FORMAT_VERSION + 1}" in message
    assert f"reads format {FORMAT_VERSION}" in message
    assert load_model(path).get_config() == config


def test_gce_q_makes_the_classification_terms_the_generalised_cross_entropy():
    from ean_tf.build import build_model
    from ean_tf.config import make_config

    model = build_model(make_config("tiny", head="linear", gce_q=0.7), 3)
    assert EAN.from_config(model.get_config()).gce_q == 0.7
    logits = tf.constant([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    p = tf.nn.softmax(logits).numpy()
    expected = (1 - np.array([p[0, 0], p[1, 1]]) ** 0.7) / 0.7
    np.testing.assert_allclose(model._ce(targets, logits), expected, rtol=1e-5)
    # q -> 0 is the cross-entropy; 0 is the cross-entropy itself.
    near = EAN(3, image_size=32, width=8, head="linear", gce_q=1e-4)
    ce = EAN(3, image_size=32, width=8, head="linear")
    np.testing.assert_allclose(
        near._ce(targets, logits), -np.log([p[0, 0], p[1, 1]]), rtol=1e-3
    )
    np.testing.assert_allclose(
        ce._ce(targets, logits), near._ce(targets, logits), rtol=1e-3
    )
    with pytest.raises(ValueError, match="gce_q in"):
        EAN(3, image_size=32, width=8, gce_q=1.5)
