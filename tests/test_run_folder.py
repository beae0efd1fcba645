"""The modes after training work on a run folder: they start from the run's
config.json, evaluate the data it names, and keep the training's own reports."""

import contextlib
import io
import json
import os
import shlex

import pytest
from conftest import write_png

import flags as ean_flags
from ean_tf import data as data_lib
from ean_tf import modes
from ean_tf.config import config_for_run, make_config
from ean_tf.data import DataError
from ean_tf.runs import write_json
from ean_tf.train import train

# Images a split holds of each class: the test split is not the validation one.
SPLITS = {"train": 12, "val": 4, "test": 5}


def _folder_data(root, classes=("a", "b", "c")):
    for split, n in SPLITS.items():
        for c, name in enumerate(classes):
            for i in range(n):
                write_png(str(root / split / name / f"{i}.png"), seed=100 * c + i)
    return str(root)


def _cli(*args) -> str:
    """`run.py ARGS` in this process (as run.py's main does): its stdout."""
    ean_flags.FLAGS.unparse_flags()
    ean_flags.FLAGS(["run.py", *args])
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            config = ean_flags.config_from_flags()
            modes.MODES[ean_flags.MODE.value](
                config, ean_flags.CHECKPOINT.value, ean_flags.OUTPUT.value
            )
    finally:
        ean_flags.FLAGS.unparse_flags()
    return out.getvalue()


def _next_command(printed: str) -> list[str]:
    """The arguments of the printed "Next:" command, after run.py."""
    (line,) = [line for line in printed.splitlines() if line.startswith("Next: ")]
    words = shlex.split(line.removeprefix("Next: "))
    return words[words.index("run.py") + 1 :]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A tiny training on a class-per-folder data set: (config, summary, what the
    training printed)."""
    tmp = tmp_path_factory.mktemp("folder_run")
    config = make_config(
        "tiny",
        dataset="folder",
        data_dir=_folder_data(tmp / "faces"),
        run_dir=str(tmp / "run"),
        epochs=1,
        adj_warmup_epochs=0,
    )
    summary = train(config, verbose=0)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        modes.print_summary(summary)
    return config, summary, printed.getvalue()


def test_the_printed_next_eval_gives_the_training_accuracies(folder_run):
    config, summary, printed = folder_run
    metrics = os.path.join(config.train.run_dir, "metrics.json")
    with open(metrics) as f:
        trained = json.load(f)
    out = _cli(*_next_command(printed))
    assert "Data: folder at " in out and "split val: 12 images of 3 classes" in out
    with open(metrics) as f:
        evaluated = json.load(f)
    assert {g: r["accuracy"] for g, r in evaluated["graphs"].items()} == summary[
        "accuracy"
    ]
    assert evaluated == trained  # the run's own data: the same report


def test_another_split_alone_is_evaluated_beside_the_run_s_reports(folder_run):
    config, _, printed = folder_run
    run = config.train.run_dir
    with open(os.path.join(run, "metrics.json"), "rb") as f:
        before = f.read()
    out = _cli(*_next_command(printed), "--val_split=test")
    assert "split test: 15 images of 3 classes" in out
    with open(os.path.join(run, "eval_test", "metrics.json")) as f:
        report = json.load(f)
    assert report["num_samples"] == 15 and report["class_names"] == ["a", "b", "c"]
    assert os.path.isfile(os.path.join(run, "eval_test", "confusion.png"))
    with open(os.path.join(run, "metrics.json"), "rb") as f:
        assert f.read() == before


@pytest.mark.parametrize("data", ["builtin", "two_classes"])
def test_data_of_other_classes_stops_before_anything_is_written(
    folder_run, tmp_path, data
):
    """A 3-class model on 7 built-in classes, or on a folder of 2: one line naming
    both class lists; no report, and no built-in images generated."""
    config, _, _ = folder_run
    run = config.train.run_dir
    listing = sorted(os.listdir(run))
    if data == "builtin":
        flags = ["--dataset=default", f"--data_dir={tmp_path / 'cache'}"]
        theirs = "7 classes ['neutral'"
    else:
        flags = [f"--data_dir={_folder_data(tmp_path / 'ab', ('a', 'b'))}"]
        theirs = "2 classes ['a', 'b']"
    with pytest.raises(ValueError) as error:
        _cli("--mode=eval", f"--run_dir={run}", *flags)
    message = str(error.value)
    assert theirs in message and "3 classes of" in message
    assert "['a', 'b', 'c']" in message and "\n" not in message
    assert sorted(os.listdir(run)) == listing
    assert not (tmp_path / "cache").exists()


def test_the_built_in_data_is_never_generated_into_another_data_set(tmp_path):
    faces = _folder_data(tmp_path / "faces")
    before = sorted(os.listdir(faces))
    with pytest.raises(DataError, match=r"--data_dir=.*faces holds 'test'"):
        data_lib.load(make_config("tiny", data_dir=faces).data)
    assert sorted(os.listdir(faces)) == before


# ------------------------------------------- the configuration of a run folder ---


@pytest.fixture
def saved_run(tmp_path):
    """A run folder's config.json (no model): a CSV run trained elsewhere."""
    config = make_config(
        "tiny",
        dataset="csv",
        data_dir=str(tmp_path / "faces.csv"),
        run_dir="/elsewhere/run",
        gcn_units=(16, 8),
        batch_size=8,
    )
    run = tmp_path / "run"
    os.makedirs(run)
    write_json(str(run / "config.json"), config.to_dict())
    return config, str(run)


