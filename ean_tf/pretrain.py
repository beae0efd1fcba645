"""`--mode=pretrain_generator`: adversarial pre-training of the backbone G_enc.

`pretrain` writes the backbone weights that `--mode=train
--generator_checkpoint=...` starts from, its log, and the paper's figure 4 (conv3
maps of a face and its perturbed views, before and after pre-training; see
`visualize.feature_figure`). A killed pre-training resumes from its last finished
epoch, with both optimizers' state. The models are in `models/generator.py`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf

from ean_tf import data as data_lib
from ean_tf.config import Config
from ean_tf.data import views
from ean_tf.data.base import Examples
from ean_tf.data.pipeline import make_dataset
from ean_tf.data.views import view_kinds
from ean_tf.files import writable_file, writable_folder
from ean_tf.models.backbones import build_backbone, load_backbone_weights
from ean_tf.models.generator import InvariantFeatureGenerator
from ean_tf.runs import (
    EpochLogger,
    atomic_save_weights,
    make_optimizer,
    make_strategy,
    truncate_log,
    worker_run_dir,
    write_json,
)
from ean_tf.visualize import feature_figure

log = logging.getLogger("ean_tf")


def generator_dataset(config: Config, train: Examples, batch: int, seed: int):
    """The pre-training stream and M_d (the number of identities).

    With --identity_data_dir (CFP layout): real frontal/profile pairs, zipped with
    the expression data. Otherwise the training images and perturbed views of them;
    identities from the data (built-in) or each image its own identity.
    """
    d, g = config.data, config.generator
    common = dict(flip=d.random_flip, crop_pad=d.random_crop_pad)
    if g.identity_data_dir:
        folders = views.read_identity_folders(g.identity_data_dir)
        frontal, profile, ids = views.identity_pairs(folders, seed)
        names = tuple(folders["identities"])
        ex_f = Examples(paths=frontal, labels=ids, class_names=names, source="frontal")
        ex_p = dataclasses.replace(ex_f, paths=profile, source="profile")
        # same seed, same length, deterministic: the two streams stay paired
        make = lambda ex: make_dataset(
            ex, d.image_size, batch, True, seed, deterministic=True, **common
        )
        expression = make_dataset(train, d.image_size, batch, True, seed + 1, **common)
        ds = tf.data.Dataset.zip((make(ex_f), make(ex_p), expression)).map(
            lambda f, p, e: ((f[0], p[0], tf.argmax(f[1], -1)), (e[0], e[1]))
        )
        return ds, len(names)
    if train.identities is not None:
        ids = np.asarray(train.identities, np.int64)
    else:
        ids = np.arange(len(train), dtype=np.int64)
    num_identities = int(ids.max()) + 1
    with_ids = dataclasses.replace(
        train,
        targets=np.concatenate(
            [train.soft_targets(), ids[:, None].astype(np.float32)], axis=1
        ),
    )
    kinds = view_kinds(config)

    def to_views(step, batch_):
        images, t = batch_
        perturbed = views.make_views(
            images, tf.stack([seed, tf.cast(step, tf.int32)]), kinds
        )
        identity = tf.cast(t[:, -1], tf.int64)
        return (images, perturbed, identity), t[:, :-1]  # x_e is x_f

    ds = make_dataset(with_ids, d.image_size, batch, True, seed, **common)
    return ds.enumerate().map(to_views, num_parallel_calls=tf.data.AUTOTUNE), (
        num_identities
    )


# --- pre-training ------------------------------------------------------------------


class _EpochCheckpoint(keras.callbacks.Callback):
    """Weights and both optimizers after every epoch, written atomically, so a
    killed pre-training resumes from its last finished epoch."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder
        self.weights = os.path.join(folder, "latest.weights.h5")
        self.state = os.path.join(folder, "state.json")

    def epochs_done(self) -> int:
        try:
            with open(self.state) as f:
                return int(json.load(f)["epochs_done"])
        except (OSError, ValueError, KeyError):
            return 0

    def on_epoch_end(self, epoch, logs=None):

        os.makedirs(self.folder, exist_ok=True)
        atomic_save_weights(self.model, self.weights)
        write_json(self.state, {"epochs_done": epoch + 1})


