"""EAN's stored graphs: filling the reference context, the nearest graph's memory
and the class-balanced bank from training images, and their forward passes. A
mixin of `EAN` (models/ean.py), which provides `encode`, `features`, `classify`
and the head; the weights live in the `ReferenceContext` and `ReferenceBank`
layers (reference.py) and `ReferenceMemory` (memory.py).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ean_tf.models import adjacency as adj
from ean_tf.models.memory import ReferenceMemory
from ean_tf.models.reference import BANK_CANDIDATES, bank_candidates, select_bank


class References:
    """The stored-graph half of `EAN`."""

    def _edges(self, cs):
        """Hard thresholded edges of cosines (eq. 4)."""
        return adj.threshold_adjacency(cs, self.tau1, self.tau2, self.signed_edges)

    def _bank_forward(self, pooled, embeddings):
        """Bank-graph logits (Q, C); during the warm-up the graph is I."""
        return self.bank(
            pooled,
            embeddings,
            edges=self._edges,
            head=self.head,
            gate=self.graph_enabled,
            self_weight=self.self_weight,
        )

    def _make_memory(self):
        """The nearest graph's store of training images; None where the model
        keeps none (a linear head, or memory_size 0: built without its data)."""
        if not self.memory_size:
            return None
        return ReferenceMemory(
            self.memory_size,
            self.embedding_dim,
            self.num_classes,
            name="reference_memory",
            dtype="float32",
        )

    def _nearest_forward(self, pooled, raw, training=False):
        """Nearest-graph logits (Q, C): each query's isolated logits averaged with
        its nearest stored training images' (see `ReferenceMemory`). A model that
        stores none (memory_size 0) answers as its store were empty: isolated,
        as the context graph does before it is filled."""
        alone = self.classify(pooled, raw, "isolated", training=training)
        if self.memory is None:
            return alone
        return self.memory(
            alone,
            raw,
            k=self.nearest_k,
            tau1=self.tau1,
            gate=self.graph_enabled,
            self_weight=self.self_weight,
            label_weight=self.nearest_label_weight,
        )

    def answers_with(self) -> tuple[str, float]:
        """(graph, label weight) a plain call answers with: the served graph (the
        network alone for a linear head) and, in the nearest graph, its
        neighbours' label weight (0 in any other)."""
        graph = self.inference_graph if self.head_type == "ean" else "isolated"
        return graph, self.nearest_label_weight if graph == "nearest" else 0.0

    def set_nearest_label_weight(self, weight: float) -> None:
        """The nearest graph's label weight w (`--nearest_label_weight`), checked as
        the flag is; saved with the model. Takes effect in every later call."""
        from ean_tf.config import Config, ModelConfig

        hp = Config(model=ModelConfig(nearest_label_weight=float(weight))).model
        self.nearest_label_weight = hp.nearest_label_weight
        self.predict_function = None
        self.test_function = None

    def _bank_full_graph(self, pooled, embeddings, training=False):
        """Bank-graph logits by running the GCN on the whole (K+Q)-node graph."""
        bank_e = self.bank.embeddings
        a_hat = adj.bank_graph(
            adj.cosine_similarity(bank_e),
            adj.cosine_similarity(embeddings, bank_e),
            self.tau1,
            self.tau2,
            self.signed_edges,
            self.bank.valid,
        )
        a_hat = adj.self_weighted(a_hat, self.self_weight)
        g = self.graph_enabled
        a_hat = g * a_hat + (1.0 - g) * tf.eye(tf.shape(a_hat)[0])
        x = tf.concat([tf.cast(self.bank.features, pooled.dtype), pooled], axis=0)
        k = tf.shape(self.bank.features)[0]
        return self.head([x, a_hat], training=training)[k:]

    def build_bank(
        self, images_and_targets, max_per_class: int = BANK_CANDIDATES, seed: int = 0
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
        candidates = np.full(len(labels), -1)  # the first max_per_class a class
        first = bank_candidates(labels, max_per_class)
        candidates[first] = labels[first]
        picks = select_bank(embs, candidates, agree, k, self.num_classes)
        bank_f = np.zeros((self.num_classes * k, self.feature_dim), np.float32)
        bank_e = np.zeros((self.num_classes * k, self.embedding_dim), np.float32)
        valid = np.zeros(self.num_classes * k, np.float32)
        counts = {}
        for c, pick in enumerate(picks):
            n = len(pick)
            bank_f[c * k : c * k + n] = feats[pick]
            bank_e[c * k : c * k + n] = embs[pick]
            valid[c * k : c * k + n] = 1.0
            counts[self.class_names[c]] = n
        self.bank.fill(
            bank_f,
            bank_e,
            valid,
            self._edges,
            self.head,
            self.signed_edges,
            self.self_weight,
        )
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

    def build_memory(self, batches, targets=None) -> None:
        """Fills the nearest graph's memory from batches of training images (no
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
