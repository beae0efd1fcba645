"""The served graph with several reference contexts, on a trained run.

    python bench/context_sets.py --run_dir=runs/bench/clean/ean --sets=1,4

Loads `<run_dir>/model.keras` and the run's `config.json`, builds the same network
with `--context_sets=M` for each M, copies every trained weight, fills the M
contexts from the training split (as training does) and evaluates the context
graph on the validation split. Writes `<out_dir>/<name>.json` with accuracy and
mean class accuracy per M; M = 1 with the run's own seed is the run's own context.
"""

from __future__ import annotations

import os

import common
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("sets", ["1", "4"], "Numbers of contexts to evaluate.")
common.define_run_flags("context_sets")


def main(argv):
    del argv
    from ean_tf import evaluate

    config, trained, splits = common.load_run(FLAGS.run_dir, FLAGS.data_dir)
    batch = config.train.batch_size
    rows = {}
    for sets in (int(s) for s in FLAGS.sets):
        model = common.rebuilt(trained, config, splits, context_sets=sets)
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
