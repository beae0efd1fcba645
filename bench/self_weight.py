"""The served graphs of a trained run with a self-weight chosen at inference.

    python bench/self_weight.py --run_dir=runs/bench/clean/ean --alphas=0,0.25,0.5

Loads `<run_dir>/model.keras` and the run's `config.json`, builds the same network
with `--self_weight=alpha` for each alpha (Â -> alpha I + (1 - alpha) Â, each node
keeping alpha of its own row), copies every trained weight, fills the stored graphs
from the training split (as training does) and evaluates `--graphs` on the
validation split. With one GCN layer, alpha mixes the isolated and graph logits,
so this measures how much of a served answer should be the image's own. A run
trained with a self-weight has its own alpha among the rows; alpha = the run's
own with its seed is the run's own result. Writes `<out_dir>/<name>.json` with
accuracy and mean class accuracy per alpha and graph.
"""

from __future__ import annotations

import os

import common
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("alphas", ["0", "0.25", "0.5", "0.75"], "Self-weights, in [0, 1).")
flags.DEFINE_list("graphs", ["context", "bank", "batch"], "Graphs to evaluate.")
common.define_run_flags("self_weight")


def main(argv):
    del argv
    from ean_tf import evaluate

    config, trained, splits = common.load_run(FLAGS.run_dir, FLAGS.data_dir)
    rows = {}
    for alpha in FLAGS.alphas:
        model = common.rebuilt(trained, config, splits, self_weight=float(alpha))
        report = evaluate.evaluate_model(
            model,
            splits.val,
            config.data.image_size,
            config.train.batch_size,
            os.path.join(FLAGS.run_dir, f"self_weight_{alpha}"),
            graphs=tuple(FLAGS.graphs),
        )
        rows[alpha] = {
            graph: {
                "accuracy": r["accuracy"],
                "mean_class_accuracy": r["mean_class_accuracy"],
            }
            for graph, r in report["graphs"].items()
        }
        print(alpha, rows[alpha], flush=True)
    common.write_result(
        FLAGS.name,
        {
            "run_dir": FLAGS.run_dir,
            "trained_self_weight": trained.self_weight,
            "self_weights": rows,
        },
        FLAGS.out_dir,
    )


if __name__ == "__main__":
    app.run(main)
