"""Invariant feature generator: adversarial pre-training of the backbone G_enc.

The paper's auxiliary module (section 2.2), as ../DESIGN.md section 1.3 fixes it.
A discriminator D_m reads the backbone's conv3 feature map and has two heads:
identity (M_d + 1 classes, the extra one meaning "a perturbed view") and view
(frontal or perturbed). Each training step runs

- the G step, on the backbone and an expression head: CE_expression(x_e, y_e)
  + lambda_adv * CE(D^f(G(x_p)), frontal) + lambda_id * CE(D^d(G(x_p)), id);
- the D step, on D_m alone, on the same step's (stopped) conv3 maps:
  CE(D^d(G(x_f)), id) + CE(D^d(G(x_p)), M_d) + CE(D^f(G(x_f)), frontal)
  + CE(D^f(G(x_p)), perturbed).

Each player has its own optimizer (`compile(g_optimizer=..., d_optimizer=...)`);
losses are averaged over the global batch, so the step runs under the same
`tf.distribute` strategies as EAN training. `pretrain` is `--mode=pretrain_generator`:
it writes the backbone weights that `--mode=train --generator_checkpoint=...`
starts from, its log, and the paper's figure 4 (conv3 maps of a face and its
perturbed views, before and after pre-training). `robustness` is
`--mode=robustness`: accuracy on the validation split and on perturbed copies of it.
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
from ean_tf.data.pipeline import make_dataset, normalize
from ean_tf.models.backbones import build_backbone, load_backbone_weights

log = logging.getLogger("ean_tf")
FRONTAL, PERTURBED = 0, 1


def build_discriminator(conv3_shape, num_identities: int | None) -> keras.Model:
    """D_m: two convs on the conv3 map, then identity (M_d + 1) and view heads.
    With `num_identities=None` only the view head (co-training)."""
    inputs = keras.Input(tuple(conv3_shape), name="conv3")
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu", name="d_conv1")(
        inputs
    )
    x = keras.layers.Conv2D(
        128, 3, strides=2, padding="same", activation="relu", name="d_conv2"
    )(x)
    x = keras.layers.GlobalAveragePooling2D(name="d_pool")(x)
    x = keras.layers.Dense(256, activation="relu", name="d_fc")(x)
    view = keras.layers.Dense(2, name="d_view")(x)
    if num_identities is None:
        return keras.Model(inputs, view, name="view_discriminator")
    identity = keras.layers.Dense(num_identities + 1, name="d_identity")(x)
    return keras.Model(inputs, [identity, view], name="discriminator")


class CoTrainer:
    """`--generator_cotrain_weight`: the generator's adversarial term inside EAN
    training. EAN's train step adds `weight * CE(D^f(G(x_p)), frontal)` for
    perturbed views x_p of its batch to its loss, then updates D's view head on the
    step's conv3 maps (frontal vs perturbed) with its own Adam optimizer. The
    identity terms need identity labels and stay in `--mode=pretrain_generator`.

    Kept outside the EAN model (a plain object, so Keras does not save it into
    model.keras or the export); `RunCheckpoint` saves D's weights beside the run.
    """

    def __init__(self, conv3_shape, weight: float, learning_rate: float, kinds, seed):
        self.weight = float(weight)
        self.kinds = tuple(kinds)
        self.seed = int(seed)
        self.discriminator = build_discriminator(conv3_shape, None)
        self.discriminator(tf.zeros((1, *conv3_shape)))
        self.optimizer = keras.optimizers.Adam(learning_rate)
        self.optimizer.build(self.discriminator.trainable_variables)
        names = ("adv_loss", "d_view_loss", "d_view_accuracy")
        self.trackers = {n: keras.metrics.Mean(name=n) for n in names}

    def adversarial_loss(self, backbone, images, step):
        """Per-example CE(D^f(G(x_p)), frontal) and the perturbed conv3 maps."""
        seed = tf.stack([tf.constant(self.seed), tf.cast(step, tf.int32)])
        perturbed = views.make_views(images, seed, self.kinds)
        conv3_p = backbone(normalize(perturbed), training=True)[1]
        view_p = self.discriminator(conv3_p, training=False)
        adv = keras.losses.sparse_categorical_crossentropy(
            tf.fill([tf.shape(images)[0]], FRONTAL),
            tf.cast(view_p, tf.float32),
            from_logits=True,
        )
        return adv, conv3_p

    def d_step(self, conv3_f, conv3_p):
        """One update of D's view head; returns its loss and accuracy."""
        x = tf.stop_gradient(tf.concat([conv3_f, conv3_p], 0))
        b = tf.shape(conv3_f)[0]
        labels = tf.concat([tf.fill([b], FRONTAL), tf.fill([b], PERTURBED)], 0)
        variables = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self.discriminator(x, training=True), tf.float32)
            ce = keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True
            )
            loss = tf.nn.compute_average_loss(ce)
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        hits = tf.cast(
            tf.argmax(logits, -1, output_type=tf.int32) == labels, tf.float32
        )
        return tf.reduce_mean(ce), tf.reduce_mean(hits)


