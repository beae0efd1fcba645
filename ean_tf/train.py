"""Training: strategy, data, model, schedule, checkpoints, resume and the summary.

`train(config)` is what `run.py --mode=train` calls. A run folder holds:

    config.json          the full configuration
    last.keras           model + optimizer after the last finished epoch (resume);
                         after the last epoch, model.keras
    state.json           epochs finished, steps done, best validation accuracy
    best.keras           the best model by validation accuracy; after the last
                         epoch, its store filled and its served graph set as
                         model.keras's
    model.keras          the final model, its nearest graph's store filled
    log.csv, tb/         every metric per epoch (counted from 1); TensorBoard logs
    metrics.json, confusion_<graph>.png   the final evaluation (see evaluate.py)
    noisy_labels.csv     with --noise_rate > 0: path, clean_label, noisy_label
    bad_images.json      with --skip_bad_images: what was skipped and why

Rerunning the same command after the process died continues from `last.keras`
with the optimizer, the warm-up state, the step count and the data position
(from a step checkpoint inside the first epoch too). A training holds a lock on
its folder: a second one there stops in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time

import keras
import tensorflow as tf

from ean_tf import data as data_lib
from ean_tf.build import build_model
from ean_tf.config import Config, ConfigError
from ean_tf.data import noise as noise_lib
from ean_tf.data.pipeline import make_dataset
from ean_tf.files import atomic_path, writable_folder
from ean_tf.models.backbones import load_backbone_weights
from ean_tf.models.ean import DEFAULT_GRAPH, EAN, AdjacencyWarmup
from ean_tf.runs import (
    EpochLogger,
    RestoreEpochMetrics,
    RunCheckpoint,
    TrainingError,
    atomic_save,
    check_run_dir,
    fill_memory,
    lock_run_dir,
    lost_peer,
    make_optimizer,
    make_strategy,
    read_state,
    truncate_log,
    worker_run_dir,
    write_json,
)

log = logging.getLogger("ean_tf")


@dataclasses.dataclass
class _Run:
    """What the steps of `train` share: the configuration, where and how it runs,
    its data and its schedule."""

    config: Config
    strategy: tf.distribute.Strategy
    run_dir: str
    is_chief: bool
    splits: data_lib.DataSplits
    batch: int
    steps: int

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def graph_nodes(self) -> int:
        """Nodes of a training graph: the global batch, or each replica's."""
        t = self.config.train
        return self.batch if t.cross_replica_graph else self.batch // self.replicas

    @property
    def last(self) -> str:
        return os.path.join(self.run_dir, "last.keras")


def train(config: Config, verbose: int = 1) -> dict:
    """Trains (or resumes) a run; returns the summary dict, also in summary.json."""
    t0 = time.time()
    with contextlib.ExitStack() as held:  # the run folder, locked until the end
        run = _open_run(config, held)
        model, state, resume = _build_or_resume(run)
        _attach_cotrainer(run, model, resume)
        epochs_before = state["epochs_done"]
        _fit(run, model, state, resume, verbose)
        return _finish(run, model, state, t0, epochs_before)


