"""Shared helpers of the benchmark scripts: machine description, result files, and
a trained run rebuilt with other served-graph settings."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS_DIR = os.path.join(ROOT, "bench", "results")
FERPLUS_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "ferplus"))


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpus": gpus,
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", ""),
    }


def git_commit() -> str:
    """HEAD, with ``-dirty`` when tracked files differ from it."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return ""


# Taken when a bench script starts, not when it writes: a run lasts long enough for
# the tree to move on under it.
COMMIT = git_commit()


def write_result(name: str, result: dict, out_dir: str = RESULTS_DIR) -> str:
    """Writes `<out_dir>/<name>.json` with the command, machine and date added."""
    os.makedirs(out_dir, exist_ok=True)
    result = {
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "commit": COMMIT,
        **result,
    }
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
    return path


def define_run_flags(name: str) -> None:
    """The flags of a bench that re-evaluates a finished run: --run_dir (required),
    --data_dir, --out_dir and --name (default `name`)."""
    from absl import flags

    flags.DEFINE_string(
        "run_dir", None, "A finished EAN run (model.keras, config.json)."
    )
    flags.DEFINE_string("data_dir", "", "Data root (default: the run's own).")
    flags.DEFINE_string("out_dir", RESULTS_DIR, "Where the JSON goes.")
    flags.DEFINE_string("name", name, "Result file name.")
    flags.mark_flag_as_required("run_dir")


def load_run(run_dir: str, data_dir: str = ""):
    """A finished run's (config, trained model, data splits): `<run_dir>/config.json`
    and `model.keras`, with the data read from `data_dir` (default the run's)."""
    import keras

    from ean_tf import data as data_lib
    from ean_tf.config import Config, DataConfig, ModelConfig, TrainConfig, replace

    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)
    config = Config(
        data=DataConfig(**saved["data"]),
        model=ModelConfig(**saved["model"]),
        train=TrainConfig(**saved["train"]),
    )
    if data_dir:
        config = replace(config, data_dir=data_dir)
    trained = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    return config, trained, data_lib.load(config.data, seed=config.train.seed)


def rebuilt(trained, config, splits, **overrides):
    """The trained network built again with `ModelConfig` overrides (served-graph
    settings such as context_sets or self_weight), every trained weight copied and
    the stored graphs filled from the training split, as training fills them."""
    from ean_tf.config import replace
    from ean_tf.models.ean import build_model
    from ean_tf.runs import fill_references

    model = build_model(
        replace(config, **overrides).model,
        config.data,
        trained.num_classes,
        trained.class_names,
        graph_nodes=trained.context_size + 1,
        train_images=len(splits.train.labels),
    )

    # The stored graphs are filled below (a model saved before the nearest graph
    # existed has no memory to copy); every other weight is copied in order.
    def kept(m):
        skip = {id(v) for v in m.context.weights}
        if m.memory is not None:
            skip |= {id(v) for v in m.memory.weights}
        return [v for v in m.weights if id(v) not in skip]

    for mine, theirs in zip(kept(model), kept(trained), strict=True):
        mine.assign(theirs)
    fill_references(model, splits, config, config.train.batch_size)
    return model
