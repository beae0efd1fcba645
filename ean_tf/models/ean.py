"""EAN: backbone -> embedding -> batch graph -> GCN head, with Adj_loss.

`EAN` is a subclassed `keras.Model` (docs/DESIGN.md section 1):

    images (B, S, S, 3) in 0..255 -> backbone (its InputNorm first) -> F (B, Fd), conv3
    e = BatchNorm(Dense(F))              (B, E), no ReLU: cosines span [-1, 1]
    A = thresholds(cos(e_i, e_j))        (B, B), zero while the warm-up lasts
    logits = GCN(F, norm(A + I))         (B, C)

Training minimises the named terms of `objective.py` (ce_isolated, ce_graph,
adj_loss), each part of the model along the terms that train it.

`call()` answers in one of three graphs (`inference_graph`):
- `nearest` (served): each image joined to its `nearest_k` most similar training
  images, stored in the model (`memory.py`); an answer never depends on the other
  images of a request;
- `batch`: the request's images form the graph (the paper's test protocol), so an
  answer depends on the rest of the batch;
- `isolated`: A = I, the network alone.
A model built without stored images (`memory_size=0`) answers `nearest` as the
network alone. `head="linear"` is the plain-classifier baseline on the same
backbone.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from ean_tf.models import adjacency as adj
from ean_tf.models import objective as objective_lib
from ean_tf.models.backbones import build_backbone
from ean_tf.models.gcn import GCNHead
from ean_tf.models.memory import ReferenceMemory

INFERENCE_GRAPHS = ("nearest", "batch", "isolated")
DEFAULT_GRAPH = "nearest"
# What a saved model's configuration says it is; a model of another format is
# refused (`check_format`).
FORMAT_VERSION = 2


class ModelFormatError(ValueError):
    """A saved model of another format than this ean_tf reads."""


def check_format(config: dict, where: str = "the model") -> None:
    """Raises `ModelFormatError` (one line naming both versions) unless a saved
    model's config is of `FORMAT_VERSION` (a config without one is format 1)."""
    found = int(config.get("format_version", 1))
    if found != FORMAT_VERSION:
        raise ModelFormatError(
            f"{where} is an EAN model of format {found}; this ean_tf reads format "
            f"{FORMAT_VERSION} only: train it again with this version."
        )