def _open_run(config: Config, held: contextlib.ExitStack) -> _Run:
    """The strategy, the run folder (locked against another training, and checked
    before anything in it changes), the data and the batch checked against it,
    then the folder and the files that record them."""
    d, t = config.data, config.train
    strategy = make_strategy(t.strategy)
    run_dir, is_chief = worker_run_dir(strategy, t.run_dir)
    writable_folder(run_dir, "--run_dir")
    locked = os.path.isdir(run_dir)
    if locked:
        held.enter_context(lock_run_dir(run_dir))
    check_run_dir(config, run_dir)
    keras.utils.set_random_seed(t.seed)
    splits = data_lib.load(d, t.seed, config.export.max_image_pixels)
    replicas = strategy.num_replicas_in_sync
    if t.batch_size > len(splits.train):
        raise ConfigError(
            f"--batch_size={t.batch_size}: more than the {len(splits.train)} "
            f"training images; pass --batch_size={len(splits.train)} or less"
        )
    if t.batch_size % replicas:
        raise TrainingError(
            f"--batch_size={t.batch_size} is not divisible by the {replicas} replicas"
        )
    if not locked:
        os.makedirs(run_dir, exist_ok=True)
        held.enter_context(lock_run_dir(run_dir))
    if t.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    if splits.bad_images:
        write_json(os.path.join(run_dir, "bad_images.json"), splits.bad_images)
        log.warning(
            "Skipped %d unreadable images, listed in %s",
            len(splits.bad_images),
            os.path.join(run_dir, "bad_images.json"),
        )
    if d.noise_rate > 0:
        noise_lib.write_noisy_labels(
            splits.train, os.path.join(run_dir, "noisy_labels.csv")
        )
    write_json(os.path.join(run_dir, "config.json"), config.to_dict())
    steps = t.steps_per_epoch or max(1, len(splits.train) // t.batch_size)
    run = _Run(config, strategy, run_dir, is_chief, splits, t.batch_size, steps)
    if config.model.head != "ean":
        graph = "none (linear head)"
    elif replicas == 1 or t.cross_replica_graph:
        graph = f"{run.graph_nodes} nodes (the global batch)"
    else:
        graph = f"{run.graph_nodes} nodes per replica (the local batch)"
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
    return run


def _build_or_resume(run: _Run) -> tuple[EAN, dict, bool]:
    """The model from `last.keras` with its state, or a new compiled one."""
    c = run.config
    state = read_state(run.run_dir)
    # A step checkpoint (--checkpoint_every_steps) inside the first epoch too.
    done = state["epochs_done"] > 0 or state["steps_done"] > 0
    resume = done and os.path.isfile(run.last)
    with run.strategy.scope():
        if resume:
            model = keras.models.load_model(run.last)
            log.info(
                "Resuming %s %s (step %d)",
                run.run_dir,
                f"after epoch {state['epochs_done']}"
                if state["epochs_done"]
                else "inside epoch 1",
                state["steps_done"],
            )
        else:
            state = {"epochs_done": 0, "steps_done": 0, "best_val_accuracy": None}
            model = build_model(
                c,
                run.splits.train.num_classes,
                run.splits.class_names,
                train_images=len(run.splits.train.labels),
            )
            if c.model.backbone_weights:
                load_backbone_weights(model.backbone, c.model.backbone_weights)
            if c.generator.generator_checkpoint:  # --mode=pretrain_generator
                load_backbone_weights(model.backbone, c.generator.generator_checkpoint)
            model.compile(
                optimizer=make_optimizer(c, run.steps), jit_compile=c.train.jit_compile
            )
    model.set_inference_graph("batch" if c.model.head == "ean" else "isolated")
    return model, state, resume


def _attach_cotrainer(run: _Run, model: EAN, resume: bool) -> None:
    """--generator_cotrain_weight: D_m's view head trained alongside EAN."""
    g, t = run.config.generator, run.config.train
    if g.generator_cotrain_weight <= 0:
        return
    from ean_tf.data.views import view_kinds
    from ean_tf.models.generator import CoTrainer

    with run.strategy.scope():
        model.cotrainer = CoTrainer(
            model.backbone.outputs[1].shape[1:],
            g.generator_cotrain_weight,
            g.d_learning_rate,
            view_kinds(run.config),
            t.seed,
        )
    d_path = os.path.join(run.run_dir, "discriminator.weights.h5")
    if resume and os.path.isfile(d_path):
        model.cotrainer.discriminator.load_weights(d_path)


def _fit(run: _Run, model: EAN, state: dict, resume: bool, verbose: int) -> None:
    """The epochs still to do, from the data position of the last checkpoint."""
    d, t = run.config.data, run.config.train
    batch, steps, splits = run.batch, run.steps, run.splits
    log_csv = os.path.join(run.run_dir, "log.csv")
    if resume:
        truncate_log(log_csv, state["epochs_done"])
    # The batch graph's evaluation order, as --mode=eval uses it (a class-major
    # split would put same-class images in one batch and inflate it).
    val_ds = make_dataset(
        splits.val.select(splits.val.shuffle_order(0)),
        d.image_size,
        batch,
        training=False,
        cache=d.cache,
    )
    checkpoint = RunCheckpoint(run.run_dir, state, t.checkpoint_every_steps)
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
            EpochLogger(log_csv, append=append),
            checkpoint,
            keras.callbacks.TensorBoard(
                os.path.join(run.run_dir, "tb"), write_graph=False
            ),
        ]
        if 0 < partial < steps:  # before the logger reads the epoch's metrics
            callbacks.insert(0, RestoreEpochMetrics(state.get("epoch_metrics")))
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
            kept = (
                f"The last checkpoint ({state['epochs_done']} epochs) is {run.last}; "
                "rerun the command after fixing the file to resume from it."
                if os.path.isfile(run.last)
                else "No checkpoint had been written yet."
            )
            data_lib.name_undecodable_image(
                error,
                (splits.train, splits.val),
                kept,
                run.config.export.max_image_pixels,
            )
        except tf.errors.UnavailableError as error:  # a multi-worker peer is gone
            raise lost_peer(error, run.strategy, state, run.last) from None
        append = True
        if checkpoint.nan_epoch is not None:
            where = (
                f"The last good checkpoint ({state['epochs_done']} epochs, step "
                f"{state['steps_done']}) is {run.last}."
                if os.path.isfile(run.last)
                else "No checkpoint had been written yet."
            )
            raise TrainingError(
                f"The loss became NaN in epoch {checkpoint.nan_epoch + 1}; training "
                f"stopped. {where} Lower --learning_rate or check the data."
            )
        if state["epochs_done"] == done:
            break  # stopped early by a callback: nothing more to do here


