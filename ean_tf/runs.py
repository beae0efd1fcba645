"""Run plumbing: the strategy, the optimizer and its schedule, atomic saves, the
run state and its checkpoints, log trimming, the run-folder check, model loading,
and filling a trained model's stored graphs from its training split.

Shared by training (`train.py`) and the generator's pre-training (`pretrain.py`);
imports nothing above the models.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import zipfile

import keras
import numpy as np
import tensorflow as tf

from ean_tf.config import EVALUATION_FIELDS, LINEAR_IGNORED, Config
from ean_tf.data.base import error_text
from ean_tf.data.pipeline import make_dataset
from ean_tf.files import atomic_open, atomic_path, write_json
from ean_tf.models.ean import ModelFormatError, check_format
from ean_tf.models.memory import memory_images
from ean_tf.schedules import LearningRate

log = logging.getLogger("ean_tf")


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what was kept."""


def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: MirroredStrategy over 2+ local GPUs, else the default strategy.

    multi_worker must be made before TensorFlow runs anything (collectives are
    configured at start-up), so it is checked first.
    """
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise TrainingError(
                "--strategy=multi_worker needs the TF_CONFIG "
                "environment variable (cluster and task)"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        cpus = tf.config.list_logical_devices("CPU")
        if not gpus and len(cpus) > 1:  # logical CPU devices (tests, debugging)
            return tf.distribute.MirroredStrategy(
                [c.name for c in cpus],
                cross_device_ops=tf.distribute.ReductionToOneDevice(),
            )
        return tf.distribute.MirroredStrategy()
    raise TrainingError(f"Unknown --strategy={name!r}")


def worker_run_dir(strategy: tf.distribute.Strategy, run_dir: str) -> tuple[str, bool]:
    """(folder this process writes to, whether it is the chief).

    Under MultiWorkerMirroredStrategy every worker trains and saves, but only the
    chief (or worker 0 without a chief) writes to `run_dir`; the others write to
    `run_dir/worker_<type>_<id>` so that no two processes write the same file.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return run_dir, True
    task_id = resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if task_type == "chief" or (
        task_type == "worker" and task_id == 0 and not has_chief
    ):
        return run_dir, True
    return os.path.join(run_dir, f"worker_{task_type}_{task_id}"), False


@contextlib.contextmanager
def lock_run_dir(run_dir: str):
    """Holds an exclusive lock on the folder `run_dir` while the block runs: a
    second training in the same folder stops in one line instead of writing over
    this one's files. The kernel drops the lock when the process dies."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(
                f"{run_dir}: another process is training in this folder; wait for "
                "it to finish, or use another --run_dir"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def lost_peer(
    error: Exception, strategy: tf.distribute.Strategy, state: dict, last: str
) -> TrainingError:
    """The one-line error of a multi-worker worker whose peer stopped answering:
    which worker this is, the peers the error names (else all of them), and the
    checkpoint that rerunning the same command on every worker resumes from."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:  # no cluster: not a lost peer
        return TrainingError(f"Training stopped: {error_text(error)}")
    me = (task_type, resolver.task_id)
    cluster = resolver.cluster_spec().as_dict()
    peers = [
        (kind, index, address)
        for kind, addresses in cluster.items()
        for index, address in enumerate(addresses)
        if (kind, index) != me
    ]
    text = str(error)
    named = [
        (kind, index, address)
        for kind, index, address in peers
        if address in text or f"/job:{kind}/replica:0/task:{index}" in text
    ] or peers
    where = (
        f"the last checkpoint here is {last} ({state['epochs_done']} epochs, step "
        f"{state['steps_done']}); rerun the same command on every worker to resume "
        "from it"
        if os.path.isfile(last)
        else "no checkpoint had been written yet; rerun the same command on every "
        "worker to start again"
    )
    return TrainingError(
        f"{me[0]} {me[1]} of the multi-worker run lost "
        + " or ".join(f"{kind} {index} ({address})" for kind, index, address in named)
        + f": {error_text(error)}. Training stopped; {where}."
    )


def make_optimizer(
    config: Config,
    steps_per_epoch: int,
    epochs: int | None = None,
    schedule: str | None = None,
    warmup_epochs: float | None = None,
) -> keras.optimizers.SGD:
    """SGD with the configured schedule; the generator's pre-training passes its own
    epochs, cosine, and a warm-up that fits them."""
    t = config.train
    lr = LearningRate(
        t.learning_rate,
        steps_per_epoch,
        t.epochs if epochs is None else epochs,
        schedule or t.lr_schedule,
        t.lr_decay_epochs,
        t.lr_decay_factor,
        t.lr_warmup_epochs if warmup_epochs is None else warmup_epochs,
    )
    return keras.optimizers.SGD(
        lr,
        momentum=t.momentum,
        nesterov=t.nesterov,
        weight_decay=t.weight_decay or None,
    )