@pytest.mark.parametrize("mode", ean_flags.RUN_MODES)
def test_a_mode_after_training_starts_from_the_run_s_configuration(
    saved_run, parse, mode
):
    """Every field from config.json, lists as tuples; the folder typed now is the
    run's folder (it may have moved)."""
    config, run = saved_run
    got = parse(f"--mode={mode}", f"--run_dir={run}")
    assert got.data == config.data and got.model == config.model
    assert got.train.run_dir == run and got.train.batch_size == 8
    assert got.model.gcn_units == (16, 8)


def test_a_flag_overrides_its_field_only(saved_run, parse):
    config, run = saved_run
    got = parse("--mode=eval", f"--run_dir={run}", "--val_split=test")
    assert got.data.val_split == "test"
    assert got.data.dataset == "csv" and got.data.data_dir == config.data.data_dir


def test_an_explicit_preset_applies_its_fields_over_the_run_s(saved_run, parse):
    _, run = saved_run
    got = parse("--mode=eval", f"--run_dir={run}", "--config=ferplus48")
    assert got.data.dataset == "ferplus" and got.train.batch_size == 64
    assert got.model.gcn_units == (16, 8)  # a field the preset does not set


def test_a_model_in_a_run_folder_brings_its_run(saved_run, parse):
    _, run = saved_run
    got = parse("--mode=predict", f"--checkpoint={run}/best.keras")
    assert got.train.run_dir == run and got.data.dataset == "csv"


def test_training_and_folders_without_a_run_use_the_flags(saved_run, parse, tmp_path):
    _, run = saved_run
    assert parse("--mode=train", f"--run_dir={run}") == make_config(
        "default", run_dir=run
    )
    empty = str(tmp_path / "empty")
    assert parse("--mode=eval", f"--run_dir={empty}") == make_config(
        "default", run_dir=empty
    )


def test_an_evaluation_of_other_data_or_model_writes_beside_the_run_s(saved_run):
    """The run's own model on the run's own data as training evaluated it: the
    run folder; anything else a folder in it named for what was evaluated."""
    _, run = saved_run
    config = config_for_run(run)
    own = os.path.join(run, "model.keras")
    assert modes.evaluation_dir(config, own) == run
    other = {
        "eval_test": config_for_run(run, val_split="test"),
        "eval_other.csv_val": config_for_run(run, data_dir="/data/other.csv"),
        "eval_ferplus_FER2013Valid": config_for_run(
            run, dataset="ferplus", data_dir="/data/ferplus"
        ),
    }
    for name, evaluated in other.items():
        assert modes.evaluation_dir(evaluated, own) == os.path.join(run, name)
    best = os.path.join(run, "best.keras")
    assert modes.evaluation_dir(config, best) == os.path.join(run, "eval_best_val")
    # Another batch for the batch graph, or other graphs than training's.
    smaller = config_for_run(run, batch_size=4)
    assert modes.evaluation_dir(smaller, own).endswith("eval_val_batch_size-4")
    graphs = modes.evaluation_dir(config, own, "nearest", "label_weight-0.5")
    assert graphs == os.path.join(run, "eval_val_nearest_label_weight-0.5")
