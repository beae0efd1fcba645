"""Training: strategy, data, model, schedule, checkpoints, resume and the summary.

`train(config)` is what `run.py --mode=train` calls. A run folder holds:

    config.json          the full configuration
    last.keras           model + optimizer after the last finished epoch (resume)
    state.json           epochs finished, steps done, best validation accuracy
    best.keras           the best model by validation accuracy
    model.keras          the final model, reference bank filled
    log.csv, tb/         every metric per epoch; TensorBoard logs
    metrics.json, confusion.png   the final evaluation (see evaluate.py)
    noisy_labels.csv     with --noise_rate > 0: path, clean_label, noisy_label
    bad_images.json      with --skip_bad_images: what was skipped and why

Rerunning the same command after the process died continues from `last.keras`
with the optimizer, the warm-up state, the step count and the data position.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from ean_tf import data as data_lib
from ean_tf.config import Config
from ean_tf.data import noise as noise_lib
from ean_tf.data.pipeline import make_dataset
from ean_tf.models.backbones import load_backbone_weights
from ean_tf.models.ean import (
    DEFAULT_GRAPH,
    EAN,
    INFERENCE_GRAPHS,
    AdjacencyWarmup,
    build_model,
)
from ean_tf.models.reference import select_context
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
    """`save_weights` to a temporary file renamed into place (path: .weights.h5)."""
    tmp = path[: -len(".weights.h5")] + ".tmp.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, path)


def _atomic_save(model: keras.Model, path: str) -> None:
    tmp = path + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


def _write_json(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, default=str)
    os.replace(tmp, path)


def read_state(run_dir: str) -> dict:
    path = os.path.join(run_dir, "state.json")
    if not os.path.isfile(path):
        return {"epochs_done": 0, "steps_done": 0, "best_val_accuracy": None}
    with open(path) as f:
        return json.load(f)


class _RestoreEpochMetrics(keras.callbacks.Callback):
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
        _atomic_save(self.model, os.path.join(self.run_dir, "last.keras"))
        _write_json(os.path.join(self.run_dir, "state.json"), self.state)

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
            _atomic_save(self.model, os.path.join(self.run_dir, "best.keras"))
        self._save()


def _truncate_log(path: str, epochs_done: int) -> None:
    """Drops CSV rows of epochs that were not checkpointed (redone on resume),
    keeping the line endings CSVLogger writes."""
    if not os.path.isfile(path):
        return
    with open(path, newline="") as f:
        lines = f.readlines()
    kept = lines[:1] + [
        row for row in lines[1:] if int(row.split(",")[0]) < epochs_done
    ]
    with open(path, "w", newline="") as f:
        f.writelines(kept)


# Fields that may differ between a run folder and the command that resumes it:
# a longer schedule, where the run is, and what is logged, checked or evaluated.
# Any other difference (model, data, schedule) is another run.
RESUMABLE_FIELDS = frozenset(
    {
        "epochs",
        "run_dir",
        "overwrite",
        "checkpoint_every_steps",
        "validate_images",
        "skip_bad_images",
        "cache",
        "jit_compile",
        "inference_graph",
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

    Resuming needs the same model, data and schedule (`RESUMABLE_FIELDS` aside)
    and `--epochs` at least the epochs already done. `--overwrite` deletes the
    other run's files instead.
    """
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        previous = json.load(f)
    current = json.loads(json.dumps(config.to_dict(), default=str))
    differ = [
        f"{name}={old!r} there, {value!r} here"
        for section in _RUN_SECTIONS
        for name, value in current[section].items()
        if name not in RESUMABLE_FIELDS
        and (old := previous.get(section, {}).get(name, value)) != value
    ]
    done = read_state(run_dir)["epochs_done"]
    if done > config.train.epochs:
        differ.append(f"{done} epochs done there, --epochs={config.train.epochs} here")
    if not differ:
        return
    if config.train.overwrite:
        log.warning("--overwrite: deleting the run in %s", run_dir)
        for name in _RUN_FILES:
            if os.path.isfile(os.path.join(run_dir, name)):
                os.remove(os.path.join(run_dir, name))
        shutil.rmtree(os.path.join(run_dir, "tb"), ignore_errors=True)
        return
    raise TrainingError(
        f"{run_dir} holds another run ({'; '.join(differ)}). Use a new --run_dir, "
        "or --overwrite to delete that run and start this one there."
    )


def _bank_dataset(splits, config: Config, batch_size: int):
    return make_dataset(
        splits.train, config.data.image_size, batch_size, training=False
    )