def generator_optimizer(config: Config, steps_per_epoch: int) -> keras.optimizers.SGD:
    """G's optimizer: training's SGD, linear warm-up (``--lr_warmup_epochs``, at most
    half the pre-training) then cosine to zero over ``--generator_epochs``. Without
    the warm-up, lr 0.1 from the first step can collapse a backbone trained from
    scratch."""

    epochs = config.generator.generator_epochs
    warmup = min(float(config.train.lr_warmup_epochs), epochs / 2)
    return make_optimizer(config, steps_per_epoch, epochs, "cosine", warmup)


def generator_dir(config: Config) -> str:
    return os.path.join(config.train.run_dir, "generator")


def pretrain(config: Config, output: str = "", verbose: int = 1) -> dict:
    """--mode=pretrain_generator. Returns the summary, also in summary.json."""

    t0 = time.time()
    d, m, t, g = config.data, config.model, config.train, config.generator
    strategy = make_strategy(t.strategy)
    run_dir, is_chief = worker_run_dir(strategy, generator_dir(config))
    weights = output or os.path.join(run_dir, "backbone.weights.h5")
    writable_folder(run_dir, "--run_dir")
    writable_file(weights, "--output" if output else "--run_dir")
    keras.utils.set_random_seed(t.seed)
    splits = data_lib.load(d, seed=t.seed)
    batch = t.batch_size
    # The data first: a wrong identity folder stops before the run folder exists.
    ds, num_identities = generator_dataset(config, splits.train, batch, t.seed)
    os.makedirs(run_dir, exist_ok=True)
    steps = t.steps_per_epoch or max(1, len(splits.train) // batch)
    log.info(
        "Generator pre-training: %d identities, views: %s, %d steps per epoch",
        num_identities,
        "real profiles" if g.identity_data_dir else ",".join(view_kinds(config)),
        steps,
    )
    with strategy.scope():
        backbone = build_backbone(
            m.backbone, d.image_size, m.stem, m.width, m.input_norm
        )
        if m.backbone_weights:
            load_backbone_weights(backbone, m.backbone_weights)
        before = keras.models.clone_model(backbone)
        before.set_weights(backbone.get_weights())
        model = InvariantFeatureGenerator(
            backbone, num_identities, splits.train.num_classes, t.label_smoothing
        )
        model.build()
        model.compile(
            g_optimizer=generator_optimizer(config, steps),
            d_optimizer=keras.optimizers.Adam(g.d_learning_rate),
            lambda_adv=g.lambda_adv,
            lambda_id=g.lambda_id,
        )

    checkpoint = _EpochCheckpoint(os.path.join(run_dir, "checkpoint"))
    done = checkpoint.epochs_done()
    log_csv = os.path.join(run_dir, "log.csv")
    if done:
        model.load_weights(checkpoint.weights)
        log.info("Resuming generator pre-training after epoch %d", done)
        ds = ds.skip(done * steps)
    truncate_log(log_csv, done)
    callbacks = [
        checkpoint,
        EpochLogger(log_csv, append=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    history = model.fit(
        ds,
        epochs=g.generator_epochs,
        initial_epoch=done,
        steps_per_epoch=steps,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the stream is shuffled already
    )
    losses = history.history.get("g_loss", [])
    if losses and not np.isfinite(losses[-1]):
        from ean_tf.runs import TrainingError

        raise TrainingError(
            "Generator pre-training diverged (a loss became NaN); lower "
            "--learning_rate, --d_learning_rate or the lambdas"
        )
    summary = {
        "backbone_weights": weights,
        "identities": num_identities,
        "views": "real profiles" if g.identity_data_dir else list(view_kinds(config)),
        "epochs": g.generator_epochs,
        "final": {k: float(v[-1]) for k, v in history.history.items() if v},
        "seconds": round(time.time() - t0, 1),
    }
    if is_chief:
        atomic_save_weights(backbone, weights)
        figure = os.path.join(run_dir, "feature_maps.png")
        summary["feature_similarity"] = feature_figure(
            before,
            backbone,
            splits.val,
            d.image_size,
            view_kinds(config),
            figure,
            config.evaluation.robustness_seed,
        )
        summary["figure"] = figure
        write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary
