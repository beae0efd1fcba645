"""Shared helpers of the benchmark scripts: machine description and result files."""

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
