import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli

from ean_tf import evaluate
from ean_tf.config import replace
from ean_tf.runs import read_state
from ean_tf.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from ean_tf.config import make_config

    tmp = tmp_path_factory.mktemp("train")
    config = make_config(
        "tiny",
        data_dir=str(tmp / "data"),
        run_dir=str(tmp / "run"),
        noise_rate=0.25,
        noise_seed=1,
    )
    return config, train(config, verbose=0)


def test_train_writes_every_output(trained):
    config, summary = trained
    run = config.train.run_dir
    for name in (
        "model.keras",
        "best.keras",
        "last.keras",
        "state.json",
        "log.csv",
        "metrics.json",
        "confusion.png",
        "summary.json",
        "config.json",
        "noisy_labels.csv",
    ):
        assert os.path.isfile(os.path.join(run, name)), name
    assert summary["epochs_done"] == config.train.epochs
    assert list(summary["accuracy"]) == ["nearest", "batch", "isolated"]
    # A confusion matrix for every graph, each named in the summary.
    assert summary["confusion"] == [
        os.path.join(run, f"confusion_{graph}.png") for graph in summary["accuracy"]
    ]
    assert all(os.path.isfile(path) for path in summary["confusion"])
    with open(os.path.join(run, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    # Epochs counted from 1, as the progress bar and state.json count them.
    assert [int(r["epoch"]) for r in rows] == list(range(1, config.train.epochs + 1))
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    # The logged loss is the objective's weighted sum of its logged terms.
    for r in rows:
        terms = float(r["ce_isolated"]) + 0.5 * float(r["ce_graph"])
        assert float(r["loss"]) == pytest.approx(terms + float(r["adj_loss"]), 1e-4)


def test_noise_file_has_exact_flip_count(trained):
    config, _ = trained
    with open(os.path.join(config.train.run_dir, "noisy_labels.csv")) as f:
        rows = list(csv.DictReader(f))
    n = config.data.default_train_size
    assert len(rows) == n
    assert sum(r["clean_label"] != r["noisy_label"] for r in rows) == round(0.25 * n)


def test_the_nearest_graph_stores_the_labels_training_learned_from(trained):
    """Every training image, in file order, with its one-hot training label: the
    noisy one where the run flipped it."""
    import keras

    config, _ = trained
    run = config.train.run_dir
    with open(os.path.join(run, "noisy_labels.csv")) as f:
        noisy = np.array([int(r["noisy_label"]) for r in csv.DictReader(f)])
    memory = keras.models.load_model(os.path.join(run, "model.keras")).memory
    targets = memory.targets.numpy()
    assert memory.valid.numpy().sum() == len(noisy) == len(targets)
    np.testing.assert_array_equal(targets.argmax(axis=1), noisy)
    np.testing.assert_array_equal(targets.sum(axis=1), 1.0)


def test_eval_answers_with_the_label_weight_asked_for(trained, tmp_path):
    """--served_label_weight in --mode=eval: the nearest graph passes on its
    neighbours' stored (noisy) labels at that weight, metrics.json records it, and
    a graph it does not apply to is a clear error before any data is read."""
    from ean_tf.modes import run_eval

    config, _ = trained
    reports = {}
    for weight in (-1.0, 0.0, 0.5):
        out = str(tmp_path / str(weight))
        ask = replace(config, inference_graph="nearest", served_label_weight=weight)
        run_eval(ask, output=out)
        with open(os.path.join(out, "metrics.json")) as f:
            reports[weight] = json.load(f)["graphs"]["nearest"]
    assert reports[-1.0]["label_weight"] == 0.25  # the model's own, the default
    assert (reports[0.0]["label_weight"], reports[0.5]["label_weight"]) == (0.0, 0.5)
    assert reports[0.5]["confusion_matrix"] != reports[0.0]["confusion_matrix"]
    ask = replace(config, inference_graph="batch", served_label_weight=0.5)
    with pytest.raises(ValueError, match="answers in its batch graph"):
        run_eval(ask, output=str(tmp_path / "batch"))


def test_metrics_json_is_consistent(trained):
    config, _ = trained
    with open(os.path.join(config.train.run_dir, "metrics.json")) as f:
        report = json.load(f)
    assert report["num_samples"] == config.data.default_val_size
    for graph, result in report["graphs"].items():
        cm = np.array(result["confusion_matrix"])
        assert cm.sum() == result["num_samples"]
        assert result["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
        assert result["inference_graph"] == graph
    assert report["graphs"]["batch"]["batch_size"] == config.train.batch_size
    flipped = report["flipped_labels"]
    assert flipped["flipped"] == round(0.25 * config.data.default_train_size)
    assert 0 <= flipped["predicted_clean"] <= flipped["flipped"]


def test_rerun_resumes_and_continues(trained):
    from ean_tf.runs import TrainingError

    config, _ = trained
    # Fewer epochs than were done is another run, not "finished".
    with pytest.raises(TrainingError, match=r"\d epochs done there"):
        train(replace(config, epochs=1, adj_warmup_epochs=0), verbose=0)
    more = replace(config, epochs=config.train.epochs + 1)
    summary = train(more, verbose=0)
    assert summary["epochs_done"] == config.train.epochs + 1
    assert read_state(config.train.run_dir)["epochs_done"] == config.train.epochs + 1
    with open(os.path.join(config.train.run_dir, "log.csv")) as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs == list(range(1, config.train.epochs + 2))
    with open(os.path.join(config.train.run_dir, "log.csv"), "rb") as f:
        raw = f.read()
    assert raw.count(b"\r\n") == raw.count(b"\n")  # one line ending throughout


def test_a_run_folder_never_resumes_another_run(tmp_path):
    from ean_tf.config import make_config
    from ean_tf.runs import TrainingError

    run = str(tmp_path / "run")
    base = make_config("tiny", data_dir=str(tmp_path / "data"), run_dir=run)
    train(replace(base, epochs=1, adj_warmup_epochs=0), verbose=0)
    files = {n: os.path.getmtime(os.path.join(run, n)) for n in os.listdir(run)}
    other = replace(base, image_size=40, epochs=1, adj_warmup_epochs=0)
    with pytest.raises(TrainingError) as info:
        train(other, verbose=0)
    message = str(info.value)
    assert "image_size=32 there, 40 here" in message
    assert "--run_dir" in message and "--overwrite" in message
    assert {n: os.path.getmtime(os.path.join(run, n)) for n in os.listdir(run)} == (
        files
    )  # nothing in the folder changed
    # --overwrite starts the other run over in that folder.
    summary = train(replace(other, overwrite=True), verbose=0)
    assert summary["epochs_done"] == 1
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["data"]["image_size"] == 40


def test_a_linear_run_resumes_whatever_its_graph_settings(tmp_path):
    """A linear head never reads the graph's settings, so they do not make a
    linear run folder another run; for EAN they do."""
    from ean_tf.config import make_config
    from ean_tf.runs import TrainingError, check_run_dir

    run = str(tmp_path / "run")
    os.makedirs(run)
    open(os.path.join(run, "last.keras"), "w").close()  # a run with a checkpoint
    for head in ("linear", "ean"):
        config = make_config("tiny", run_dir=run, head=head)
        with open(os.path.join(run, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, default=str)
        other = replace(config, tau1=0.7, objective="paper")
        if head == "linear":
            check_run_dir(other, run)  # resumes
            with pytest.raises(TrainingError, match="image_size=32 there, 40 here"):
                check_run_dir(replace(other, image_size=40), run)
        else:
            with pytest.raises(TrainingError, match="tau1=0.5 there, 0.7 here"):
                check_run_dir(other, run)
    assert sorted(os.listdir(run)) == ["config.json", "last.keras"]  # kept


def test_what_the_nearest_graph_answers_with_is_not_another_run(tmp_path):
    """nearest_k and the label weight choose what a trained model answers with,
    not what is trained: a run resumes with other values; the objective is
    training, so another one is another run."""
    from ean_tf.config import make_config
    from ean_tf.runs import TrainingError, check_run_dir

    run = str(tmp_path / "run")
    os.makedirs(run)
    open(os.path.join(run, "last.keras"), "w").close()  # a run with a checkpoint
    config = make_config("tiny", run_dir=run)
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, default=str)
    check_run_dir(replace(config, nearest_label_weight=0.5, nearest_k=8), run)
    with pytest.raises(TrainingError, match="objective='split' there, 'paper' here"):
        check_run_dir(replace(config, objective="paper"), run)


def test_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0, 2])
    m = evaluate.classification_metrics(labels, preds, ("a", "b", "c"))
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_recall"] == pytest.approx({"a": 0.5, "b": 2 / 3, "c": 1.0})
    assert m["mean_class_accuracy"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    # A class absent from the split does not count towards the mean.
    m = evaluate.classification_metrics([0, 0], [0, 1], ("a", "b"))
    assert m["per_class_recall"]["b"] is None and m["mean_class_accuracy"] == 0.5


def test_cli_train_then_eval(tmp_path):
    run = str(tmp_path / "run")
    common = ["--config=tiny", f"--data_dir={tmp_path / 'data'}", f"--run_dir={run}"]
    result = subprocess.run(
        [
            sys.executable,
            "run.py",
            "--mode=train",
            "--epochs=1",
            "--adj_warmup_epochs=0",
            *common,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Validation accuracy" in result.stdout and "--mode=eval" in result.stdout
    # The next command names the interpreter that ran this one (.venv's).
    python = os.path.relpath(sys.executable, ROOT)
    assert f"Next: {python} run.py --mode=eval" in result.stdout
    result = run_cli(
        "--mode=eval", "--inference_graph=all", f"--output={tmp_path / 'eval'}", *common
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert list(report["graphs"]) == ["nearest", "batch", "isolated"]
    assert report["checkpoint"].endswith("model.keras")
    assert os.path.isfile(tmp_path / "eval" / "confusion.png")
    for graph in report["graphs"]:
        assert os.path.isfile(tmp_path / "eval" / f"confusion_{graph}.png"), graph


def test_visualize_draws_the_batch_graph(trained, tmp_path):
    import keras

    from ean_tf.visualize import batch_graph_figure

    config, summary = trained
    model = keras.models.load_model(summary["model"])
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    labels = np.arange(6) % 3
    model.tau1, model.tau2 = 0.2, -0.2
    path = tmp_path / "graph.png"
    info = batch_graph_figure(model, images, labels, model.class_names, str(path))
    from ean_tf.models import adjacency as adj

    _, raw, _ = model.encode(images)
    cs = adj.cosine_similarity(model.graph_embeddings(raw)).numpy()
    upper = cs[np.triu_indices(6, 1)]
    assert info["similar_edges"] == int(np.sum(upper >= 0.2))
    assert info["opposite_edges"] == int(np.sum(upper <= -0.2))
    assert path.stat().st_size > 10_000


def test_head_activity_counts_dead_hidden_units(trained, tmp_path, caplog):

    from ean_tf import data as data_lib
    from ean_tf.models.ean import EAN

    config, _ = trained
    val = data_lib.load(config.data).val
    size, batch = config.data.image_size, config.train.batch_size
    model = EAN(
        val.num_classes, image_size=size, width=8, embedding_dim=16, gcn_units=(16,)
    )
    hidden = model.head.convs[0]
    # Biases far above zero: every hidden unit fires on every image.
    hidden.bias.assign(np.full(hidden.bias.shape, 1e6, "float32"))
    alive = evaluate.head_activity(model, val, size, batch)
    assert alive["images"] == len(val)
    assert alive["layers"] == [{"name": "gcn_0", "units": 16, "dead": 0}]
    # Far below zero: none can fire, and evaluation says so.
    hidden.bias.assign(np.full(hidden.bias.shape, -1e6, "float32"))
    with caplog.at_level("WARNING", logger="ean_tf"):
        report = evaluate.evaluate_model(
            model, val, size, batch, str(tmp_path), graphs=("isolated",)
        )
    assert report["head_activity"]["layers"][0]["dead"] == 16
    assert "16 of 16 hidden units of gcn_0 never fire" in caplog.text
    assert len(set(report["graphs"]["isolated"]["confusion_matrix"][0])) <= 2


def test_graph_quality_counts_edges_by_label(trained):
    import keras

    from ean_tf import data as data_lib
    from ean_tf.data.pipeline import make_dataset

    config, summary = trained
    model = keras.models.load_model(summary["model"])
    val = data_lib.load(config.data).val
    size, n = config.data.image_size, len(val)
    # By hand: one batch of every image, in the batch graph's order for seed 3.
    order = np.random.default_rng(3).permutation(n)
    images, _ = next(iter(make_dataset(val.select(order), size, n, training=False)))
    _, raw, _ = model.encode(images)
    e = np.asarray(model.graph_embeddings(raw))
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    cs = e @ e.T
    off = ~np.eye(n, dtype=bool)
    # Thresholds inside this model's cosines, so that both kinds of edge exist.
    tau1, tau2 = np.quantile(cs[off], [0.7, 0.2])
    # Off the cosines themselves, so that no pair sits on a threshold (where the
    # by-hand cosines and the model's may round to different sides).
    tau1, tau2 = tau1 + 1e-4, tau2 - 1e-4
    model.tau1, model.tau2 = float(tau1), float(tau2)
    quality = evaluate.graph_quality(model, val, size, n, shuffle_seed=3)
    labels = np.asarray(val.labels)[order]
    same = (labels[:, None] == labels[None, :]) & off
    similar, opposite = (cs >= tau1) & off, (cs <= tau2) & off
    assert similar.any() and opposite.any()
    assert quality["images"] == n
    assert quality["similar_per_node"] == round(similar.sum() / n, 3)
    assert quality["chance"] == round(same.sum() / off.sum(), 4)
    assert quality["similar_precision"] == round(
        (similar & same).sum() / similar.sum(), 4
    )
    assert quality["similar_recall"] == round((similar & same).sum() / same.sum(), 4)
    assert quality["opposite_precision"] == round(
        (opposite & ~same).sum() / opposite.sum(), 4
    )
    assert quality["isolated"] == round((~(similar | opposite).any(1)).sum() / n, 4)
    for k, name in enumerate(val.class_names):
        edges = similar[labels == k]
        kept = (edges & same[labels == k]).sum()
        expected = round(kept / edges.sum(), 4) if edges.sum() else None
        assert quality["similar_precision_per_class"][name] == expected


def test_validation_batch_graph_uses_the_evaluation_order(
    trained, tmp_path, monkeypatch
):
    """`val_accuracy` (which picks best.keras) is the batch graph on the same
    shuffled batches as --mode=eval, even for a class-major split."""
    import glob

    from ean_tf import train as train_lib
    from ean_tf.config import make_config

    config, _ = trained
    (source,) = glob.glob(os.path.join(config.data.data_dir, "default-*", "labels.csv"))
    with open(source) as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: (r["split"], r["label"]))  # class-major, as a folder
    sorted_csv = os.path.join(os.path.dirname(source), "class_major.csv")
    with open(sorted_csv, "w") as f:
        f.write("path,label,split\n")
        f.writelines(f"{r['path']},{r['label']},{r['split']}\n" for r in rows)
    run = make_config(
        "tiny", dataset="csv", data_dir=sorted_csv, run_dir=str(tmp_path / "run")
    )
    seen = []

    class Stop(Exception):
        pass

    def record(examples, *args, training, **kwargs):
        if not training:  # the validation set, made before the first epoch
            seen.append(examples)
            raise Stop
        raise AssertionError("training data made before validation data")

    monkeypatch.setattr(train_lib, "make_dataset", record)
    with pytest.raises(Stop):
        train_lib.train(run, verbose=0)
    from ean_tf import data as data_lib

    val = data_lib.load(run.data).val
    assert np.all(np.diff(val.labels) >= 0)  # the file's order is class-major
    assert seen[0].paths == val.select(val.shuffle_order(0)).paths


def test_training_batches_follow_the_sampling_flags(trained, tmp_path, monkeypatch):
    from ean_tf import train as train_lib
    from ean_tf.config import replace

    config, _ = trained
    run = replace(
        config,
        run_dir=str(tmp_path / "run"),
        balanced_sampling=True,
        noise_rate=0.0,
    )
    made = train_lib.make_dataset
    seen = {}

    class Stop(Exception):
        pass

    def record(examples, *args, training, **kwargs):
        if not training:
            return made(examples, *args, training=training, **kwargs)
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(train_lib, "make_dataset", record)
    with pytest.raises(Stop):
        train_lib.train(run, verbose=0)
    assert seen["balanced"] is True


def test_a_run_that_never_checkpointed_does_not_hold_its_folder(tmp_path):
    """A run that stopped before its first checkpoint (a NaN in epoch 1, a kill)
    left nothing trained: another command starts there without --overwrite."""
    from ean_tf.config import make_config
    from ean_tf.runs import check_run_dir

    run = tmp_path / "run"
    run.mkdir()
    failed = make_config("tiny", run_dir=str(run), learning_rate=1e30)
    (run / "config.json").write_text(json.dumps(failed.to_dict(), default=str))
    (run / "noisy_labels.csv").write_text("path,clean_label,noisy_label\n")
    check_run_dir(make_config("tiny", run_dir=str(run)), str(run))
    assert os.listdir(run) == []  # its files gone, none of them stale


def test_a_training_holds_its_run_folder(tmp_path):
    """A second training in a folder where one is running stops in one line,
    before it writes anything there."""
    from ean_tf.config import make_config
    from ean_tf.runs import TrainingError, lock_run_dir

    run = tmp_path / "run"
    run.mkdir()
    config = make_config("tiny", data_dir=str(tmp_path / "data"), run_dir=str(run))
    with lock_run_dir(str(run)):  # as the other training holds it
        with pytest.raises(TrainingError, match="another process is training"):
            train(config, verbose=0)
    assert os.listdir(run) == []


def test_a_batch_larger_than_the_data_is_refused_before_the_folder(tmp_path):
    from ean_tf.config import ConfigError, make_config

    run = tmp_path / "run"
    config = make_config(
        "tiny", data_dir=str(tmp_path / "data"), run_dir=str(run), batch_size=100_000
    )
    with pytest.raises(ConfigError) as info:
        train(config, verbose=0)
    assert "--batch_size=100000" in str(info.value)
    assert "96 training images" in str(info.value)
    assert not run.exists()


def test_every_saved_model_serves_like_the_final_model(trained):
    """best.keras and last.keras store the training images and answer in the
    served graph, as model.keras does: an image's answer never depends on the
    others of a request."""
    import keras

    config, summary = trained
    x = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    for name in ("best.keras", "last.keras"):
        saved = keras.models.load_model(os.path.join(config.train.run_dir, name))
        assert saved.inference_graph == "nearest", name
        stored = int(saved.memory.valid.numpy().sum())
        assert stored == config.data.default_train_size, name
        np.testing.assert_allclose(saved(x)[:1], saved(x[:1]), atol=1e-5)
        np.testing.assert_allclose(saved(x), saved(x, graph="nearest"), atol=1e-6)


def test_rerunning_a_finished_run_says_it_trained_nothing(trained, capsys):
    from ean_tf.modes import print_summary

    config, _ = trained
    done = read_state(config.train.run_dir)["epochs_done"]
    summary = train(replace(config, epochs=done), verbose=0)
    assert (summary["epochs_done"], summary["epochs_trained"]) == (done, 0)
    print_summary(summary)
    out = capsys.readouterr().out
    assert f"Already finished ({done} epochs): trained nothing" in out
    assert "Finished" not in out


def test_eval_names_each_figure_and_the_next_command(trained, tmp_path, capsys):
    from ean_tf.modes import run_eval

    config, _ = trained
    run_eval(replace(config, inference_graph="all"), output=str(tmp_path))
    out = capsys.readouterr().out
    for graph in ("nearest", "batch", "isolated"):
        assert str(tmp_path / f"confusion_{graph}.png") in out
    assert "confusion.png" not in out
    assert out.strip().splitlines()[-1].startswith("Next: ")
    assert "--mode=export --checkpoint=" in out.strip().splitlines()[-1]


def test_eval_to_an_unwritable_folder_stops_before_evaluating(trained, tmp_path):
    from ean_tf import modes

    config, _ = trained
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="--output=.*a_file.* is a file"):
        modes.run_eval(config, output=str(blocker / "eval"))


def test_describe_prints_the_models_classes(trained, capsys):
    from ean_tf.data.synthetic import CLASS_NAMES
    from ean_tf.modes import MODES

    config, _ = trained
    MODES["describe"](config)
    out = capsys.readouterr().out
    assert f"classes (7): {', '.join(CLASS_NAMES)}" in out
    assert "32 x 32" in out and "nearest graph, label weight 0.25" in out
    assert f"{config.data.default_train_size} stored training images" in out
    assert "trained on: --dataset=default" in out


def test_a_lost_peer_is_one_line_naming_it_and_how_to_resume(tmp_path):
    import tensorflow as tf

    from ean_tf.runs import lost_peer

    class Resolver:
        task_type, task_id = "worker", 0

        def cluster_spec(self):
            addresses = ["10.0.0.1:2222", "10.0.0.2:2222", "10.0.0.3:2222"]
            return tf.train.ClusterSpec({"worker": addresses})

    class Strategy:
        cluster_resolver = Resolver()

    error = tf.errors.UnavailableError(
        None,
        None,
        "{{function_node __inference_one_step_on_data_1}} Collective ops is aborted"
        " by: recvmsg:Connection reset by peer\nAdditional GRPC error information "
        "from remote target /job:worker/replica:0/task:2 while calling RecvBuf",
    )
    last = tmp_path / "last.keras"
    last.write_text("")
    state = {"epochs_done": 3, "steps_done": 60}
    message = str(lost_peer(error, Strategy(), state, str(last)))
    assert len(message.splitlines()) == 1
    assert message.startswith("worker 0 of the multi-worker run lost worker 2 ")
    assert "10.0.0.3:2222" in message and "10.0.0.2" not in message
    assert "Connection reset by peer" in message and "{{" not in message
    assert f"{last} (3 epochs, step 60)" in message
    assert "rerun the same command on every worker to resume" in message


def test_training_turns_a_lost_peer_into_a_training_error(tmp_path, monkeypatch):
    import tensorflow as tf

    from ean_tf.config import make_config
    from ean_tf.models.ean import EAN
    from ean_tf.runs import TrainingError

    def unavailable(self, *args, **kwargs):
        raise tf.errors.UnavailableError(None, None, "Socket closed")

    monkeypatch.setattr(EAN, "fit", unavailable)
    config = make_config(
        "tiny", data_dir=str(tmp_path / "data"), run_dir=str(tmp_path / "run")
    )
    with pytest.raises(TrainingError, match="Training stopped: Socket closed"):
        train(config, verbose=0)


def test_an_unwritable_run_folder_stops_before_the_data_is_read(tmp_path):
    from ean_tf.config import make_config

    (tmp_path / "blocker").write_text("")
    config = make_config(
        "tiny", data_dir=str(tmp_path / "data"), run_dir=str(tmp_path / "blocker" / "r")
    )
    with pytest.raises(ValueError, match="--run_dir=.*blocker is a file"):
        train(config, verbose=0)
    assert not (tmp_path / "data").exists()
