"""Invariant feature generator: views, identity data, the two-player step, modes."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import run_cli, write_png

from ean_tf.config import make_config, replace
from ean_tf.data import views
from ean_tf.data.base import DataError
from ean_tf.models.backbones import build_backbone, load_backbone_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _faces(n=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 3)).astype("float32")


@pytest.mark.parametrize("kinds", [["occlusion"], ["illumination"], ["pose"], None])
def test_views_deterministic_shape_and_range(kinds):
    x = _faces()
    kinds = kinds or views.VIEW_KINDS
    a = views.make_views(x, [7, 1], kinds).numpy()
    b = views.make_views(x, [7, 1], kinds).numpy()
    c = views.make_views(x, [7, 2], kinds).numpy()
    assert a.shape == x.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 255.0
    np.testing.assert_array_equal(a, b)  # same seed, same views
    assert np.abs(a - c).max() > 1.0  # another seed, other views
    changed = np.abs(a - x).reshape(len(x), -1).max(1)
    assert (changed > 1.0).all()  # every image is perturbed


def test_views_reject_unknown_kind():
    with pytest.raises(ValueError, match="view kinds"):
        views.make_views(_faces(), [0, 0], ["blur"])
    with pytest.raises(Exception, match="--view_kinds"):
        make_config("tiny", view_kinds="occlusion,blur")


def _cfp(root, identities=2, per=2, drop_profile=None):
    for i in range(identities):
        for view in ("frontal", "profile"):
            if view == "profile" and i == drop_profile:
                continue
            for j in range(per):
                write_png(str(root / f"id{i}" / view / f"{j}.png"), 32, seed=i * 10 + j)
    return str(root)


def test_cfp_reader_pairs_and_errors(tmp_path):
    folders = views.read_identity_folders(_cfp(tmp_path / "ok", 3, 2))
    assert folders["identities"] == ["id0", "id1", "id2"]
    frontal, profile, ids = views.identity_pairs(folders, seed=0)
    assert len(frontal) == len(profile) == len(ids) == 6
    for f, p, i in zip(frontal, profile, ids, strict=True):
        assert f"id{i}{os.sep}frontal" in f and f"id{i}{os.sep}profile" in p

    root = _cfp(tmp_path / "missing", 2, 1, drop_profile=1)
    with pytest.raises(DataError, match=r"id1.profile is missing"):
        views.read_identity_folders(root)
    os.makedirs(tmp_path / "empty" / "a" / "frontal")
    os.makedirs(tmp_path / "empty" / "a" / "profile")
    with pytest.raises(DataError, match="holds no images"):
        views.read_identity_folders(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no such folder"):
        views.read_identity_folders(str(tmp_path / "nope"))


def _generator(num_identities=4, size=32, lambda_views=0.0):
    import keras

    from ean_tf.models.generator import InvariantFeatureGenerator

    keras.utils.set_random_seed(0)
    backbone = build_backbone("resnet18", size, "small_s2", 8)
    model = InvariantFeatureGenerator(backbone, num_identities, 3)
    model.build()
    model.compile(
        g_optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        d_optimizer=keras.optimizers.Adam(3e-3),
        lambda_adv=1.0,
        lambda_id=1.0,
        lambda_views=lambda_views,
    )
    return model


def _batch(n=8, size=32, seed=0):
    x_f = _faces(n, size, seed)
    x_p = views.make_views(x_f, [seed, 0]).numpy()
    ids = np.arange(n) % 4
    targets = np.eye(3, dtype="float32")[np.arange(n) % 3]
    return x_f, x_p, ids.astype("int32"), targets


def _values(variables):
    return [v.numpy().copy() for v in variables]


def _changed(before, variables):
    return [
        not np.array_equal(b, v.numpy()) for b, v in zip(before, variables, strict=True)
    ]


def test_d_step_changes_only_d_and_g_step_only_g():
    model = _generator()
    x_f, x_p, ids, targets = _batch()
    g_vars = model.backbone.weights + model.expression_head.weights  # incl. BN stats
    d_vars = model.discriminator.weights
    g0, d0 = _values(g_vars), _values(d_vars)
    conv3_f, conv3_p = model.features(x_f), model.features(x_p)
    logs = model.d_step(conv3_f, conv3_p, ids)
    assert not any(_changed(g0, g_vars))
    assert all(_changed(d0, model.discriminator.trainable_variables))
    assert all(np.isfinite(float(v)) for v in logs.values())

    d1 = _values(d_vars)
    logs, _, _ = model.g_step(x_f, x_p, ids, targets)
    assert not any(_changed(d1, d_vars))
    g_trainable = {id(v) for v in model.g_variables}
    moved = [
        c
        for c, v in zip(_changed(g0, g_vars), g_vars, strict=True)
        if id(v) in g_trainable
    ]
    assert len(moved) == len(model.g_variables) and all(moved)  # every G weight
    assert all(np.isfinite(float(v)) for v in logs.values())


def test_losses_move_in_the_expected_direction():
    model = _generator()
    x_f, x_p, ids, targets = _batch()
    # D alone on fixed features: its loss falls, its view accuracy rises to 1
    conv3_f, conv3_p = model.features(x_f), model.features(x_p)
    first = model.d_step(conv3_f, conv3_p, ids)
    for _ in range(25):
        last = model.d_step(conv3_f, conv3_p, ids)
    assert float(last["d_loss"]) < float(first["d_loss"]) * 0.7
    assert float(last["d_view_loss"]) < float(first["d_view_loss"])
    assert float(last["d_id_loss"]) < float(first["d_id_loss"])
    # G alone against that fixed D: it learns to fool D's view head and to keep
    # the identity, and learns the expressions
    first, _, _ = model.g_step(x_f, x_p, ids, targets)
    for _ in range(12):
        last, _, _ = model.g_step(x_f, x_p, ids, targets)
    for term in ("adv_loss", "id_loss", "expression_loss"):
        assert np.isfinite(float(last[term]))
        assert float(last[term]) < float(first[term]), term


def test_train_step_updates_every_tracker():
    model = _generator()
    x_f, x_p, ids, targets = _batch()
    logs = model.train_step(((x_f, x_p, ids), (x_f, x_p, targets)))
    for name in ("g_loss", "adv_loss", "id_loss", "d_loss", "d_view_accuracy"):
        assert np.isfinite(float(logs[name])), name


@pytest.mark.parametrize("separate_expression_images", [False, True])
def test_g_loss_is_its_weighted_terms_and_views_train_the_expression(
    separate_expression_images,
):
    model = _generator(lambda_views=0.5)
    x_f, x_p, ids, targets = _batch()
    expression = (x_f, x_p, targets) if separate_expression_images else targets
    x_e = (x_f, x_p) if separate_expression_images else (None, None)
    first, _, _ = model.g_step(x_f, x_p, ids, targets, *x_e)
    g = first["expression_loss"] + 0.5 * first["expression_views_loss"]
    g += first["adv_loss"] + first["id_loss"]  # lambda_adv = lambda_id = 1
    assert float(first["g_loss"]) == pytest.approx(float(g), rel=1e-5)
    assert float(first["expression_views_loss"]) > 0.1
    for _ in range(12):
        last = model.train_step(((x_f, x_p, ids), expression))
    assert float(last["expression_views_loss"]) < float(first["expression_views_loss"])
    # without the weight the views do not enter the G loss
    model.lambda_views = 0.0
    logs, _, _ = model.g_step(x_f, x_p, ids, targets, *x_e)
    assert float(logs["expression_views_loss"]) == 0.0


def test_without_identities_d_has_only_the_view_head():
    model = _generator(num_identities=None)
    assert len(model.discriminator.outputs) == 1
    x_f, x_p, ids, targets = _batch()
    logs = model.train_step(((x_f, x_p, ids * 0), targets))
    assert not any("id_" in k for k in logs)
    expected = float(logs["expression_loss"]) + float(logs["adv_loss"])
    assert float(logs["g_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(logs["d_loss"]) == pytest.approx(float(logs["d_view_loss"]))


@pytest.mark.parametrize("epochs, warmup", [(2, 1.0), (1, 0.5), (6, 1.0)])
def test_pretraining_lr_warms_up_then_decays_to_zero(epochs, warmup):
    from ean_tf.pretrain import generator_optimizer

    config = make_config("tiny", generator_epochs=epochs, lr_warmup_epochs=1)
    peak, steps = config.train.learning_rate, 10
    optimizer = generator_optimizer(config, steps)

    def lr_at(step):
        optimizer.iterations.assign(step)
        return float(optimizer.learning_rate)

    assert lr_at(0) == pytest.approx(peak / (warmup * steps))  # not the peak at once
    assert lr_at(int(warmup * steps)) == pytest.approx(peak)
    assert lr_at(epochs * steps) == pytest.approx(0.0, abs=1e-7)
    rising = [lr_at(i) for i in range(int(warmup * steps))]
    assert rising == sorted(rising)


def test_collapse_metrics_on_constructed_features():
    from ean_tf.pretrain import effective_rank, mean_cosine, paired_cosine

    row = np.array([3.0, -1.0, 2.0, 0.5])
    same = np.tile(row, (5, 1))  # (5, 4) one feature for every image
    assert mean_cosine(same) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(same) == 1.0
    assert mean_cosine(2.0 * np.eye(6)) == pytest.approx(0.0, abs=1e-7)  # orthogonal
    n = 5
    plus_minus = np.concatenate([np.eye(n), -np.eye(n)])  # (2n, n), mean zero
    assert effective_rank(plus_minus) == pytest.approx(n)
    assert effective_rank(7.0 * np.eye(n)) == pytest.approx(n - 1)  # centred
    line = np.outer(np.arange(6.0), row) + 10.0  # spread along one direction
    assert effective_rank(line) == pytest.approx(1.0)
    # singular values 3 and 1: exp(entropy of (3/4, 1/4))
    two = np.array([[3.0, 0.0], [0.0, 1.0], [-3.0, 0.0], [0.0, -1.0]]) / np.sqrt(2)
    p = np.array([0.75, 0.25])
    assert effective_rank(two) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    # one pair of each: identical (1), orthogonal (0), opposite (-1)
    a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    b = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert paired_cosine(a, b) == pytest.approx(0.0)
    assert paired_cosine(a[:1], b[:1]) == pytest.approx(1.0)
    # maps (N, h, w, c) are compared flattened
    maps = _faces(4, 8)
    assert mean_cosine(maps) == pytest.approx(
        mean_cosine(maps.reshape(4, -1)), abs=1e-6
    )


def test_conv3_probe_is_chunk_free_and_the_same_every_call():
    import tensorflow as tf

    from ean_tf import pretrain as p

    images = _faces(10, 8)
    ds = tf.data.Dataset.from_tensor_slices((images, np.zeros(10))).batch(3)

    def identity(x, training=False):  # the images as their own conv3 maps
        return None, tf.convert_to_tensor(x)

    kinds = ("occlusion", "pose")
    first = p.conv3_probe(identity, ds, kinds, 5)
    assert p.conv3_probe(identity, ds, kinds, 5) == first
    assert set(first) == {
        "conv3_cos_different_images",
        "conv3_cos_occlusion",
        "conv3_cos_pose",
        "conv3_effective_rank",
    }
    # four chunks of at most 3 images, summed exactly as one batch of 10
    assert first["conv3_cos_different_images"] == pytest.approx(
        p.mean_cosine(images), abs=1e-6
    )
    assert first["conv3_effective_rank"] == pytest.approx(
        p.effective_rank(images.mean(axis=(1, 2)))
    )
    assert 0.0 < first["conv3_cos_pose"] < 1.0


def test_collapse_report_flags_a_rise_of_the_different_image_cosine():
    from ean_tf.pretrain import collapse_report

    def probe(cos):
        return {"conv3_cos_different_images": cos, "conv3_effective_rank": 9.0}

    assert collapse_report(probe(0.60), probe(0.64), 64)["collapsed"] is False
    report = collapse_report(probe(0.60), probe(0.98), 64)
    assert report["collapsed"] is True
    assert report["cos_different_images_rise"] == pytest.approx(0.38)
    assert collapse_report(probe(np.nan), probe(0.9), 1)["collapsed"] is None


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generator")
    result = run_cli(
        "--mode=pretrain_generator",
        "--config=tiny",
        f"--data_dir={tmp / 'data'}",
        f"--run_dir={tmp / 'run'}",
        "--generator_epochs=2",
        "--steps_per_epoch=2",
    )
    return tmp, result


def test_pretrain_generator_mode_writes_weights_figure_log(pretrained):
    tmp, result = pretrained
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp / "run" / "generator"
    for name in ("backbone.weights.h5", "feature_maps.png", "log.csv", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["identities"] == 8  # the tiny preset's built-in identities
    assert set(summary["feature_similarity"]["after"]) == set(views.VIEW_KINDS)
    assert "Next: python run.py --mode=train --generator_checkpoint=" in result.stdout
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2  # 2 epochs
    assert not any(k.startswith("val_") for k in rows[0])  # no validation data
    probe_columns = {
        "conv3_cos_different_images",
        "conv3_effective_rank",
        *(f"conv3_cos_{k}" for k in views.VIEW_KINDS),
    }
    for row in rows:
        assert -1.0 <= float(row["conv3_cos_different_images"]) <= 1.0
        assert 1.0 <= float(row["conv3_effective_rank"]) <= 32  # 32 probe images
        for k in views.VIEW_KINDS:
            assert -1.0 <= float(row[f"conv3_cos_{k}"]) <= 1.0
    collapse = summary["collapse"]
    assert collapse["images"] == 32  # the tiny preset's whole validation split
    assert set(collapse["before"]) == set(collapse["after"]) == probe_columns
    # the last epoch's row is the backbone the summary's "after" probes
    for k in probe_columns:
        assert float(rows[-1][k]) == pytest.approx(collapse["after"][k], abs=1e-5)
    rise = (
        collapse["after"]["conv3_cos_different_images"]
        - (collapse["before"]["conv3_cos_different_images"])
    )
    assert collapse["cos_different_images_rise"] == pytest.approx(rise)
    assert collapse["collapsed"] is (rise > 0.05)
    flag = "yes" if collapse["collapsed"] else "no"
    assert f"conv3 collapsed: {flag} (the cosine of different images" in (result.stdout)


def test_pretrained_backbone_starts_ean_training(pretrained, tmp_path):
    from ean_tf.build import build_model
    from ean_tf.train import train

    tmp, _ = pretrained
    weights = str(tmp / "run" / "generator" / "backbone.weights.h5")
    config = make_config(
        "tiny",
        data_dir=str(tmp / "data"),
        run_dir=str(tmp_path / "run"),
        generator_checkpoint=weights,
        epochs=1,
        adj_warmup_epochs=0,
        steps_per_epoch=2,
    )
    model = build_model(config, 7)
    load_backbone_weights(model.backbone, weights)
    reference = build_backbone("resnet18", 32, "small_s2", 8)
    reference.load_weights(weights)
    for a, b in zip(model.backbone.weights, reference.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    summary = train(config, verbose=0)
    assert summary["epochs_done"] == 1

    wrong = replace(config, width=16, run_dir=str(tmp_path / "wrong"))
    with pytest.raises(ValueError, match="backbone.weights.h5 does not fit"):
        train(wrong, verbose=0)

    result = run_cli(
        "--mode=robustness",
        "--config=tiny",
        f"--data_dir={tmp / 'data'}",
        f"--run_dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "robustness.json").read_text())
    assert set(report["results"]) == {"clean", *views.VIEW_KINDS}
    for r in report["results"].values():
        assert 0.0 <= r["accuracy"] <= 1.0


def test_pretrain_with_identity_folders_under_mirrored(tmp_path):
    cfp = _cfp(tmp_path / "cfp", 3, 2)
    script = f"""
        import sys, json
        sys.path.insert(0, {ROOT!r})
        import ean_tf
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from ean_tf.config import make_config
        from ean_tf.pretrain import pretrain
        config = make_config(
            "tiny", data_dir={str(tmp_path / "data")!r},
            run_dir={str(tmp_path / "run")!r}, strategy="mirrored",
            identity_data_dir={cfp!r}, generator_epochs=1, steps_per_epoch=2,
            lambda_views=1.0)
        s = pretrain(config, verbose=0)
        print("SUMMARY", json.dumps(s["final"]), s["identities"], s["views"])
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("SUMMARY")][0]
    assert line.endswith("3 real profiles")
    final = json.loads(line.split(" ", 1)[1].rsplit(" ", 3)[0])
    assert all(np.isfinite(v) for v in final.values())