def atomic_save_weights(model: keras.Model, path: str) -> None:
    """`save_weights` through a temporary file renamed into place (path ends in
    .weights.h5)."""
    with atomic_path(path) as tmp:
        model.save_weights(tmp)


def atomic_save(model: keras.Model, path: str) -> None:
    """`model.save` through a temporary file renamed into place (path: .keras)."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def read_state(run_dir: str) -> dict:
    path = os.path.join(run_dir, "state.json")
    if not os.path.isfile(path):
        return {"epochs_done": 0, "steps_done": 0, "best_val_accuracy": None}
    with open(path) as f:
        return json.load(f)


class RestoreEpochMetrics(keras.callbacks.Callback):
    """Puts back the metric sums of a checkpoint taken inside the epoch that a
    resumed run finishes (fit resets metrics just before `on_epoch_begin`)."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_begin(self, epoch, logs=None):
        if self.values is None:
            return
        for metric, values in zip(self.model.metrics, self.values, strict=True):
            for variable, value in zip(metric.variables, values, strict=True):
                variable.assign(value)
        self.values = None  # the first epoch only


class RunCheckpoint(keras.callbacks.Callback):
    """`last.keras` + `state.json` after each epoch (and every `every_steps`
    steps when > 0), and `best.keras` when the validation accuracy improved.

    Files are written then renamed, so a kill at any moment leaves the previous
    complete checkpoint. `steps_done` is the optimizer's step count, from which a
    resumed run finds its place in the epoch and in the data stream. A NaN loss
    stops the run and keeps the last good checkpoint.
    """

    def __init__(self, run_dir: str, state: dict, every_steps: int = 0):
        super().__init__()
        self.run_dir, self.state, self.every_steps = run_dir, state, every_steps
        self.nan_epoch = None
        self.epoch = 0

    def _save(self, mid_epoch: bool = False):
        self.state["steps_done"] = int(self.model.optimizer.iterations.numpy())
        # Inside an epoch, the running sums of its metrics, so that a resumed
        # epoch's logged metrics cover all its steps, not only the resumed ones.
        self.state["epoch_metrics"] = (
            [[float(v.numpy()) for v in m.variables] for m in self.model.metrics]
            if mid_epoch and self.model.distribute_strategy.num_replicas_in_sync == 1
            else None
        )
        cotrainer = getattr(self.model, "cotrainer", None)
        if cotrainer is not None:  # D_m of --generator_cotrain_weight, before state
            atomic_save_weights(
                cotrainer.discriminator,
                os.path.join(self.run_dir, "discriminator.weights.h5"),
            )
        atomic_save(self.model, os.path.join(self.run_dir, "last.keras"))
        write_json(os.path.join(self.run_dir, "state.json"), self.state)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.all(np.isfinite(loss)):
            self.nan_epoch = self.epoch
            self.model.stop_training = True
            return
        if self.every_steps and (batch + 1) % self.every_steps == 0:
            self._save(mid_epoch=True)

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_epoch is not None:
            return
        logs = logs or {}
        self.state["epochs_done"] = epoch + 1
        val = logs.get("val_accuracy")
        best = self.state.get("best_val_accuracy")
        if val is not None and (best is None or val > best):
            self.state["best_val_accuracy"] = float(val)
            self.state["best_epoch"] = epoch + 1
            atomic_save(self.model, os.path.join(self.run_dir, "best.keras"))
        self._save()


class EpochLogger(keras.callbacks.CSVLogger):
    """`log.csv`: one row per epoch, counted from 1 as the progress bar and
    `state.json` count them. `validation=False`: a fit without validation data,
    whose log has no `val_` columns (Keras's CSVLogger adds them, empty)."""

    def __init__(self, filename, append=False, validation=True):
        super().__init__(filename, append=append)
        self.validation = validation

    def on_epoch_end(self, epoch, logs=None):
        if not self.validation and self.keys is None and logs:
            self.keys = sorted(logs)
        super().on_epoch_end(epoch + 1, logs)


