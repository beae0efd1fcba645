"""The served graph with several reference contexts, on a trained run.

    python bench/context_sets.py --run_dir=runs/bench/clean/ean --sets=1,4

Loads `<run_dir>/model.keras` and the run's `config.json`, builds the same network
with `--context_sets=M` for each M, copies every trained weight, fills the M
contexts from the training split (as training does) and evaluates the context
graph on the validation split. Writes `<out_dir>/<name>.json` with accuracy and
mean class accuracy per M; M = 1 with the run's own seed is the run's own context.
"""

from __future__ import annotations

import json
import os

import common
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", None, "A finished EAN run (model.keras, config.json).")
flags.DEFINE_list("sets", ["1", "4"], "Numbers of contexts to evaluate.")
flags.DEFINE_string("data_dir", "", "Data root (default: the run's own).")
flags.DEFINE_string("out_dir", common.RESULTS_DIR, "Where the JSON goes.")
flags.DEFINE_string("name", "context_sets", "Result file name.")
flags.mark_flag_as_required("run_dir")


def main(argv):
    del argv
    import keras

    from ean_tf import data as data_lib
    from ean_tf import evaluate
    from ean_tf.config import Config, DataConfig, ModelConfig, TrainConfig, replace
    from ean_tf.models.ean import build_model
    from ean_tf.train import fill_references

    with open(os.path.join(FLAGS.run_dir, "config.json")) as f:
        saved = json.load(f)
    config = Config(
        data=DataConfig(**saved["data"]),
        model=ModelConfig(**saved["model"]),
        train=TrainConfig(**saved["train"]),
    )
    if FLAGS.data_dir:
        config = replace(config, data_dir=FLAGS.data_dir)
    trained = keras.models.load_model(os.path.join(FLAGS.run_dir, "model.keras"))
    splits = data_lib.load(config.data, seed=config.train.seed)
    batch = config.train.batch_size
    rows = {}
    for sets in (int(s) for s in FLAGS.sets):
        model = build_model(
            replace(config, context_sets=sets).model,
            config.data,
            trained.num_classes,
            trained.class_names,
            graph_nodes=trained.context_size + 1,
        )
        skip = {v.path for v in model.context.weights}
        for mine, theirs in zip(model.weights, trained.weights, strict=True):
            if mine.path not in skip:
                mine.assign(theirs)
        fill_references(model, splits, config, batch)
        report = evaluate.evaluate_model(
            model,
            splits.val,
            config.data.image_size,
            batch,
            os.path.join(FLAGS.run_dir, f"context_sets_{sets}"),
            graphs=("context",),
        )
        rows[str(sets)] = {
            "accuracy": report["accuracy"],
            "mean_class_accuracy": report["mean_class_accuracy"],
        }
        print(sets, rows[str(sets)], flush=True)
    common.write_result(
        FLAGS.name,
        {"run_dir": FLAGS.run_dir, "context_size": trained.context_size, "sets": rows},
        FLAGS.out_dir,
    )


if __name__ == "__main__":
    app.run(main)
