"""EAN's training: the distributed `train_step` with its losses (cross-entropy and
Adj_loss, eq. 6), the cross-replica graph, the metrics, the co-training hook, and
the adjacency warm-up callback. A mixin of `EAN` (models/ean.py), which provides
the forward pass (`features`, `batch_graph`, `head`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ean_tf.models import adjacency as adj


def _scale_gradient(x, scale: float):
    """x, unchanged; its gradient multiplied by `scale`."""

    @tf.custom_gradient
    def identity(x):
        return tf.identity(x), lambda dy: dy * scale

    return identity(x)


class TrainStep:
    """The training half of `EAN`."""

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

        Returns (ce per example (B,) (with `isolated_ce_weight`, mixed with the
        isolated logits' ce; with `neighbour_target_weight`, against targets
        mixed with the neighbours' predictions (with `neighbour_target_scope`
        isolated, the isolated logits' ce only); with `graph_target_mixing`, the
        graph logits' ce against the labels mixed by Â; with `neighbour_label_filter`,
        zero for the images whose label the graph disputes), alpha * Adj_loss
        scalar, logits (B, C), stats {"edges_per_node", "graph_nodes"}). With
        `cross_replica_graph` under a multi-replica strategy the graph spans
        every replica's batch.
        """
        labels = tf.argmax(targets, axis=-1)
        # The graph ce's targets (B, C) where they are not the isolated ce's:
        # --graph_target_mixing, or --neighbour_target_scope=isolated.
        graph_targets = None
        # --graph_backbone_grad=false: the graph's terms see the backbone's
        # features as constants; only the isolated cross-entropy trains it.
        detach = self.head_type == "ean" and not self.graph_backbone_grad
        pooled, embeddings, conv3 = self.features(images, training, detach)
        b = tf.shape(pooled)[0]
        if self.head_type == "linear":
            logits = self.head(pooled)
            adj_value = tf.constant(0.0)
            edges, nodes = tf.constant(0.0), tf.constant(0.0)
        else:
            # One all_gather for all three, so replicas issue the same collective.
            graph_pooled = tf.stop_gradient(pooled) if detach else pooled
            c = self.num_classes
            packed = tf.concat(
                [graph_pooled, embeddings, tf.cast(targets, tf.float32)], axis=1
            )  # (B, Fd + E + C)
            packed, offset = self._gather(packed)  # (N, Fd + E + C)
            all_pooled = packed[:, : self.feature_dim]
            all_emb = packed[:, self.feature_dim : -c]
            all_targets = packed[:, -c:]
            all_labels = tf.argmax(all_targets, axis=-1)
            a, cs = self.batch_graph(all_emb)  # (N, N), N = global or local batch
            a_hat = self.normalize(a)
            logits_all = self.head(
                [all_pooled, a_hat],
                training=training,
                neighbour_grad=self.neighbour_feature_grad,
                weight_grad=self.graph_head_grad,
            )
            logits = logits_all[offset : offset + b]
            if self.graph_target_mixing:
                # Â's rows of this replica's nodes, constants: the labels follow
                # the features' mixing, they do not train the edges.
                rows = tf.stop_gradient(a_hat[offset : offset + b])  # (B, N)
                graph_targets = tf.math.divide_no_nan(
                    tf.matmul(rows, all_targets),
                    tf.reduce_sum(rows, axis=-1, keepdims=True),
                )
            soft = adj.relaxed_adjacency(
                cs, self.tau1, self.tau2, self.temperature, similar_only=True
            )
            adj_value = adj.adj_loss(soft, all_labels, self.adj_reduction)
            adj_value = self.adj_loss_weight * self.graph_enabled * adj_value
            edges = tf.reduce_sum(tf.abs(adj.zero_diagonal(tf.stop_gradient(a))))
            nodes = tf.cast(tf.shape(a)[0], tf.float32)
            edges = edges / nodes
        keep = None
        if self.head_type == "ean" and (
            self.neighbour_target_weight > 0 or self.neighbour_label_filter
        ):
            own, mean, degree = self._neighbour_probs(cs, all_pooled, offset, b)
            if self.neighbour_label_filter:
                keep = self._undisputed(labels, own, mean, degree)
                start = self.label_filter_from_step
                if start > 0:  # --label_filter_warmup_epochs: not yet, keep all
                    waiting = self.optimizer.iterations < start
                    keep = tf.where(waiting, tf.ones_like(keep), keep)
            if self.neighbour_target_weight > 0:
                lam = self.neighbour_target_weight * tf.cast(degree > 0, tf.float32)
                targets = tf.cast(targets, tf.float32)
                if self.neighbour_target_scope == "isolated" and graph_targets is None:
                    graph_targets = targets  # the stored labels
                targets = (1.0 - lam) * targets + lam * mean
        ce = self._ce(targets if graph_targets is None else graph_targets, logits)
        beta = self.isolated_ce_weight
        if self.head_type == "ean" and beta > 0:
            # --isolated_ce_weight: the same head on the node alone (A = I), so
            # each image's own features get a classifier's full gradient. While
            # the warm-up lasts (A = I) both terms are the same and the mixed ce
            # is unchanged.
            # At full weight where it is the only gradient: the backbone's with
            # the graph detached, also the head's with --graph_head_grad=false.
            full = (1.0 + beta) / beta
            own = pooled
            if detach and self.graph_head_grad:
                own = _scale_gradient(pooled, full)
            isolated = self.head([own, tf.eye(b)], training=training)
            if not self.graph_head_grad:
                isolated = _scale_gradient(isolated, full)
            ce = (ce + beta * self._ce(targets, isolated)) / (1.0 + beta)
        if keep is not None:
            # The kept images' mean, so the batch's loss keeps its scale.
            kept = tf.reduce_sum(keep)
            ce = ce * keep * tf.math.divide_no_nan(tf.cast(b, tf.float32), kept)
        stats = {"edges_per_node": edges, "graph_nodes": nodes, "conv3": conv3}
        return ce, adj_value, logits, stats

    def _neighbour_probs(self, cs, all_pooled, offset, b):
        """This replica's nodes' own isolated predictions (softmax, A = I, no
        dropout) (B, C), the mean of their similar neighbours' (cos >= tau1,
        itself excluded) among the graph's N nodes (B, C), and how many
        neighbours each has (B, 1); none while the graph is off. Constants for
        the gradient. cs: (N, N) cosines of the graph; all_pooled: (N, Fd); this
        replica's nodes are rows offset .. offset + b."""
        n = tf.shape(all_pooled)[0]
        logits = self.head([all_pooled, tf.eye(n)], training=False)
        probs = tf.stop_gradient(tf.nn.softmax(logits))  # (N, C)
        similar = adj.zero_diagonal(tf.cast(cs >= self.tau1, tf.float32))  # (N, N)
        edges = tf.stop_gradient(similar * self.graph_enabled)[offset : offset + b]
        degree = tf.reduce_sum(edges, axis=-1, keepdims=True)  # (B, 1)
        mean = tf.math.divide_no_nan(tf.matmul(edges, probs), degree)  # (B, C)
        return probs[offset : offset + b], mean, degree

    def _undisputed(self, labels, own, mean, degree, confidence=None, share=None):
        """--neighbour_label_filter: (B,) 0 for an image whose label its graph
        disputes (its own isolated prediction and its similar neighbours' mean
        prediction both name another class, each with at least `confidence`,
        by default `neighbour_label_filter_confidence`), else 1. An image with
        no neighbour, and every image while the graph is off, is kept. Of each
        label's n images in the batch at most floor(`share` n) are left out (by
        default `neighbour_label_filter_share`), the disputed ones whose label
        has the lowest own plus neighbours' probability first (ties: the first
        in the batch)."""
        if confidence is None:
            confidence = self.neighbour_label_filter_confidence
        if share is None:
            share = self.neighbour_label_filter_share

        def names_another(probs):
            other = tf.not_equal(tf.argmax(probs, axis=-1), labels)
            return other & (tf.reduce_max(probs, axis=-1) >= confidence)

        disputed = names_another(own) & names_another(mean) & (degree[:, 0] > 0)
        if share < 1.0:
            label_prob = tf.gather(own + mean, labels, axis=1, batch_dims=1)  # (B,)
            same = tf.equal(labels[:, None], labels[None, :])  # (B, B)
            quota = tf.floor(share * tf.reduce_sum(tf.cast(same, tf.float32), -1))
            index = tf.range(tf.shape(labels)[0])
            # before[i, j]: j is left out before i (less likely, or tied and first).
            lower = label_prob[None, :] < label_prob[:, None]
            tied = tf.equal(label_prob[None, :], label_prob[:, None])
            before = lower | (tied & (index[None, :] < index[:, None]))
            ahead = tf.cast(same & before & disputed[None, :], tf.float32)
            disputed &= tf.reduce_sum(ahead, axis=-1) < quota
        return 1.0 - tf.cast(disputed, tf.float32)

    def _ce(self, targets, logits):
        return keras.losses.categorical_crossentropy(
            targets, logits, from_logits=True, label_smoothing=self.label_smoothing
        )

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


class AdjacencyWarmup(keras.callbacks.Callback):
    """Keeps A = I and Adj_loss off for the first `epochs` epochs (paper: 50)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = int(epochs)

    def on_epoch_begin(self, epoch, logs=None):
        if hasattr(self.model, "graph_enabled"):
            self.model.graph_enabled.assign(1.0 if epoch >= self.epochs else 0.0)
