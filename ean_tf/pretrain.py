"""`--mode=pretrain_generator`: adversarial pre-training of the backbone G_enc.

`pretrain` writes the backbone weights that `--mode=train
--generator_checkpoint=...` starts from, its log, and the paper's figure 4 (conv3
maps of a face and its perturbed views, before and after pre-training; see
`visualize.feature_figure`). A killed pre-training resumes from its last finished
epoch, with both optimizers' state. The models are in `models/generator.py`.

Every epoch, `log.csv` also holds the conv3 collapse probe (`conv3_probe`) on a
fixed set of validation images, and the summary its values before and after
pre-training with a `collapsed` flag (`collapse_report`).
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
    the expression data and perturbed views of it. Otherwise the training images
    and perturbed views of them, with the data's identities (built-in data) or
    none (M_d is None: D_m has no identity head).
    """
    d, g = config.data, config.generator
    common = dict(flip=d.random_flip, crop_pad=d.random_crop_pad)
    kinds = view_kinds(config)
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

        def pair(step, streams):
            f, p, (x_e, targets) = streams
            step_seed = tf.stack([seed, tf.cast(step, tf.int32)])
            x_ev = views.make_views(x_e, step_seed, kinds)
            return (f[0], p[0], tf.argmax(f[1], -1)), (x_e, x_ev, targets)

        ds = tf.data.Dataset.zip((make(ex_f), make(ex_p), expression)).enumerate()
        return ds.map(pair, num_parallel_calls=tf.data.AUTOTUNE), len(names)
    if train.identities is not None:
        ids = np.asarray(train.identities, np.int64)
        num_identities = int(ids.max()) + 1
    else:  # no identity head; the stream's identity column is unused
        ids, num_identities = np.zeros(len(train), np.int64), None
    with_ids = dataclasses.replace(
        train,
        targets=np.concatenate(
            [train.soft_targets(), ids[:, None].astype(np.float32)], axis=1
        ),
    )

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


# --- collapse probe ---------------------------------------------------------------

PROBE_IMAGES = 128  # validation images the probe reads every epoch
PROBE_CHUNK = 32  # images per backbone call
COLLAPSE_RISE = 0.05  # how far the different-image cosine may rise before "collapsed"


def _unit_rows(x) -> np.ndarray:
    """(N, ...) -> (N, D) float32 rows of norm 1 (rows of zeros stay zero)."""
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _offdiagonal_mean(unit_sum, unit_sq, n: int) -> float:
    """Mean of u_i . u_j over the n (n - 1) pairs i != j, from sum_i u_i and
    sum_i |u_i|^2: |sum u|^2 = sum_i |u_i|^2 + sum_{i != j} u_i . u_j."""
    if n < 2:
        return float("nan")
    return float((unit_sum @ unit_sum - unit_sq) / (n * (n - 1)))


def mean_cosine(features) -> float:
    """Mean cosine similarity of the different rows of `features` (N, ...), each
    row flattened: over the N (N - 1) pairs i != j, without the N diagonal ones.
    1 when all rows point the same way, 0 for orthogonal rows; NaN below 2 rows."""
    u = _unit_rows(features)
    return _offdiagonal_mean(u.sum(0, dtype=np.float64), float((u * u).sum()), len(u))


def paired_cosine(a, b) -> float:
    """Mean over i of the cosine of a[i] and b[i] (both (N, ...), rows flattened)."""
    return float(np.mean((_unit_rows(a) * _unit_rows(b)).sum(1)))


def effective_rank(features) -> float:
    """Effective rank (Roy & Vetterli 2007) of `features` (N, C) centred over N:
    exp(entropy of the singular values divided by their sum). N equal singular
    values give N, one non-zero value gives 1. Values within float32 rounding of
    the uncentred features (numpy's matrix_rank tolerance) count as zero; when
    none is left (every row the same) it is 1, the floor."""
    x = np.asarray(features, np.float64)  # (N, C)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    scale = np.linalg.norm(x, 2) if x.size else 0.0
    s = s[s > max(x.shape) * np.finfo(np.float32).eps * scale]
    if not len(s):
        return 1.0
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def probe_dataset(examples: Examples, image_size: int, seed: int) -> tf.data.Dataset:
    """`PROBE_IMAGES` validation images drawn once under `seed`, in batches of
    `PROBE_CHUNK`, unaugmented: the same images every epoch."""
    n = min(PROBE_IMAGES, len(examples))
    keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:n])
    return make_dataset(examples.select(keep), image_size, PROBE_CHUNK, False)


