"""EAN: backbone -> embedding -> batch graph -> GCN head, with Adj_loss.

`EAN` is a subclassed `keras.Model` (DESIGN section 1):

    images (B, S, S, 3) in 0..255 -> backbone (its InputNorm first) -> F (B, Fd), conv3
    e = Dense(F)                         (B, E), no ReLU: cosines span [-1, 1]
    A = thresholds(cos(e_i, e_j))        (B, B), zero while the warm-up lasts
    logits = GCN(F, norm(A + I))         (B, C)
    loss = CE(logits, y) + alpha * Adj_loss(A_soft_similar, y)

`call()` is the inference path, in one of four graphs (`inference_graph`):
`context` (the default: each image is the last node of a training-sized batch
whose other nodes are a fixed reference context of training images drawn with the
training class prior, stored in the model; see `reference.py`), `bank` (each image
joined only to a class-balanced reference bank, edges bank -> query), `batch` (the
request's images form the graph, the paper's test protocol) and `isolated`
(A = I). In `context` and `bank` an image's answer never depends on the rest of
the batch. `head="linear"` is the plain-classifier baseline on the same backbone.

The constructor's defaults are `ModelConfig`'s: one source of defaults.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ean_tf.config import ModelConfig, TrainConfig
from ean_tf.models import adjacency as adj
from ean_tf.models.backbones import build_backbone
from ean_tf.models.gcn import GCNHead
from ean_tf.models.reference import ReferenceContext

INFERENCE_GRAPHS = ("context", "bank", "batch", "isolated")
_GRAPHS = (*INFERENCE_GRAPHS, "bank_full")
_M = ModelConfig()  # the defaults of every constructor argument it shares
DEFAULT_GRAPH = _M.inference_graph  # what `--inference_graph=all` serves
_CONTEXT_SIZE = TrainConfig().batch_size - 1


@keras.saving.register_keras_serializable(package="ean_tf")
class EAN(keras.Model):
    def __init__(
        self,
        num_classes: int,
        image_size: int = 48,
        backbone: str = _M.backbone,
        stem: str = _M.stem,
        width: int = _M.width,
        head: str = _M.head,
        embedding_dim: int = _M.embedding_dim,
        gcn_units=_M.gcn_units,
        gcn_dropout: float = _M.gcn_dropout,
        tau1: float = _M.tau1,
        tau2: float = _M.tau2,
        temperature: float = _M.temperature,
        straight_through: bool = _M.straight_through,
        signed_edges: bool = _M.signed_edges,
        adj_loss_weight: float = _M.adj_loss_weight,
        adj_reduction: str = _M.adj_reduction,
        bank_per_class: int = _M.bank_per_class,
        inference_graph: str = _M.inference_graph,
        label_smoothing: float = 0.0,
        cross_replica_graph: bool = False,
        embedding_norm: str = _M.embedding_norm,
        class_names=None,
        input_norm: str = _M.input_norm,
        context_size: int = _CONTEXT_SIZE,
        context_sets: int = _M.context_sets,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"Expected num_classes >= 2. Received: {num_classes}")
        if head not in ("ean", "linear"):
            raise ValueError(f"Expected head 'ean' or 'linear'. Received: {head!r}")
        if inference_graph not in INFERENCE_GRAPHS:
            raise ValueError(
                f"Expected inference_graph in {INFERENCE_GRAPHS}. "
                f"Received: {inference_graph!r}"
            )
        if not tau2 < tau1:
            raise ValueError(
                f"Expected tau2 < tau1. Received: tau1={tau1}, tau2={tau2}"
            )
        if embedding_norm not in ("batchnorm", "none"):
            raise ValueError(
                f"Expected embedding_norm 'batchnorm' or 'none'. "
                f"Received: {embedding_norm!r}"
            )
        if adj_reduction not in ("sum", "mean"):
            raise ValueError(
                f"Expected adj_reduction 'sum' or 'mean'. Received: {adj_reduction!r}"
            )
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.backbone_name, self.stem, self.width = backbone, stem, int(width)
        self.head_type = head
        self.embedding_dim = int(embedding_dim)
        self.embedding_norm = embedding_norm
        self.gcn_units = tuple(int(u) for u in gcn_units)
        self.gcn_dropout = float(gcn_dropout)
        self.tau1, self.tau2 = float(tau1), float(tau2)
        self.temperature = float(temperature)
        self.straight_through_edges = bool(straight_through)
        self.signed_edges = bool(signed_edges)
        self.adj_loss_weight = float(adj_loss_weight)
        self.adj_reduction = adj_reduction
        self.bank_per_class = int(bank_per_class)
        self.context_size, self.context_sets = int(context_size), int(context_sets)
        if self.context_size < 1 or self.context_sets < 1:
            raise ValueError(
                f"Expected context_size, context_sets >= 1. Received: "
                f"{context_size}, {context_sets}"
            )
        self.inference_graph = inference_graph
        self.label_smoothing = float(label_smoothing)
        self.cross_replica_graph = bool(cross_replica_graph)
        self.class_names = tuple(class_names or (str(i) for i in range(num_classes)))
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"Expected {num_classes} class names. Received: {self.class_names}"
            )

        self.input_norm = input_norm
        self.backbone = build_backbone(
            backbone, self.image_size, stem, self.width, input_norm
        )
        feature_dim = self.backbone.outputs[0].shape[-1]
        self.feature_dim = int(feature_dim)
        self.embedding = keras.layers.Dense(
            self.embedding_dim, name="embedding", dtype="float32"
        )
        # Batch norm centres the embeddings, so cosines spread around 0 instead of
        # all sitting near 1 (pooled ReLU features share a large common part); at
        # inference it is a fixed affine map, so a query stays batch-independent.
        self.embedding_bn = (
            keras.layers.BatchNormalization(
                momentum=0.9, name="embedding_bn", dtype="float32"
            )
            if embedding_norm == "batchnorm"
            else None
        )
        if head == "ean":
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
        # The served graph's reference context (filled after training).
        self.context = ReferenceContext(
            self.context_sets,
            self.context_size,
            self.feature_dim,
            self.embedding_dim,
            name="reference_context",
        )
        k = self.num_classes * self.bank_per_class
        # 0 during the adjacency warm-up (A = I, no Adj_loss), then 1. A weight, so
        # checkpoints carry it; a callback flips it, nothing retraces.
        self.graph_enabled = self.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            autocast=False,
            name="graph_enabled",
        )
        # The reference bank: K = C * bank_per_class training samples, class-major.
        self.bank_features = self.add_weight(
            shape=(k, self.feature_dim),
            initializer="zeros",
            trainable=False,
            autocast=False,
            name="bank_features",
        )
        self.bank_embeddings = self.add_weight(
            shape=(k, self.embedding_dim),
            initializer="zeros",
            trainable=False,
            autocast=False,
            name="bank_embeddings",
        )
        self.bank_valid = self.add_weight(
            shape=(k,),
            initializer="zeros",
            trainable=False,
            autocast=False,
            name="bank_valid",
        )
        # What bank nodes feed each GCN layer, and their degrees, computed once in
        # build_bank(): bank nodes never read queries, so a query's bank-graph
        # forward needs only its edges to the bank (O(Q K d), no K x K work).
        self.bank_degree = self.add_weight(
            shape=(k,),
            initializer="ones",
            trainable=False,
            autocast=False,
            name="bank_degree",
        )
        widths = (self.feature_dim, *self.gcn_units) if head == "ean" else ()
        self.bank_layer_inputs = [
            self.add_weight(
                shape=(k, w),
                initializer="zeros",
                trainable=False,
                autocast=False,
                name=f"bank_layer_input_{i}",
            )
            for i, w in enumerate(widths)
        ]
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.ce_tracker = keras.metrics.Mean(name="ce_loss")
        self.adj_tracker = keras.metrics.Mean(name="adj_loss")
        self.edge_tracker = keras.metrics.Mean(name="edges_per_node")
        self.nodes_tracker = keras.metrics.Mean(name="graph_nodes")
        self.accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
        # --generator_cotrain_weight: a generator.CoTrainer, attached by training,
        # never saved with the model.
        self.cotrainer = None
        self.build((None, self.image_size, self.image_size, 3))

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
    def encode(self, images, training=False):
        """images (B, S, S, 3) 0..255 -> pooled (B, Fd), raw embedding (B, E) (before
        its normalisation), conv3."""
        pooled, conv3 = self.backbone(images, training=training)
        pooled = tf.cast(pooled, tf.float32)
        return pooled, self.embedding(pooled), conv3

    def features(self, images, training=False):
        """images (B, S, S, 3) 0..255 -> pooled (B, Fd), embedding (B, E), conv3.

        The embedding is normalised by batch norm: with the batch's statistics in
        training, the moving ones otherwise (per image, as `embed` serves it).
        """
        pooled, raw, conv3 = self.encode(images, training=training)
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

    def graph_logits(self, pooled, raw, gate=1.0, training=False):
        """Logits (..., N, C) of graphs of N nodes: pooled (..., N, Fd), raw
        embeddings (..., N, E); edges times `gate` (0: A = I)."""
        a, _ = self.batch_graph(self.graph_embeddings(raw))
        a_hat = adj.normalized_adjacency(a * gate, self.signed_edges)
        return self.head([pooled, a_hat], training=training)

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
        embeddings = raw
        if self.embedding_bn is not None:  # the bank uses the moving statistics
            embeddings = self.embedding_bn(raw, training=False)
        if graph == "bank":
            return self._bank_forward(pooled, embeddings)
        if graph == "bank_full":  # the same maths on the whole (K+Q) graph; tests
            return self._bank_full_graph(pooled, embeddings, training)
        raise ValueError(f"Expected graph in {_GRAPHS}. Received: {graph!r}")

    def _bank_forward(self, pooled, embeddings):
        """Bank-graph logits (Q, C) from the cached bank layer inputs.

        Row q of Â over [bank; queries] has Â_qq = 1/d_q and Â_qj = a_qj /
        sqrt(d_q d_j) for bank node j (d_j its degree in the bank graph), so
        layer l gives act((Â_qq h_q + Σ_j Â_qj H_l[j]) W_l + b_l).
        """
        g = self.graph_enabled  # during the warm-up the graph is I
        cs = adj.cosine_similarity(embeddings, self.bank_embeddings)  # (Q, K)
        a = adj.threshold_adjacency(cs, self.tau1, self.tau2, self.signed_edges)
        a = a * self.bank_valid[None, :] * g  # (Q, K)
        d_q = 1.0 + tf.reduce_sum(tf.abs(a), axis=1, keepdims=True)  # (Q, 1)
        a_qb = a * tf.math.rsqrt(d_q) * tf.math.rsqrt(self.bank_degree)[None, :]
        h = pooled
        for conv, bank_h in zip(self.head.convs, self.bank_layer_inputs, strict=True):
            mixed = h / d_q + tf.matmul(a_qb, tf.cast(bank_h, h.dtype))  # (Q, d)
            h = tf.matmul(mixed, tf.cast(conv.kernel, mixed.dtype))
            if conv.use_bias:
                h = h + tf.cast(conv.bias, h.dtype)
            h = conv.activation(h)
        return tf.cast(h, tf.float32)  # (Q, C)

    def _bank_full_graph(self, pooled, embeddings, training=False):
        """Bank-graph logits by running the GCN on the whole (K+Q)-node graph."""
        bank_e = self.bank_embeddings
        a_hat = adj.bank_graph(
            adj.cosine_similarity(bank_e),
            adj.cosine_similarity(embeddings, bank_e),
            self.tau1,
            self.tau2,
            self.signed_edges,
            self.bank_valid,
        )
        g = self.graph_enabled
        a_hat = g * a_hat + (1.0 - g) * tf.eye(tf.shape(a_hat)[0])
        x = tf.concat([tf.cast(self.bank_features, pooled.dtype), pooled], axis=0)
        k = tf.shape(self.bank_features)[0]
        return self.head([x, a_hat], training=training)[k:]

    def _fill_bank_cache(self):
        """Bank degrees and per-layer bank inputs from the bank graph alone."""
        if self.head_type != "ean":
            return
        cs = adj.cosine_similarity(self.bank_embeddings)
        a = adj.threshold_adjacency(cs, self.tau1, self.tau2, self.signed_edges)
        valid = self.bank_valid
        a = adj.zero_diagonal(a * valid[:, None] * valid[None, :])
        self.bank_degree.assign(1.0 + tf.reduce_sum(tf.abs(a), axis=1))
        a_hat = adj.normalized_adjacency(a, self.signed_edges)  # (K, K)
        h = tf.convert_to_tensor(self.bank_features)
        for conv, cache in zip(self.head.convs, self.bank_layer_inputs, strict=True):
            cache.assign(h)
            h = conv([h, a_hat])

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
        return [
            self.loss_tracker,
            self.ce_tracker,
            self.adj_tracker,
            self.edge_tracker,
            self.nodes_tracker,
            self.accuracy,
        ] + list(getattr(self.cotrainer, "trackers", {}).values())

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

    def compute_losses(self, images, targets, training=True):
        """Per-replica losses and graph statistics.

        Returns (ce per example (B,), alpha * Adj_loss scalar, logits (B, C),
        stats {"edges_per_node", "graph_nodes"}). With `cross_replica_graph`
        under a multi-replica strategy the graph spans every replica's batch.
        """
        labels = tf.argmax(targets, axis=-1)
        pooled, embeddings, conv3 = self.features(images, training=training)
        b = tf.shape(pooled)[0]
        if self.head_type == "linear":
            logits = self.head(pooled)
            adj_value = tf.constant(0.0)
            edges, nodes = tf.constant(0.0), tf.constant(0.0)
        else:
            # One all_gather for all three, so replicas issue the same collective.
            packed = tf.concat(
                [pooled, embeddings, tf.cast(labels, tf.float32)[:, None]], axis=1
            )  # (B, Fd + E + 1)
            packed, offset = self._gather(packed)  # (N, Fd + E + 1)
            all_pooled = packed[:, : self.feature_dim]
            all_emb = packed[:, self.feature_dim : -1]
            all_labels = tf.cast(tf.round(packed[:, -1]), tf.int64)
            a, cs = self.batch_graph(all_emb)  # (N, N), N = global or local batch
            a_hat = adj.normalized_adjacency(a, self.signed_edges)
            logits_all = self.head([all_pooled, a_hat], training=training)
            logits = logits_all[offset : offset + b]
            soft = adj.relaxed_adjacency(
                cs, self.tau1, self.tau2, self.temperature, similar_only=True
            )
            adj_value = adj.adj_loss(soft, all_labels, self.adj_reduction)
            adj_value = self.adj_loss_weight * self.graph_enabled * adj_value
            edges = tf.reduce_sum(tf.abs(adj.zero_diagonal(tf.stop_gradient(a))))
            nodes = tf.cast(tf.shape(a)[0], tf.float32)
            edges = edges / nodes
        ce = keras.losses.categorical_crossentropy(
            targets, logits, from_logits=True, label_smoothing=self.label_smoothing
        )
        stats = {"edges_per_node": edges, "graph_nodes": nodes, "conv3": conv3}
        return ce, adj_value, logits, stats

    def train_step(self, data):
        images, targets = data[0], data[1]
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        cotrain = self.cotrainer  # --generator_cotrain_weight (generator.CoTrainer)
        with tf.GradientTape() as tape:
            ce, adj_value, logits, stats = self.compute_losses(images, targets)
            # Distribution-safe: the optimizer sums gradients over replicas.
            loss = tf.nn.compute_average_loss(ce) + adj_value / replicas
            if self.losses:
                loss += tf.add_n(self.losses) / replicas
            if cotrain is not None:
                adv, conv3_p = cotrain.adversarial_loss(
                    self.backbone, images, self.optimizer.iterations
                )
                loss += cotrain.weight * tf.nn.compute_average_loss(adv)
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(
            zip(grads, self.trainable_variables, strict=True)
        )
        if cotrain is not None:
            d_loss, d_acc = cotrain.d_step(stats["conv3"], conv3_p)
            stats = {**stats, "adv_loss": tf.reduce_mean(adv), "d_view_loss": d_loss}
            stats["d_view_accuracy"] = d_acc
        return self._update_metrics(ce, adj_value, logits, targets, stats)

    def test_step(self, data):
        images, targets = data[0], data[1]
        logits = self(images, training=False)
        ce = keras.losses.categorical_crossentropy(targets, logits, from_logits=True)
        return self._update_metrics(ce, tf.constant(0.0), logits, targets)

    def _update_metrics(self, ce, adj_value, logits, targets, stats=None):
        mean_ce = tf.reduce_mean(ce)
        self.loss_tracker.update_state(mean_ce + adj_value)
        self.ce_tracker.update_state(mean_ce)
        self.adj_tracker.update_state(adj_value)
        if stats is not None:
            self.edge_tracker.update_state(stats["edges_per_node"])
            self.nodes_tracker.update_state(stats["graph_nodes"])
            for name, tracker in getattr(self.cotrainer, "trackers", {}).items():
                tracker.update_state(stats[name])
        self.accuracy.update_state(targets, logits)
        # Evaluation updates only the loss, CE and accuracy: the graph statistics
        # and the co-training terms are training-only, so they stay out of the
        # `val_` logs instead of showing there as zeros.
        logged = (
            self.metrics
            if stats is not None
            else (self.loss_tracker, self.ce_tracker, self.accuracy)
        )
        logs = {m.name: m.result() for m in logged}
        if isinstance(
            self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            # Keras 3.15 reduces multi-worker logs with a mean over axis 0, which
            # scalars do not have; the values are already synchronised.
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    # ------------------------------------------------------------------- bank ---
    def build_bank(
        self, images_and_targets, max_per_class: int = 400, seed: int = 0
    ) -> dict:
        """Fills the reference bank from training batches (no augmentation).

        Per class, among up to `max_per_class` candidates, takes the
        `bank_per_class` samples whose embedding is closest (cosine) to the class
        mean, preferring samples the isolated network classifies as their label (so
        a noisy label is unlikely to enter the bank). Returns per-class counts.
        """
        feats, embs, labels, agree = [], [], [], []
        seen = np.zeros(self.num_classes, np.int64)
        for images, targets in images_and_targets:
            pooled, emb, _ = self.features(images, training=False)
            pred = tf.argmax(self.classify(pooled, None, "isolated"), axis=-1)
            y = np.argmax(np.asarray(targets), axis=-1)
            feats.append(pooled.numpy())
            embs.append(emb.numpy())
            labels.append(y)
            agree.append(pred.numpy() == y)
            seen += np.bincount(y, minlength=self.num_classes)
            if np.all(seen >= max_per_class):
                break
        feats, embs = np.concatenate(feats), np.concatenate(embs)
        labels, agree = np.concatenate(labels), np.concatenate(agree)
        k = self.bank_per_class
        bank_f = np.zeros((self.num_classes * k, self.feature_dim), np.float32)
        bank_e = np.zeros((self.num_classes * k, self.embedding_dim), np.float32)
        valid = np.zeros(self.num_classes * k, np.float32)
        counts = {}
        for c in range(self.num_classes):
            idx = np.flatnonzero(labels == c)[:max_per_class]
            if len(idx) == 0:
                counts[self.class_names[c]] = 0
                continue
            e = embs[idx] / (np.linalg.norm(embs[idx], axis=1, keepdims=True) + 1e-12)
            centre = e.mean(0)
            score = e @ centre + 2.0 * agree[idx]  # agreeing samples first
            pick = idx[np.argsort(-score, kind="stable")[:k]]
            n = len(pick)
            bank_f[c * k : c * k + n] = feats[pick]
            bank_e[c * k : c * k + n] = embs[pick]
            valid[c * k : c * k + n] = 1.0
            counts[self.class_names[c]] = n
        self.bank_features.assign(bank_f)
        self.bank_embeddings.assign(bank_e)
        self.bank_valid.assign(valid)
        self._fill_bank_cache()
        return counts

    def build_context(self, batches) -> None:
        """Fills the reference context from batches of images (no augmentation),
        `context_sets * context_size` in all, set-major (see
        `reference.select_context` for which)."""
        feats, raws = [], []
        for images in batches:
            pooled, raw, _ = self.encode(images, training=False)
            feats.append(pooled.numpy())
            raws.append(raw.numpy())
        feats, raws = np.concatenate(feats), np.concatenate(raws)
        want = self.context_sets * self.context_size
        if len(feats) != want:
            raise ValueError(f"Expected {want} context images. Received: {len(feats)}")
        self.context.fill(feats, raws)

    # ---------------------------------------------------------- serialisation ---
    def get_config(self):
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
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
            "straight_through": self.straight_through_edges,
            "signed_edges": self.signed_edges,
            "adj_loss_weight": self.adj_loss_weight,
            "adj_reduction": self.adj_reduction,
            "bank_per_class": self.bank_per_class,
            "context_size": self.context_size,
            "context_sets": self.context_sets,
            "inference_graph": self.inference_graph,
            "label_smoothing": self.label_smoothing,
            "cross_replica_graph": self.cross_replica_graph,
            "class_names": list(self.class_names),
        }


class AdjacencyWarmup(keras.callbacks.Callback):
    """Keeps A = I and Adj_loss off for the first `epochs` epochs (paper: 50)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = int(epochs)

    def on_epoch_begin(self, epoch, logs=None):
        if hasattr(self.model, "graph_enabled"):
            self.model.graph_enabled.assign(1.0 if epoch >= self.epochs else 0.0)