@keras.saving.register_keras_serializable(package="ean_tf")
class EAN(keras.Model):
    """EAN or its linear twin. Every argument is a plain value; `get_config`
    returns them all, and `ean_tf.build_model` maps a configuration to them.

    memory_size: training images the nearest graph stores (0: none; see
    `build_memory`). label_smoothing: of the training cross-entropies. gce_q:
    q > 0 makes the classification terms the generalised cross-entropy
    sum_c t_c (1 - p_c^q) / q of the (smoothed) targets t.
    cross_replica_graph: the training graph spans every replica's batch.
    grayscale: the model's first operation turns its input grey (luma, in all
    three channels), so a colour photo looks like grey training data.
    training_data: the data set it was trained on (`--dataset`), for its users.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 48,
        class_names=None,
        backbone: str = "resnet18",
        stem: str = "small_s2",
        width: int = 32,
        input_norm: str = "auto",
        head: str = "ean",
        embedding_dim: int = 128,
        embedding_norm: str = "batchnorm",
        gcn_units=(),
        gcn_dropout: float = 0.0,
        tau1: float = 0.5,
        tau2: float = -math.inf,
        temperature: float = 0.1,
        straight_through: bool = True,
        adj_loss_weight: float = 0.1,
        adj_reduction: str = "mean",
        objective: str = "split",
        nearest_k: int = 4,
        nearest_label_weight: float = 0.25,
        inference_graph: str = DEFAULT_GRAPH,
        memory_size: int = 0,
        label_smoothing: float = 0.0,
        gce_q: float = 0.0,
        cross_replica_graph: bool = False,
        grayscale: bool = False,
        training_data: str = "",
        **kwargs,
    ):
        super().__init__(**kwargs)
        _expect(num_classes >= 2, "num_classes >= 2", num_classes)
        _expect(head in ("ean", "linear"), "head in ('ean', 'linear')", head)
        _expect(
            embedding_norm in ("batchnorm", "none"),
            "embedding_norm in ('batchnorm', 'none')",
            embedding_norm,
        )
        _expect(-1.0 <= tau1 <= 1.0 and tau2 < tau1, "tau2 < tau1 in [-1, 1]", tau1)
        _expect(temperature > 0, "temperature > 0", temperature)
        _expect(
            adj_reduction in ("sum", "mean"), "adj_reduction sum or mean", adj_reduction
        )
        _expect(objective in ("split", "paper"), "objective split or paper", objective)
        _expect(nearest_k >= 1, "nearest_k >= 1", nearest_k)
        _expect(
            0.0 <= nearest_label_weight < 1.0,
            "nearest_label_weight in [0, 1)",
            nearest_label_weight,
        )
        _expect(
            inference_graph in INFERENCE_GRAPHS,
            f"inference_graph in {INFERENCE_GRAPHS}",
            inference_graph,
        )
        _expect(memory_size >= 0, "memory_size >= 0", memory_size)
        self.num_classes, self.image_size = int(num_classes), int(image_size)
        self.class_names = tuple(class_names or (str(i) for i in range(num_classes)))
        _expect(
            len(self.class_names) == self.num_classes,
            f"{num_classes} class names",
            self.class_names,
        )
        self.backbone_name, self.stem, self.width = backbone, stem, int(width)
        self.input_norm, self.head_type = input_norm, head
        self.embedding_dim, self.embedding_norm = int(embedding_dim), embedding_norm
        self.gcn_units = tuple(int(u) for u in gcn_units)
        self.gcn_dropout = float(gcn_dropout)
        self.tau1, self.tau2 = float(tau1), float(tau2)
        self.temperature = float(temperature)
        self.straight_through = bool(straight_through)
        self.adj_loss_weight = float(adj_loss_weight)
        self.adj_reduction = adj_reduction
        self.objective = objective
        self.nearest_k = int(nearest_k)
        self.nearest_label_weight = float(nearest_label_weight)
        self.inference_graph = inference_graph
        self.memory_size = int(memory_size) if head == "ean" else 0
        self.label_smoothing = float(label_smoothing)
        _expect(0.0 <= gce_q <= 1.0, "gce_q in [0, 1]", gce_q)
        self.gce_q = float(gce_q)
        self.cross_replica_graph = bool(cross_replica_graph)
        self.grayscale, self.training_data = bool(grayscale), str(training_data)
        self._build_layers()
        # 0 during the adjacency warm-up (A = I, no Adj_loss), then 1. A weight, so
        # checkpoints carry it; a callback flips it, nothing retraces.
        self.graph_enabled = self.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            autocast=False,
            name="graph_enabled",
        )
        # The terms this model's training minimises, and the parts each trains.
        self.route = objective_lib.routing(objective if head == "ean" else "linear")
        names = ("loss", *self.route, "edges_per_node", "graph_nodes")
        self.trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self.accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
        # --generator_cotrain_weight: a models.generator.CoTrainer, attached by
        # training, never saved with the model.
        self.cotrainer = None
        self.build((None, self.image_size, self.image_size, 3))

    def _build_layers(self) -> None:
        """Backbone, embedding (+ its norm), head, and the nearest graph's store."""
        self.backbone = build_backbone(
            self.backbone_name, self.image_size, self.stem, self.width, self.input_norm
        )
        self.feature_dim = int(self.backbone.outputs[0].shape[-1])
        self.embedding = keras.layers.Dense(
            self.embedding_dim, name="embedding", dtype="float32"
        )
        # Batch norm centres the embeddings, so cosines spread around 0 instead of
        # all sitting near 1 (pooled ReLU features share a large common part).
        self.embedding_bn = None
        if self.embedding_norm == "batchnorm":
            self.embedding_bn = keras.layers.BatchNormalization(
                momentum=0.9, name="embedding_bn", dtype="float32"
            )
        if self.head_type == "ean":
            self.head = GCNHead(
                self.gcn_units,
                self.num_classes,
                self.gcn_dropout,
                name="gcn_head",
                dtype="float32",
            )
        else:
            self.head = keras.layers.Dense(
                self.num_classes, name="classifier", dtype="float32"
            )
            # The baseline classifies pooled features; its embedding only serves
            # visualisation, so it is not trained.
            self.embedding.trainable = False
            if self.embedding_bn is not None:
                self.embedding_bn.trainable = False
        self.memory = None
        if self.memory_size:
            self.memory = ReferenceMemory(
                self.memory_size,
                self.embedding_dim,
                self.num_classes,
                name="reference_memory",
                dtype="float32",
            )

    def build(self, input_shape):
        self.embedding.build((None, self.feature_dim))
        if self.embedding_bn is not None:
            self.embedding_bn.build((None, self.embedding_dim))
        if self.head_type == "ean":
            self.head.build([(None, self.feature_dim), (None, None)])
        else:
            self.head.build((None, self.feature_dim))
        self.built = True

    def part_variables(self, part: str) -> list:
        """The trainable variables of one part (objective.PARTS)."""
        layers = {
            "backbone": [self.backbone],
            "embedding": [self.embedding, self.embedding_bn],
            "head": [self.head],
        }[part]
        return [v for layer in layers if layer for v in layer.trainable_variables]

    # ---------------------------------------------------------------- forward ---
    def encode(self, images, training=False):
        """images (B, S, S, 3) 0..255 -> pooled (B, Fd), raw embedding (B, E) (before
        its normalisation), conv3."""
        if self.grayscale:
            images = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(images))
        pooled, conv3 = self.backbone(images, training=training)
        pooled = tf.cast(pooled, tf.float32)
        return pooled, self.embedding(pooled), conv3

    def features(self, images, training=False):
        """images (B, S, S, 3) 0..255 -> pooled (B, Fd), embedding (B, E), conv3.

        The embedding is normalised by batch norm: with the batch's statistics in
        training, the moving ones otherwise.
        """
        pooled, embeddings, conv3 = self.encode(images, training=training)
        if self.embedding_bn is not None:
            embeddings = self.embedding_bn(embeddings, training=training)
        return pooled, embeddings, conv3

    def graph_embeddings(self, raw):
        """raw (..., N, E) -> the embeddings a graph of those N nodes is built on.

        Normalised with the statistics of the N nodes themselves, as batch norm
        does in training, so an inference graph has the edges training would give
        the same nodes (the moving statistics would move 1 edge in 7).
        """
        bn = self.embedding_bn
        if bn is None:
            return raw
        mean, var = tf.nn.moments(raw, axes=[-2], keepdims=True)
        return (raw - mean) * tf.math.rsqrt(var + bn.epsilon) * bn.gamma + bn.beta

    def batch_graph(self, embeddings):
        """Edges among the batch: (hard-or-straight-through A, C_s), (..., B, B)."""
        cs = adj.cosine_similarity(embeddings)  # (B, B)
        a = adj.threshold_adjacency(cs, self.tau1, self.tau2)
        if self.straight_through:
            soft = adj.relaxed_adjacency(cs, self.tau1, self.tau2, self.temperature)
            a = adj.straight_through(a, soft)
        return a * self.graph_enabled, cs

    def classify(self, pooled, raw, graph: str, training=False):
        """Logits (B, C) from pooled features and raw embeddings, in `graph`."""
        if self.head_type == "linear":
            return self.head(pooled)
        if graph == "isolated":
            return self.head([pooled, tf.eye(tf.shape(pooled)[0])], training=training)
        if graph == "batch":
            a, _ = self.batch_graph(self.graph_embeddings(raw))
            a_hat = adj.normalized_adjacency(a)
            return self.head([pooled, a_hat], training=training)
        if graph == "nearest":
            alone = self.classify(pooled, raw, "isolated", training=training)
            if self.memory is None:
                return alone
            return self.memory(
                alone,
                raw,
                k=self.nearest_k,
                tau1=self.tau1,
                gate=self.graph_enabled,
                label_weight=self.nearest_label_weight,
            )
        raise ValueError(f"Expected graph in {INFERENCE_GRAPHS}. Received: {graph!r}")

    def call(self, images, training=False, graph: str | None = None):
        """Logits (B, C) for images (B, S, S, 3) in 0..255."""
        pooled, raw, _ = self.encode(images, training=training)
        return self.classify(
            pooled, raw, graph or self.inference_graph, training=training
        )

    def set_inference_graph(self, graph: str) -> None:
        _expect(
            graph in INFERENCE_GRAPHS, f"inference_graph in {INFERENCE_GRAPHS}", graph
        )
        self.inference_graph = graph
        self._retrace()

    def set_nearest_label_weight(self, weight: float) -> None:
        """The nearest graph's label weight w; saved with the model."""
        _expect(0.0 <= weight < 1.0, "nearest_label_weight in [0, 1)", weight)
        self.nearest_label_weight = float(weight)
        self._retrace()

    def _retrace(self) -> None:
        """Drops the traced predict and evaluate functions, which captured the
        served graph's settings as constants."""
        self.predict_function = None
        self.test_function = None

    def answers_with(self) -> tuple[str, float]:
        """(graph, label weight) a plain call answers with: the served graph (the
        network alone for a linear head) and, in the nearest graph, its
        neighbours' label weight (0 in any other)."""
        graph = self.inference_graph if self.head_type == "ean" else "isolated"
        return graph, self.nearest_label_weight if graph == "nearest" else 0.0

    # ------------------------------------------------------------ stored graph ---
    def build_memory(self, batches, targets=None) -> None:
        """Fills the nearest graph's store from batches of training images (no
        augmentation): their raw embeddings and isolated logits, and their
        training targets (N, C) (one-hot labels or label distributions, in the
        batches' order; None: the neighbours pass on none)."""
        if self.memory is None:
            raise ValueError(
                "This model stores no training images for the nearest graph "
                "(memory_size=0): build it with EAN(..., memory_size=<the number of "
                "training images to store>) or build_model(..., train_images=...)."
            )
        raws, logits = [], []
        for images in batches:
            pooled, raw, _ = self.encode(images, training=False)
            raws.append(raw.numpy())
            logits.append(np.asarray(self.classify(pooled, raw, "isolated")))
        self.memory.fill(
            np.concatenate(raws), np.concatenate(logits), self.embedding_bn, targets
        )

    # --------------------------------------------------------------- training ---
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Builds the optimizer only.

        Keras 3.15's TF trainer otherwise reduces a distributed data batch with
        `strategy.reduce` to build the model symbolically, which fails under
        MultiWorkerMirroredStrategy. EAN creates every weight in `__init__` and
        compiles no loss or metric objects, so the optimizer is all that is left.
        """
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        own = [*self.trackers.values(), self.accuracy]
        return own + list(getattr(self.cotrainer, "trackers", {}).values())

    def _gather(self, x):
        """All replicas' rows of x, in replica order (cross-replica graph)."""
        ctx = tf.distribute.get_replica_context()
        if not self.cross_replica_graph or ctx is None or ctx.num_replicas_in_sync == 1:
            return x, 0
        # A sum of zero-padded blocks rather than all_gather: one float all-reduce,
        # the same collective as the gradients', which keeps replicas' collectives
        # in the same order (all_gather's extra shape exchange did not, on CPUs).
        # Needs equal local batches: the trainer drops the remainder.
        local = tf.shape(x)[0]
        replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
        before = replica * local
        after = (ctx.num_replicas_in_sync - 1 - replica) * local
        padded = tf.pad(x, [[before, after], [0, 0]])  # (R * B, D)
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, padded), before

    def compute_terms(self, images, targets, training=True):
        """The loss terms of this replica's batch (objective.py), its logits (B, C)
        (the graph's for EAN) and graph statistics.

        Returns ({term: per-example (B,) for the cross-entropies, scalar for
        adj_loss}, logits, {"edges_per_node", "graph_nodes", "conv3"}). With
        `cross_replica_graph` under a multi-replica strategy the graph spans every
        replica's batch.
        """
        pooled, embeddings, conv3 = self.features(images, training)
        stats = {"conv3": conv3}
        if self.head_type == "linear":
            logits = self.head(pooled)
            terms = {"ce_isolated": self._ce(targets, logits)}
            zero = tf.constant(0.0)
            return terms, logits, {**stats, "edges_per_node": zero, "graph_nodes": zero}
        b = tf.shape(pooled)[0]
        c = self.num_classes
        # One collective for the three, so replicas issue the same all-reduces.
        packed = tf.concat([pooled, embeddings, tf.cast(targets, tf.float32)], axis=1)
        packed, offset = self._gather(packed)  # (N, Fd + E + C)
        all_pooled = packed[:, : self.feature_dim]
        all_emb = packed[:, self.feature_dim : -c]
        all_labels = tf.argmax(packed[:, -c:], axis=-1)
        a, cs = self.batch_graph(all_emb)  # (N, N), N = global or local batch
        graph_logits = self.head(
            [all_pooled, adj.normalized_adjacency(a)], training=training
        )
        logits = graph_logits[offset : offset + b]
        soft = adj.relaxed_adjacency(
            cs, self.tau1, self.tau2, self.temperature, similar_only=True
        )
        adj_value = adj.adj_loss(soft, all_labels, self.adj_reduction)
        terms = {
            "ce_graph": self._ce(targets, logits),
            "adj_loss": self.adj_loss_weight * self.graph_enabled * adj_value,
        }
        if "ce_isolated" in self.route:
            isolated = self.head([pooled, tf.eye(b)], training=training)
            terms["ce_isolated"] = self._ce(targets, isolated)
        nodes = tf.cast(tf.shape(a)[0], tf.float32)
        edges = tf.reduce_sum(adj.zero_diagonal(tf.stop_gradient(a))) / nodes
        return terms, logits, {**stats, "edges_per_node": edges, "graph_nodes": nodes}

    def _ce(self, targets, logits):
        """The classification term of each example: the cross-entropy, or with
        `gce_q` the generalised cross-entropy."""
        if not self.gce_q:
            return keras.losses.categorical_crossentropy(
                targets, logits, from_logits=True, label_smoothing=self.label_smoothing
            )
        targets = tf.cast(targets, tf.float32)
        if self.label_smoothing:
            c = tf.cast(tf.shape(targets)[-1], tf.float32)
            targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / c
        p = tf.nn.softmax(tf.cast(logits, tf.float32))
        return tf.reduce_sum(targets * (1.0 - p**self.gce_q), axis=-1) / self.gce_q

    def _scalar_terms(self, terms, replicas):
        """Each term as its share of the global batch's mean (the optimizer sums
        the replicas' gradients)."""
        return {
            name: tf.nn.compute_average_loss(value)
            if value.shape.rank
            else value / replicas
            for name, value in terms.items()
        }

    def train_step(self, data):
        images, targets = data[0], data[1]
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        cotrain = self.cotrainer  # --generator_cotrain_weight (generator.CoTrainer)
        route = dict(self.route)
        with tf.GradientTape(persistent=True) as tape:
            terms, logits, stats = self.compute_terms(images, targets)
            if cotrain is not None:
                adv, conv3_p = cotrain.adversarial_loss(
                    self.backbone, images, self.optimizer.iterations
                )
                terms["adversarial"] = adv
                route["adversarial"] = (cotrain.weight, ("backbone",))
            terms = self._scalar_terms(terms, replicas)
            if self.losses:  # layer regularisers: every part
                terms["regularisation"] = tf.add_n(self.losses) / replicas
                route["regularisation"] = (1.0, objective_lib.PARTS)
            # Each group's loss, scaled (mixed precision) inside the tape.
            group_losses = [
                (self.optimizer.scale_loss(objective_lib.weighted_sum(w, terms)), p)
                for w, p in objective_lib.groups(route)
            ]
        variables, grads = [], []
        for loss, parts in group_losses:
            own = [v for p in parts for v in self.part_variables(p)]
            variables += own
            grads += tape.gradient(loss, own)
        del tape
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        if cotrain is not None:
            d_loss, d_acc = cotrain.d_step(stats["conv3"], conv3_p)
            stats = {**stats, "adv_loss": terms["adversarial"] * replicas}
            stats.update(d_view_loss=d_loss, d_view_accuracy=d_acc)
        logged = {n: v * replicas for n, v in terms.items()}  # this replica's means
        logged["loss"] = objective_lib.total_loss(route, logged)
        return self._update_metrics(logged, logits, targets, stats)

    def test_step(self, data):
        images, targets = data[0], data[1]
        logits = self(images, training=False)
        ce = keras.losses.categorical_crossentropy(targets, logits, from_logits=True)
        return self._update_metrics({"loss": tf.reduce_mean(ce)}, logits, targets)

    def _update_metrics(self, values, logits, targets, stats=None):
        """Logs: the loss and its terms, the graph statistics and the co-training
        terms while training; the loss (the answer's cross-entropy) and accuracy
        in evaluation, whose `val_` logs keep out the training-only values."""
        for name, value in values.items():
            if name in self.trackers:
                self.trackers[name].update_state(value)
        logged = [self.trackers["loss"], self.accuracy]
        if stats is not None:
            for name in ("edges_per_node", "graph_nodes"):
                self.trackers[name].update_state(stats[name])
            for name, tracker in getattr(self.cotrainer, "trackers", {}).items():
                tracker.update_state(stats[name])
            logged = self.metrics
        self.accuracy.update_state(targets, logits)
        logs = {m.name: m.result() for m in logged}
        if isinstance(
            self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            # Keras 3.15 reduces multi-worker logs with a mean over axis 0, which
            # scalars do not have; the values are already synchronised.
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    # ---------------------------------------------------------- serialisation ---
    def get_config(self):
        return {
            "name": self.name,
            "format_version": FORMAT_VERSION,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "class_names": list(self.class_names),
            "backbone": self.backbone_name,
            "stem": self.stem,
            "width": self.width,
            "input_norm": self.input_norm,
            "head": self.head_type,
            "embedding_dim": self.embedding_dim,
            "embedding_norm": self.embedding_norm,
            "gcn_units": list(self.gcn_units),
            "gcn_dropout": self.gcn_dropout,
            "tau1": self.tau1,
            "tau2": self.tau2,
            "temperature": self.temperature,
            "straight_through": self.straight_through,
            "adj_loss_weight": self.adj_loss_weight,
            "adj_reduction": self.adj_reduction,
            "objective": self.objective,
            "nearest_k": self.nearest_k,
            "nearest_label_weight": self.nearest_label_weight,
            "inference_graph": self.inference_graph,
            "memory_size": self.memory_size,
            "label_smoothing": self.label_smoothing,
            "gce_q": self.gce_q,
            "cross_replica_graph": self.cross_replica_graph,
            "grayscale": self.grayscale,
            "training_data": self.training_data,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        check_format(config, f"model {config.get('name', '?')!r}")
        config.pop("format_version")
        return cls(**config)


def _expect(ok: bool, what: str, received) -> None:
    if not ok:
        raise ValueError(f"Expected {what}. Received: {received!r}")


class AdjacencyWarmup(keras.callbacks.Callback):
    """Keeps A = I and Adj_loss off for the first `epochs` epochs (paper: 50)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = int(epochs)

    def on_epoch_begin(self, epoch, logs=None):
        if hasattr(self.model, "graph_enabled"):
            self.model.graph_enabled.assign(1.0 if epoch >= self.epochs else 0.0)