def conv3_probe(backbone, dataset, kinds, seed: int) -> dict:
    """How collapsed the backbone's conv3 maps are on the probe's images.

    - `conv3_cos_different_images`: mean cosine of the flattened conv3 maps (the
      spatial pattern, not only the channels) of two different images;
    - `conv3_cos_<kind>`: mean cosine of a face's flattened map and its view's of
      that kind (`data/views.py`, the same views every call under `seed`);
    - `conv3_effective_rank`: the effective rank of the pooled (B, c) conv3
      features, how many directions they spread over (below the image count).

    A collapsed backbone gives one map for every image: the cosines go to 1 and
    the effective rank falls.
    """
    n, unit_sum, unit_sq, pooled = 0, 0.0, 0.0, []
    paired = {k: 0.0 for k in kinds}
    for chunk, (images, _) in enumerate(dataset):
        f = backbone(images, training=False)[1].numpy()  # (b, h, w, c)
        pooled.append(f.mean(axis=(1, 2)))  # (b, c)
        u = _unit_rows(f)  # (b, h * w * c)
        n, unit_sq = n + len(u), unit_sq + float((u * u).sum())
        unit_sum = unit_sum + u.sum(0, dtype=np.float64)
        for i, kind in enumerate(kinds):
            x_p = views.make_views(images, [seed, chunk * len(kinds) + i], [kind])
            q = backbone(x_p, training=False)[1].numpy()
            paired[kind] += paired_cosine(f, q) * len(u)
    out = {"conv3_cos_different_images": _offdiagonal_mean(unit_sum, unit_sq, n)}
    out.update({f"conv3_cos_{k}": v / n if n else np.nan for k, v in paired.items()})
    out["conv3_effective_rank"] = (
        effective_rank(np.concatenate(pooled)) if pooled else float("nan")
    )
    return out


def collapse_report(before: dict, after: dict, images: int) -> dict:
    """The probe before and after pre-training; `collapsed` when the cosine of
    different images' conv3 maps rose by more than `COLLAPSE_RISE` (None when the
    probe has fewer than 2 images)."""
    key = "conv3_cos_different_images"
    rise = after[key] - before[key]
    return {
        "images": images,
        "before": before,
        "after": after,
        "cos_different_images_rise": rise,
        "threshold": COLLAPSE_RISE,
        "collapsed": bool(rise > COLLAPSE_RISE) if np.isfinite(rise) else None,
    }


class _CollapseProbe(keras.callbacks.Callback):
    """Adds `conv3_probe` of the model's backbone to every epoch's logs; listed
    before the CSVLogger, so its values are columns of log.csv."""

    def __init__(self, dataset, kinds, seed: int):
        super().__init__()
        self.dataset, self.kinds, self.seed = dataset, tuple(kinds), seed

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(
                conv3_probe(self.model.backbone, self.dataset, self.kinds, self.seed)
            )


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
        "Generator pre-training: %s identities, views: %s, %d steps per epoch",
        num_identities or "no",
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
            lambda_views=g.lambda_views,
        )

    kinds, probe_seed = view_kinds(config), config.evaluation.robustness_seed
    probe = probe_dataset(splits.val, d.image_size, probe_seed)
    probe_before = conv3_probe(before, probe, kinds, probe_seed)
    log.info(
        "conv3 probe before pre-training: %s",
        ", ".join(f"{k} {v:.3f}" for k, v in probe_before.items()),
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
        _CollapseProbe(probe, kinds, probe_seed),  # before the epoch logger
        EpochLogger(log_csv, append=True, validation=False),
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
        "collapse": collapse_report(
            probe_before,
            conv3_probe(backbone, probe, kinds, probe_seed),
            min(PROBE_IMAGES, len(splits.val)),
        ),
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