def build_model(
    model_config,
    data_config,
    num_classes: int,
    class_names=None,
    label_smoothing: float = 0.0,
    cross_replica_graph: bool = False,
    graph_nodes: int = TrainConfig().batch_size,
) -> EAN:
    """An `EAN` from a `ModelConfig` and `DataConfig`; `graph_nodes` is the size of
    a training graph (the batch, or each replica's batch), which the reference
    context matches unless `context_size` is set."""
    m = model_config
    return EAN(
        num_classes=m.num_classes or num_classes,
        image_size=data_config.image_size,
        backbone=m.backbone,
        stem=m.stem,
        width=m.width,
        input_norm=m.input_norm,
        head=m.head,
        embedding_dim=m.embedding_dim,
        embedding_norm=m.embedding_norm,
        gcn_units=m.gcn_units,
        gcn_dropout=m.gcn_dropout,
        tau1=m.tau1,
        tau2=m.tau2,
        temperature=m.temperature,
        straight_through=m.straight_through,
        signed_edges=m.signed_edges,
        adj_loss_weight=m.adj_loss_weight,
        adj_reduction=m.adj_reduction,
        bank_per_class=m.bank_per_class,
        context_size=m.context_size or max(1, graph_nodes - 1),
        context_sets=m.context_sets,
        inference_graph=DEFAULT_GRAPH
        if m.inference_graph == "all"
        else m.inference_graph,
        label_smoothing=label_smoothing,
        cross_replica_graph=cross_replica_graph,
        class_names=class_names,
        name="ean" if m.head == "ean" else "baseline",
    )