def test_pretraining_resumes_after_its_last_epoch(pretrained, caplog):
    from ean_tf.pretrain import pretrain

    tmp, _ = pretrained
    config = make_config(
        "tiny",
        data_dir=str(tmp / "data"),
        run_dir=str(tmp / "run"),
        generator_epochs=3,
        steps_per_epoch=2,
    )
    with caplog.at_level("INFO", logger="ean_tf"):
        summary = pretrain(config, verbose=0)
    assert "Resuming generator pre-training after epoch 2" in caplog.text
    with open(tmp / "run" / "generator" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]  # continued
    assert all(float(row["conv3_effective_rank"]) >= 1.0 for row in rows)
    assert np.isfinite(summary["final"]["g_loss"])


def test_cotraining_adds_the_adversarial_term_and_trains_d(tmp_path):
    from ean_tf.train import train

    config = make_config(
        "tiny",
        data_dir=str(tmp_path / "data"),
        run_dir=str(tmp_path / "run"),
        generator_cotrain_weight=0.5,
        epochs=2,
        steps_per_epoch=3,
        adj_warmup_epochs=0,
    )
    summary = train(config, verbose=0)
    assert summary["epochs_done"] == 2
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert 0.0 < float(row["adv_loss"]) < 10.0
        assert 0.0 <= float(row["d_view_accuracy"]) <= 1.0
    # training-only terms are not logged as zeros for the validation split
    assert "val_accuracy" in rows[0]
    assert not any(k in rows[0] for k in ("val_adv_loss", "val_edges_per_node"))
    assert (tmp_path / "run" / "discriminator.weights.h5").is_file()
    # the saved model is plain EAN: no discriminator weights in it
    from ean_tf.runs import load_model

    model = load_model(str(tmp_path / "run" / "model.keras"))
    assert model.cotrainer is None
    assert not any("d_view" in w.path for w in model.weights)