def _finish(
    run: _Run, model: EAN, state: dict, t0: float, epochs_before: int
) -> dict:
    """The nearest graph's store, the final model, its evaluation in every graph,
    and the summary. `best.keras` gets its own store and the served graph too,
    and `last.keras` becomes `model.keras`, so that every model the run leaves
    answers as `model.keras` does."""
    from ean_tf import evaluate as evaluate_lib

    d, m = run.config.data, run.config.model
    log.info("Storing the training images of the nearest graph, then evaluating")
    served = DEFAULT_GRAPH if m.inference_graph == "all" else m.inference_graph
    final = os.path.join(run.run_dir, "model.keras")
    best = os.path.join(run.run_dir, "best.keras")
    if os.path.isfile(best):  # saved by the checkpoint in the training graph
        best_model = keras.models.load_model(best)
        fill_memory(best_model, run.splits, run.config, run.batch)
        best_model.set_inference_graph(served)
        atomic_save(best_model, best)
    fill_memory(model, run.splits, run.config, run.batch)
    model.set_inference_graph(served)
    atomic_save(model, final)
    with atomic_path(run.last) as tmp:  # the same model, its optimizer included
        shutil.copyfile(final, tmp)
    noisy = os.path.join(run.run_dir, "noisy_labels.csv")
    report = evaluate_lib.evaluate_model(
        model,
        run.splits.val,
        d.image_size,
        run.batch,
        run.run_dir,
        graphs=evaluate_lib.evaluation_graphs(model),
        checkpoint=final,
        noisy_labels=noisy if d.noise_rate > 0 else None,
        train_examples=run.splits.train,
    )
    summary = {
        "run_dir": run.run_dir,
        "epochs_done": state["epochs_done"],
        "epochs_trained": state["epochs_done"] - epochs_before,
        "chief": run.is_chief,
        "model": final,
        "best_model": best,
        "best_val_accuracy": state.get("best_val_accuracy"),
        "replicas": run.replicas,
        "metrics": os.path.join(run.run_dir, "metrics.json"),
        "accuracy": {g: r["accuracy"] for g, r in report["graphs"].items()},
        "confusion": [
            os.path.join(run.run_dir, f"confusion_{g}.png") for g in report["graphs"]
        ],
        "logs": os.path.join(run.run_dir, "log.csv"),
        "tensorboard": os.path.join(run.run_dir, "tb"),
        "seconds": round(time.time() - t0, 1),
    }
    write_json(os.path.join(run.run_dir, "summary.json"), summary)
    return summary