class InvariantFeatureGenerator(keras.Model):
    """G_enc (the backbone) + an expression head, against the discriminator D_m.

    Data: `((x_frontal, x_perturbed, identity), (x_expression, targets))`, or
    `((x_frontal, x_perturbed, identity), targets)` when x_frontal are the
    expression images; images
    float 0..255, identity int in [0, M_d), targets (B, C) label distributions.
    """

    def __init__(
        self,
        backbone: keras.Model,
        num_identities: int,
        num_classes: int,
        label_smoothing: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.num_identities = int(num_identities)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.expression_head = keras.layers.Dense(num_classes, name="expression_head")
        self.discriminator = build_discriminator(
            backbone.outputs[1].shape[1:], self.num_identities
        )
        names = (
            "g_loss expression_loss adv_loss id_loss expression_accuracy "
            "d_loss d_id_loss d_view_loss d_view_accuracy d_id_accuracy"
        ).split()
        self.trackers = {n: keras.metrics.Mean(name=n) for n in names}

    def compile(self, g_optimizer, d_optimizer, lambda_adv=0.1, lambda_id=0.1, **kw):
        # Keras's own `optimizer` is G's (else it builds an unused RMSprop).
        super().compile(optimizer=g_optimizer, **kw)
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.lambda_adv, self.lambda_id = float(lambda_adv), float(lambda_id)
        # built now, so that save_weights/load_weights carry their state (resume)
        g_optimizer.build(self.g_variables)
        d_optimizer.build(self.d_variables)

    @property
    def metrics(self):
        return list(self.trackers.values())

    @property
    def g_variables(self):
        return (
            self.backbone.trainable_variables + self.expression_head.trainable_variables
        )

    @property
    def d_variables(self):
        return self.discriminator.trainable_variables

    def build(self, input_shape=None):
        size = self.backbone.inputs[0].shape[1]
        pooled, _ = self.backbone(tf.zeros((1, size, size, 3)))
        self.expression_head(pooled)
        self.built = True

    def call(self, images, training=False):
        pooled, _ = self.backbone(normalize(images), training=training)
        return self.expression_head(pooled)

    def features(self, images, training=False):
        """The conv3 feature map of images (float 0..255)."""
        return self.backbone(normalize(images), training=training)[1]

    @staticmethod
    def _ce(labels, logits):
        return keras.losses.sparse_categorical_crossentropy(
            labels, tf.cast(logits, tf.float32), from_logits=True
        )

    def g_step(self, x_f, x_p, ids, x_e, targets):
        """One G update; returns (logs, conv3 of x_f, conv3 of x_p).
        `x_e=None`: the expression images are x_f (one backbone pass fewer)."""
        batch = tf.shape(x_f)[0]
        with tf.GradientTape() as tape:
            pooled, conv3 = self.backbone(
                normalize(tf.concat([x_f, x_p], 0)), training=True
            )
            if x_e is None:
                pooled_e = pooled[:batch]
            else:
                pooled_e, _ = self.backbone(normalize(x_e), training=True)
            logits_e = self.expression_head(pooled_e, training=True)
            conv3_f, conv3_p = conv3[:batch], conv3[batch:]
            id_p, view_p = self.discriminator(conv3_p, training=False)
            expression = keras.losses.categorical_crossentropy(
                targets,
                tf.cast(logits_e, tf.float32),
                from_logits=True,
                label_smoothing=self.label_smoothing,
            )
            adv = self._ce(tf.fill([batch], FRONTAL), view_p)  # fool D: "frontal"
            ident = self._ce(ids, id_p)  # the perturbed view keeps its identity
            total = expression + self.lambda_adv * adv + self.lambda_id * ident
            loss = tf.nn.compute_average_loss(total)
        grads = tape.gradient(loss, self.g_variables)
        self.g_optimizer.apply_gradients(zip(grads, self.g_variables, strict=True))
        hits = tf.cast(
            tf.equal(tf.argmax(logits_e, -1), tf.argmax(targets, -1)), tf.float32
        )
        logs = {
            "g_loss": tf.reduce_mean(total),
            "expression_loss": tf.reduce_mean(expression),
            "adv_loss": tf.reduce_mean(adv),
            "id_loss": tf.reduce_mean(ident),
            "expression_accuracy": tf.reduce_mean(hits),
        }
        return logs, conv3_f, conv3_p

    def d_losses(self, conv3_f, conv3_p, ids):
        """Per-example identity and view losses of D, and D's accuracies."""
        batch = tf.shape(conv3_f)[0]
        id_f, view_f = self.discriminator(conv3_f, training=True)
        id_p, view_p = self.discriminator(conv3_p, training=True)
        perturbed_id = tf.fill([batch], self.num_identities)
        d_id = self._ce(ids, id_f) + self._ce(perturbed_id, id_p)
        d_view = self._ce(tf.fill([batch], FRONTAL), view_f) + self._ce(
            tf.fill([batch], PERTURBED), view_p
        )
        view_hits = tf.concat(
            [tf.argmax(view_f, -1) == FRONTAL, tf.argmax(view_p, -1) == PERTURBED], 0
        )
        id_hits = tf.argmax(id_f, -1) == tf.cast(ids, tf.int64)
        return d_id, d_view, view_hits, id_hits

    def d_step(self, conv3_f, conv3_p, ids):
        """One D update on fixed conv3 maps; G is not touched."""
        conv3_f, conv3_p = tf.stop_gradient(conv3_f), tf.stop_gradient(conv3_p)
        with tf.GradientTape() as tape:
            d_id, d_view, view_hits, id_hits = self.d_losses(conv3_f, conv3_p, ids)
            loss = tf.nn.compute_average_loss(d_id + d_view)
        grads = tape.gradient(loss, self.d_variables)
        self.d_optimizer.apply_gradients(zip(grads, self.d_variables, strict=True))
        return {
            "d_loss": tf.reduce_mean(d_id + d_view),
            "d_id_loss": tf.reduce_mean(d_id),
            "d_view_loss": tf.reduce_mean(d_view),
            "d_view_accuracy": tf.reduce_mean(tf.cast(view_hits, tf.float32)),
            "d_id_accuracy": tf.reduce_mean(tf.cast(id_hits, tf.float32)),
        }

    def train_step(self, data):
        (x_f, x_p, ids), expression = data
        # (x_e, targets), or targets alone when the expression images are x_f
        x_e, targets = (
            expression if isinstance(expression, tuple) else (None, expression)
        )
        ids = tf.cast(ids, tf.int32)
        logs, conv3_f, conv3_p = self.g_step(x_f, x_p, ids, x_e, targets)
        logs.update(self.d_step(conv3_f, conv3_p, ids))
        for name, value in logs.items():
            self.trackers[name].update_state(value)
        return {n: t.result() for n, t in self.trackers.items()}


# --- data --------------------------------------------------------------------------


def view_kinds(config: Config) -> tuple[str, ...]:
    return tuple(k.strip() for k in config.generator.view_kinds.split(",") if k.strip())


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
        from ean_tf.runs import atomic_save_weights, write_json

        os.makedirs(self.folder, exist_ok=True)
        atomic_save_weights(self.model, self.weights)
        write_json(self.state, {"epochs_done": epoch + 1})


def generator_optimizer(config: Config, steps_per_epoch: int) -> keras.optimizers.SGD:
    """G's optimizer: training's SGD, linear warm-up (``--lr_warmup_epochs``, at most
    half the pre-training) then cosine to zero over ``--generator_epochs``. Without
    the warm-up, lr 0.1 from the first step can collapse a backbone trained from
    scratch."""
    from ean_tf.runs import make_optimizer

    epochs = config.generator.generator_epochs
    warmup = min(float(config.train.lr_warmup_epochs), epochs / 2)
    return make_optimizer(config, steps_per_epoch, epochs, "cosine", warmup)


def generator_dir(config: Config) -> str:
    return os.path.join(config.train.run_dir, "generator")


def pretrain(config: Config, output: str = "", verbose: int = 1) -> dict:
    """--mode=pretrain_generator. Returns the summary, also in summary.json."""
    from ean_tf.runs import make_strategy, worker_run_dir

    t0 = time.time()
    d, m, t, g = config.data, config.model, config.train, config.generator
    strategy = make_strategy(t.strategy)
    run_dir, is_chief = worker_run_dir(strategy, generator_dir(config))
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
    from ean_tf.runs import truncate_log

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
        keras.callbacks.CSVLogger(log_csv, append=True),
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
    weights = output or os.path.join(run_dir, "backbone.weights.h5")
    summary = {
        "backbone_weights": weights,
        "identities": num_identities,
        "views": "real profiles" if g.identity_data_dir else list(view_kinds(config)),
        "epochs": g.generator_epochs,
        "final": {k: float(v[-1]) for k, v in history.history.items() if v},
        "seconds": round(time.time() - t0, 1),
    }
    if is_chief:
        os.makedirs(os.path.dirname(os.path.abspath(weights)), exist_ok=True)
        backbone.save_weights(weights)
        figure = os.path.join(run_dir, "feature_maps.png")
        summary["feature_similarity"] = feature_figure(
            before,
            backbone,
            splits.val,
            d.image_size,
            view_kinds(config),
            figure,
            g.robustness_seed,
        )
        summary["figure"] = figure
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def feature_figure(
    before, after, examples: Examples, image_size: int, kinds, path: str, seed: int
) -> dict:
    """Figure 4: a face and its perturbed views, with the mean |conv3| map of the
    backbone before and after pre-training. Returns the mean cosine similarity of
    frontal and perturbed conv3 maps over up to 64 validation faces, both ways."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, _ = next(iter(make_dataset(examples, image_size, 64, training=False)))
    perturbed = [views.make_views(images, [seed, i], [k]) for i, k in enumerate(kinds)]

    def maps(backbone, x):
        return backbone(normalize(x), training=False)[1].numpy()

    def similarity(backbone):
        f = maps(backbone, images).reshape(len(images), -1)
        sims = []
        for p in perturbed:
            q = maps(backbone, p).reshape(len(images), -1)
            num = (f * q).sum(1)
            den = np.linalg.norm(f, axis=1) * np.linalg.norm(q, axis=1) + 1e-8
            sims.append(float(np.mean(num / den)))
        return dict(zip(kinds, sims, strict=True))

    result = {"before": similarity(before), "after": similarity(after)}
    columns = [images] + perturbed
    titles = ["frontal"] + list(kinds)
    fig, axes = plt.subplots(3, len(columns), figsize=(2.2 * len(columns), 6.6))
    for j, (x, title) in enumerate(zip(columns, titles, strict=True)):
        axes[0, j].imshow(np.clip(x[0].numpy(), 0, 255).astype("uint8"))
        axes[0, j].set_title(title)
        for i, (name, backbone) in enumerate((("before", before), ("after", after))):
            axes[i + 1, j].imshow(np.abs(maps(backbone, x[:1])[0]).mean(-1), cmap="jet")
            sim = "" if j == 0 else f" cos {result[name][title]:.2f}"
            axes[i + 1, j].set_title(f"conv3 {name}{sim}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("conv3 maps without (before) and with (after) the generator")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return result


# --- robustness ----------------------------------------------------------------------


def robustness(
    model,
    examples: Examples,
    image_size: int,
    batch_size: int,
    graph: str,
    seed: int,
    kinds=views.VIEW_KINDS,
) -> dict:
    """Accuracy and mean class accuracy on the clean split and on perturbed copies
    of it (one kind each, fixed seed: every model sees the same copies)."""
    from ean_tf.evaluate import classification_metrics

    ds = make_dataset(examples, image_size, batch_size, training=False)
    predict = tf.function(lambda x: tf.argmax(model(x, graph=graph), -1))
    out = {}
    for name in ("clean",) + tuple(kinds):
        preds = []
        for i, (images, _) in enumerate(ds):
            if name != "clean":
                images = views.make_views(images, [seed, i], [name])
            preds.append(predict(images).numpy())
        metrics = classification_metrics(
            examples.labels, np.concatenate(preds), examples.class_names
        )
        out[name] = {
            "accuracy": metrics["accuracy"],
            "mean_class_accuracy": metrics["mean_class_accuracy"],
        }
    return out
