"""Shared helpers of the benchmark scripts: machine description, result files, and
a finished run loaded back."""

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
    and `model.keras`, with the data read from `data_dir` (default the run's). A
    run written by another version of the configuration stops with one line."""
    from absl import app

    from ean_tf import data as data_lib
    from ean_tf.config import ConfigError, config_for_run
    from ean_tf.runs import TrainingError, load_model

    try:
        config = config_for_run(run_dir, **({"data_dir": data_dir} if data_dir else {}))
        model = load_model(os.path.join(run_dir, "model.keras"))
    except (ConfigError, TrainingError) as error:
        raise app.UsageError(f"--run_dir={run_dir}: {error}") from None
    return config, model, data_lib.load(config.data, seed=config.train.seed)