def fill_references(model: EAN, splits, config: Config, batch_size: int) -> dict:
    """The reference bank and the reference context of the served graphs, from the
    training split without augmentation; returns the bank's per-class counts."""
    counts = model.build_bank(
        _bank_dataset(splits, config, batch_size), seed=config.train.seed
    )
    if model.head_type == "ean":
        pick = select_context(
            splits.train.labels,
            model.context_size,
            model.context_sets,
            config.train.seed,
            splits.train.num_classes,
        )
        subset = splits.train.select(pick.reshape(-1))
        ds = make_dataset(subset, config.data.image_size, batch_size, training=False)
        model.build_context(images for images, _ in ds)
    return counts


def train(config: Config, verbose: int = 1) -> dict:
    """Trains (or resumes) a run; returns the summary dict, also in summary.json."""
    t0 = time.time()
    d, m, t = config.data, config.model, config.train
    strategy = make_strategy(t.strategy)
    run_dir, is_chief = worker_run_dir(strategy, t.run_dir)
    check_run_dir(config, run_dir)  # before anything in the folder changes
    os.makedirs(run_dir, exist_ok=True)
    keras.utils.set_random_seed(t.seed)
    if t.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")

    splits = data_lib.load(d, seed=t.seed)
    if splits.bad_images:
        _write_json(os.path.join(run_dir, "bad_images.json"), splits.bad_images)
        log.warning(
            "Skipped %d unreadable images, listed in %s",
            len(splits.bad_images),
            os.path.join(run_dir, "bad_images.json"),
        )
    if d.noise_rate > 0:
        noise_lib.write_noisy_labels(
            splits.train, os.path.join(run_dir, "noisy_labels.csv")
        )
    _write_json(os.path.join(run_dir, "config.json"), config.to_dict())

    replicas = strategy.num_replicas_in_sync
    batch = t.batch_size
    if batch % replicas:
        raise TrainingError(
            f"--batch_size={batch} is not divisible by the {replicas} replicas"
        )
    steps = t.steps_per_epoch or max(1, len(splits.train) // batch)
    if m.head != "ean":
        graph = "none (linear head)"
    elif replicas == 1 or t.cross_replica_graph:
        graph = f"{batch} nodes (the global batch)"
    else:
        graph = f"{batch // replicas} nodes per replica (the local batch)"
    log.info(
        "Train %d, validation %d images, %d classes; %d replicas, %d steps "
        "per epoch; graph: %s",
        len(splits.train),
        len(splits.val),
        len(splits.class_names),
        replicas,
        steps,
        graph,
    )

    state = read_state(run_dir)
    last = os.path.join(run_dir, "last.keras")
    resume = state["epochs_done"] > 0 and os.path.isfile(last)
    with strategy.scope():
        if resume:
            model = keras.models.load_model(last)
            log.info(
                "Resuming %s after epoch %d (step %d)",
                run_dir,
                state["epochs_done"],
                state["steps_done"],
            )
        else:
            state = {"epochs_done": 0, "steps_done": 0, "best_val_accuracy": None}
            model = build_model(
                m,
                d,
                splits.train.num_classes,
                splits.class_names,
                t.label_smoothing,
                t.cross_replica_graph,
                graph_nodes=batch
                if t.cross_replica_graph or replicas == 1
                else batch // replicas,
            )
            if m.backbone_weights:
                load_backbone_weights(model.backbone, m.backbone_weights)
            if config.generator.generator_checkpoint:  # --mode=pretrain_generator
                load_backbone_weights(
                    model.backbone, config.generator.generator_checkpoint
                )
            model.compile(
                optimizer=make_optimizer(config, steps), jit_compile=t.jit_compile
            )
    validation_graph = "batch" if m.head == "ean" else "isolated"
    model.set_inference_graph(validation_graph)
    g = config.generator
    if g.generator_cotrain_weight > 0:
        from ean_tf.generator import CoTrainer, view_kinds

        with strategy.scope():
            model.cotrainer = CoTrainer(
                model.backbone.outputs[1].shape[1:],
                g.generator_cotrain_weight,
                g.d_learning_rate,
                view_kinds(config),
                t.seed,
            )
        d_path = os.path.join(run_dir, "discriminator.weights.h5")
        if resume and os.path.isfile(d_path):
            model.cotrainer.discriminator.load_weights(d_path)

    done = state["epochs_done"]
    summary = {"run_dir": run_dir, "epochs_done": done, "chief": is_chief}
    log_csv = os.path.join(run_dir, "log.csv")
    if resume:
        _truncate_log(log_csv, done)
    # The batch graph's evaluation order, as --mode=eval uses it (defect: a
    # class-major split put same-class images in one batch and inflated it).
    val_ds = make_dataset(
        splits.val.select(splits.val.shuffle_order(0)),
        d.image_size,
        batch,
        training=False,
        cache=d.cache,
    )
    checkpoint = RunCheckpoint(run_dir, state, t.checkpoint_every_steps)
    append = resume
    while state["epochs_done"] < t.epochs:
        done = state["epochs_done"]
        # A checkpoint taken mid-epoch: finish that epoch alone, then the rest.
        partial = state["steps_done"] - done * steps
        train_ds = make_dataset(
            splits.train,
            d.image_size,
            batch,
            training=True,
            seed=t.seed,
            flip=d.random_flip,
            crop_pad=d.random_crop_pad,
            erasing=d.random_erasing,
            cache=d.cache,
            deterministic=d.deterministic,
            balanced=d.balanced_sampling,
            skip=state["steps_done"] * batch,  # the data position
            drop_remainder=True,
        )
        callbacks = [
            AdjacencyWarmup(t.adj_warmup_epochs),
            # The CSV row is written before the checkpoint, and rows past the
            # checkpoint are dropped on resume: a kill in between loses nothing.
            keras.callbacks.CSVLogger(log_csv, append=append),
            checkpoint,
            keras.callbacks.TensorBoard(os.path.join(run_dir, "tb"), write_graph=False),
        ]
        if 0 < partial < steps:  # before the logger reads the epoch's metrics
            callbacks.insert(0, _RestoreEpochMetrics(state.get("epoch_metrics")))
        try:
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=done + 1 if 0 < partial < steps else t.epochs,
                initial_epoch=done,
                steps_per_epoch=steps - partial if 0 < partial < steps else steps,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,
            )
        except tf.errors.InvalidArgumentError as error:
            _name_undecodable_image(error, splits, state, last)
        append = True
        if checkpoint.nan_epoch is None and state["epochs_done"] == done:
            break  # stopped early by a callback: nothing more to do here
        if checkpoint.nan_epoch is not None:
            where = (
                f"The last good checkpoint ({state['epochs_done']} epochs, step "
                f"{state['steps_done']}) is {last}."
                if os.path.isfile(last)
                else "No checkpoint had been written yet."
            )
            raise TrainingError(
                f"The loss became NaN in epoch {checkpoint.nan_epoch + 1}; training "
                f"stopped. {where} Lower --learning_rate or check the data."
            )
    summary["epochs_done"] = state["epochs_done"]

    # The reference bank, then the final model and its evaluation.
    log.info("Filling the reference context and bank, then evaluating")
    bank_counts = fill_references(model, splits, config, batch)
    served = DEFAULT_GRAPH if m.inference_graph == "all" else m.inference_graph
    model.set_inference_graph(served)
    final = os.path.join(run_dir, "model.keras")
    _atomic_save(model, final)

    from ean_tf import evaluate as evaluate_lib

    report = evaluate_lib.evaluate_model(
        model,
        splits.val,
        d.image_size,
        batch,
        run_dir,
        graphs=evaluation_graphs(model, served),
        checkpoint=final,
        noisy_labels=os.path.join(run_dir, "noisy_labels.csv")
        if d.noise_rate > 0
        else None,
        train_examples=splits.train,
    )
    summary.update(
        model=final,
        best_model=os.path.join(run_dir, "best.keras"),
        best_val_accuracy=state.get("best_val_accuracy"),
        replicas=replicas,
        bank_per_class=bank_counts,
        metrics=os.path.join(run_dir, "metrics.json"),
        accuracy={g: r["accuracy"] for g, r in report["graphs"].items()},
        confusion=os.path.join(run_dir, "confusion.png"),
        logs=os.path.join(run_dir, "log.csv"),
        tensorboard=os.path.join(run_dir, "tb"),
        seconds=round(time.time() - t0, 1),
    )
    _write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary


def _name_undecodable_image(error, splits, state: dict, last: str) -> None:
    """A decode error inside the input pipeline names no file: find the file
    (decoding every image as training does) and raise a `DataError` naming it,
    with where the last checkpoint is. Other errors are raised unchanged."""
    if "decode" not in str(error).lower() and "image" not in str(error).lower():
        raise error
    kept = (
        f"The last checkpoint ({state['epochs_done']} epochs) is {last}; rerun "
        "the command after fixing the file to resume from it."
        if os.path.isfile(last)
        else "No checkpoint had been written yet."
    )
    for split in (splits.train, splits.val):
        try:
            data_lib.check_images(split, skip_bad=False, full_decode=True)
        except data_lib.DataError as bad:
            raise data_lib.DataError(f"{bad} {kept}") from None
    raise error


def evaluation_graphs(model: EAN, served: str) -> tuple[str, ...]:
    """The graphs evaluated after training: the served one first, then the rest."""
    if model.head_type != "ean":
        return ("isolated",)
    return (served, *(g for g in INFERENCE_GRAPHS if g != served))


def load_model(path: str) -> EAN:
    """Loads a `.keras` model written by `train` (custom objects registered)."""
    if not os.path.isfile(path):
        raise TrainingError(f"--checkpoint={path}: no such file")
    return keras.models.load_model(path)
