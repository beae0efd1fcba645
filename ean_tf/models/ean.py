"""EAN: backbone -> embedding -> batch graph -> GCN head, with Adj_loss.

`EAN` is a subclassed `keras.Model` (docs/DESIGN.md section 1):

    images (B, S, S, 3) in 0..255 -> backbone (its InputNorm first) -> F (B, Fd), conv3
    e = Dense(F)                         (B, E), no ReLU: cosines span [-1, 1]
    A = thresholds(cos(e_i, e_j))        (B, B), zero while the warm-up lasts
    logits = GCN(F, norm(A + I))         (B, C)
    loss = CE(logits, y) + alpha * Adj_loss(A_soft_similar, y)

`call()` is the inference path, in one of five graphs (`inference_graph`):
`nearest` (the default: each image joined to its `nearest_k` most similar training
images, stored in the model with their isolated logits; see `memory.py`; a model
built without that store, `memory_size=0`, answers as the network alone), `context`
(each image is the last node of a training-sized batch whose other nodes are a
fixed reference context of training images drawn with the training class prior;
see `reference.py`), `bank` (each image joined only to a class-balanced reference
bank, edges bank -> query), `batch` (the request's images form the graph, the
paper's test protocol) and `isolated` (A = I). In `nearest`, `context` and `bank`
an image's answer never depends on the rest of the batch. `head="linear"` is the
plain-classifier baseline on the same backbone.

The constructor's defaults are `ModelConfig`'s: one source of defaults. The training
step is the mixin `TrainStep` (ean_step.py); filling the stored graphs and the
bank's forward passes are the mixin `References` (ean_references.py).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ean_tf.config import (
    GRAPH_FIELDS,
    Config,
    ModelConfig,
    TrainConfig,
    with_first_defaults,
)
from ean_tf.models import adjacency as adj
from ean_tf.models.backbones import build_backbone
from ean_tf.models.ean_references import References
from ean_tf.models.ean_step import AdjacencyWarmup, TrainStep  # noqa: F401
from ean_tf.models.gcn import GCNHead
from ean_tf.models.reference import ReferenceBank, ReferenceContext

INFERENCE_GRAPHS = ("nearest", "context", "bank", "batch", "isolated")
_GRAPHS = (*INFERENCE_GRAPHS, "bank_full")
_M = ModelConfig()  # the defaults of every constructor argument it shares
DEFAULT_GRAPH = _M.inference_graph  # what `--inference_graph=all` serves
_CONTEXT_SIZE = TrainConfig().batch_size - 1


# EAN's hyper-parameters: the `ModelConfig` fields of these names, whose defaults,
# choices and ranges are declared there once. The constructor takes them as
# keywords, validates them as the configuration does, and `get_config` returns them.
HYPER_PARAMETERS = ("backbone", "stem", "width", "input_norm", "head", *GRAPH_FIELDS)
# Attribute names for the fields whose own name the model uses for a layer.
_ATTRIBUTE = {
    "backbone": "backbone_name",
    "head": "head_type",
    "straight_through": "straight_through_edges",
}


@keras.saving.register_keras_serializable(package="ean_tf")
class EAN(TrainStep, References, keras.Model):
    def __init__(
        self,
        num_classes: int,
        image_size: int = 48,
        class_names=None,
        label_smoothing: float = 0.0,
        cross_replica_graph: bool = False,
        context_size: int = _CONTEXT_SIZE,
        memory_size: int = 0,
        **kwargs,
    ):
        params = {
            name: kwargs.pop(name, getattr(_M, name)) for name in HYPER_PARAMETERS
        }
        super().__init__(**kwargs)
        if params["inference_graph"] not in INFERENCE_GRAPHS:  # "all" is eval's
            raise ValueError(
                f"Expected inference_graph in {INFERENCE_GRAPHS}. "
                f"Received: {params['inference_graph']!r}"
            )
        if num_classes < 2 or context_size < 1 or memory_size < 0:
            raise ValueError(
                "Expected num_classes >= 2, context_size >= 1 and memory_size >= 0. "
                f"Received: {num_classes}, {context_size}, {memory_size}"
            )
        # Checked as the flags are (ConfigError, a ValueError, names the field).
        hp = Config(model=ModelConfig(**params)).model
        for name in HYPER_PARAMETERS:
            setattr(self, _ATTRIBUTE.get(name, name), getattr(hp, name))
        self.gcn_units = tuple(int(u) for u in hp.gcn_units)
        self.num_classes, self.image_size = int(num_classes), int(image_size)
        self.context_size = int(context_size)
        self.memory_size = int(memory_size) if hp.head == "ean" else 0
        self.label_smoothing = float(label_smoothing)
        self.cross_replica_graph = bool(cross_replica_graph)
        self.class_names = tuple(class_names or (str(i) for i in range(num_classes)))
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"Expected {num_classes} class names. Received: {self.class_names}"
            )
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
        # --label_filter_warmup_epochs as an optimizer step, set by training (a
        # schedule, not saved): before it, --neighbour_label_filter keeps all.
        self.label_filter_from_step = 0
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.ce_tracker = keras.metrics.Mean(name="ce_loss")
        self.adj_tracker = keras.metrics.Mean(name="adj_loss")
        self.edge_tracker = keras.metrics.Mean(name="edges_per_node")
        self.nodes_tracker = keras.metrics.Mean(name="graph_nodes")
        self.accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
        # --generator_cotrain_weight: a models.generator.CoTrainer, attached by
        # training, never saved with the model.
        self.cotrainer = None
        self.build((None, self.image_size, self.image_size, 3))

    def _build_layers(self) -> None:
        """Backbone, embedding (+ its norm), head, and the served graphs' stores."""
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
        self.context = ReferenceContext(
            self.context_sets,
            self.context_size,
            self.feature_dim,
            self.embedding_dim,
            name="reference_context",
            dtype="float32",  # no autocast of its inputs under mixed precision
        )
        self.memory = self._make_memory()  # the nearest graph's, or None
        widths = (self.feature_dim, *self.gcn_units) if self.head_type == "ean" else ()
        self.bank = ReferenceBank(
            self.num_classes,
            self.bank_per_class,
            self.feature_dim,
            self.embedding_dim,
            widths,
            name="reference_bank",
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

    # ---------------------------------------------------------------- forward ---
    def encode(self, images, training=False, detach=False):
        """images (B, S, S, 3) 0..255 -> pooled (B, Fd), raw embedding (B, E) (before
        its normalisation), conv3. `detach`: no gradient from the embedding reaches
        the backbone (--graph_backbone_grad=false)."""
        pooled, conv3 = self.backbone(images, training=training)
        pooled = tf.cast(pooled, tf.float32)
        below = tf.stop_gradient(pooled) if detach else pooled
        return pooled, self.embedding(below), conv3

    def features(self, images, training=False, detach=False):
        """images (B, S, S, 3) 0..255 -> pooled (B, Fd), embedding (B, E), conv3.

        The embedding is normalised by batch norm: with the batch's statistics in
        training, the moving ones otherwise (per image, as `embed` serves it).
        """
        pooled, raw, conv3 = self.encode(images, training=training, detach=detach)
        embeddings = raw
        if self.embedding_bn is not None:
            embeddings = self.embedding_bn(raw, training=training)
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
        a = adj.threshold_adjacency(cs, self.tau1, self.tau2, self.signed_edges)
        if self.straight_through_edges:
            soft = adj.relaxed_adjacency(
                cs, self.tau1, self.tau2, self.temperature, self.signed_edges
            )
            a = adj.straight_through(a, soft)
        return a * self.graph_enabled, cs

    def normalize(self, a):
        """The GCN's Â from edges A (..., N, N): eq. 8, with `self_weight`."""
        a_hat = adj.normalized_adjacency(a, self.signed_edges)
        return adj.self_weighted(a_hat, self.self_weight)

    def graph_logits(self, pooled, raw, gate=1.0, training=False):
        """Logits (..., N, C) of graphs of N nodes: pooled (..., N, Fd), raw
        embeddings (..., N, E); edges times `gate` (0: A = I)."""
        a, _ = self.batch_graph(self.graph_embeddings(raw))
        return self.head([pooled, self.normalize(a * gate)], training=training)

    def classify(self, pooled, raw, graph: str, training=False):
        """Logits (B, C) from pooled features and raw embeddings, in `graph`."""
        if self.head_type == "linear":
            return self.head(pooled)
        if graph == "isolated":
            a_hat = tf.eye(tf.shape(pooled)[0])
            return self.head([pooled, a_hat], training=training)
        if graph == "batch":
            return self.graph_logits(pooled, raw, training=training)
        if graph == "context":
            return self.context(pooled, raw, graph_logits=self.graph_logits)
        if graph == "nearest":
            return self._nearest_forward(pooled, raw, training)
        embeddings = raw
        if self.embedding_bn is not None:  # the bank uses the moving statistics
            embeddings = self.embedding_bn(raw, training=False)
        if graph == "bank":
            return self._bank_forward(pooled, embeddings)
        if graph == "bank_full":  # the same maths on the whole (K+Q) graph; tests
            return self._bank_full_graph(pooled, embeddings, training)
        raise ValueError(f"Expected graph in {_GRAPHS}. Received: {graph!r}")

    def call(self, images, training=False, graph: str | None = None):
        """Logits (B, C) for images (B, S, S, 3) in 0..255."""
        pooled, raw, _ = self.encode(images, training=training)
        return self.classify(
            pooled, raw, graph or self.inference_graph, training=training
        )

    def set_inference_graph(self, graph: str) -> None:
        if graph not in INFERENCE_GRAPHS:
            raise ValueError(
                f"Expected inference_graph in {INFERENCE_GRAPHS}. Received: {graph!r}"
            )
        self.inference_graph = graph
        self.predict_function = None
        self.test_function = None

    # ---------------------------------------------------------- serialisation ---
    def get_config(self):
        config = {
            name: getattr(self, _ATTRIBUTE.get(name, name)) for name in HYPER_PARAMETERS
        }
        return {
            "name": self.name,
            **config,
            "gcn_units": list(self.gcn_units),
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "context_size": self.context_size,
            "memory_size": self.memory_size,
            "label_smoothing": self.label_smoothing,
            "cross_replica_graph": self.cross_replica_graph,
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_config(cls, config):
        # A model saved before a field existed was trained with its first
        # default, not today's (FIRST_DEFAULTS: the paper's loss until
        # 2026-12-01, the graph's terms in the backbone until 2026-12-02, the
        # nearest graph without its neighbours' labels and the graph's
        # cross-entropy in the head until 2026-12-05).
        return cls(**with_first_defaults({"model": config})["model"])


def build_model(
    model_config,
    data_config,
    num_classes: int,
    class_names=None,
    label_smoothing: float = 0.0,
    cross_replica_graph: bool = False,
    graph_nodes: int = TrainConfig().batch_size,
    train_images: int = 0,
) -> EAN:
    """An `EAN` from a `ModelConfig` and `DataConfig`; `graph_nodes` is the size of
    a training graph (the batch, or each replica's batch), which the reference
    context matches unless `context_size` is set; `train_images` the training
    split's size, of which the nearest graph keeps `nearest_memory` (0: all; no
    training split, no nearest graph)."""
    m = model_config
    params = {name: getattr(m, name) for name in HYPER_PARAMETERS}
    if m.inference_graph == "all":  # --mode=eval's; the model serves the default
        params["inference_graph"] = DEFAULT_GRAPH
    return EAN(
        num_classes=m.num_classes or num_classes,
        image_size=data_config.image_size,
        class_names=class_names,
        label_smoothing=label_smoothing,
        cross_replica_graph=cross_replica_graph,
        context_size=m.context_size or max(1, graph_nodes - 1),
        memory_size=min(m.nearest_memory or train_images, train_images),
        name="ean" if m.head == "ean" else "baseline",
        **params,
    )