def truncate_log(path: str, epochs_done: int) -> None:
    """Drops CSV rows of epochs that were not checkpointed (redone on resume),
    and a row a kill cut short, keeping the line endings CSVLogger writes."""
    if not os.path.isfile(path):
        return
    with open(path, newline="") as f:
        lines = f.readlines()
    kept = lines[:1] + [
        row
        for row in lines[1:]
        if row.endswith("\n")
        and row.split(",")[0].isdigit()
        and int(row.split(",")[0]) <= epochs_done
    ]
    with atomic_open(path, newline="") as f:
        f.writelines(kept)


# Fields that may differ between a run folder and the command that resumes it:
# a longer schedule, where the run is, and what is logged, checked or evaluated.
# Any other difference (model, data, schedule) is another run.
RESUMABLE_FIELDS = EVALUATION_FIELDS | frozenset(
    {
        "epochs",
        "run_dir",
        "overwrite",
        "checkpoint_every_steps",
        "validate_images",
        "skip_bad_images",
        "cache",
        "jit_compile",
        "strategy",
    }
)
_RUN_SECTIONS = ("data", "model", "train")
# What a training run writes into its folder (deleted by --overwrite).
_RUN_FILES = (
    "config.json",
    "last.keras",
    "state.json",
    "best.keras",
    "model.keras",
    "log.csv",
    "metrics.json",
    "summary.json",
    "noisy_labels.csv",
    "bad_images.json",
    "discriminator.weights.h5",
)


def check_run_dir(config: Config, run_dir: str) -> None:
    """Stops before anything in `run_dir` changes when it holds another run.

    Resuming needs the same model, data and schedule (`RESUMABLE_FIELDS` aside,
    and `LINEAR_IGNORED` between two linear-head runs, which never read them) and
    `--epochs` at least the epochs already done. `--overwrite` deletes the
    other run's files instead, and so does a run that stopped before its first
    checkpoint (nothing of it is lost; training holds the folder's lock, so that
    run is not still going).
    """
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        previous = json.load(f)
    current = json.loads(json.dumps(config.to_dict(), default=str))
    heads = (current["model"]["head"], previous.get("model", {}).get("head"))
    ignored = LINEAR_IGNORED if heads == ("linear", "linear") else {}
    differ = [
        f"{name}={old!r} there, {value!r} here"
        for section in _RUN_SECTIONS
        for name, value in current[section].items()
        if name not in RESUMABLE_FIELDS
        and name not in ignored.get(section, ())
        and (old := previous.get(section, {}).get(name, value)) != value
    ]
    done = read_state(run_dir)["epochs_done"]
    if done > config.train.epochs:
        differ.append(f"{done} epochs done there, --epochs={config.train.epochs} here")
    if not differ:
        return
    trained = os.path.isfile(os.path.join(run_dir, "last.keras"))
    if config.train.overwrite or not trained:
        log.warning(
            "%s: deleting the run in %s (%s)",
            "--overwrite" if config.train.overwrite else "No checkpoint",
            run_dir,
            "; ".join(differ),
        )
        for name in _RUN_FILES:
            if os.path.isfile(os.path.join(run_dir, name)):
                os.remove(os.path.join(run_dir, name))
        shutil.rmtree(os.path.join(run_dir, "tb"), ignore_errors=True)
        return
    raise TrainingError(
        f"{run_dir} holds another run ({'; '.join(differ)}). Use a new --run_dir, "
        "or --overwrite to delete that run and start this one there."
    )


def load_model(path: str) -> keras.Model:
    """Loads a `.keras` model written by `train` (custom objects registered); a
    model of another format is refused in one line, before Keras reads it."""
    if not os.path.isfile(path):
        raise TrainingError(f"--checkpoint={path}: no such file")
    try:
        with zipfile.ZipFile(path) as archive:
            saved = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise TrainingError(f"{path}: not a .keras model ({error})") from None
    if saved.get("class_name") == "EAN":
        try:
            check_format(saved.get("config", {}), path)
        except ModelFormatError as error:
            raise TrainingError(str(error)) from None
    return keras.models.load_model(path)


def fill_memory(model, splits, config, batch_size: int) -> None:
    """The nearest graph's store, from the training split without augmentation:
    `model.memory_size` images (all, or drawn with the class prior) and the
    targets training learned from (a noisy run's noisy labels)."""
    if model.memory is None:
        return
    pick = memory_images(
        splits.train.labels,
        model.memory_size,
        config.train.seed,
        splits.train.num_classes,
    )
    subset = splits.train.select(pick)
    ds = make_dataset(subset, config.data.image_size, batch_size, training=False)
    model.build_memory((images for images, _ in ds), subset.soft_targets())
