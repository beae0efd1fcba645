"""The GCN head (eq. 7-8) on Spektral's `GCNConv`, in single mode.

Spektral 1.3.1 predates Keras 3: its `GCNConv.call` multiplies the output by
`mask[0]` whenever a mask is passed, and Keras 3 passes `[None, None]` for the two
inputs, which fails. `GCNConv` below is Spektral's layer with that one difference:
an all-None mask is dropped. Node features (N, F) and a dense normalised adjacency
(N, N) in, (N, units) out: output = activation(Â X W + b).
"""

from __future__ import annotations

import keras
from spektral.layers import GCNConv as _SpektralGCNConv


@keras.saving.register_keras_serializable(package="ean_tf")
class GCNConv(_SpektralGCNConv):
    """Spektral's GCNConv, tolerant of the `[None, None]` mask Keras 3 passes."""

    def call(self, inputs, mask=None):
        if isinstance(mask, (list, tuple)) and all(m is None for m in mask):
            mask = None
        return super().call(inputs, mask=mask)


class GCNHead(keras.layers.Layer):
    """Stacked GCNConv layers: hidden widths with ReLU and dropout, then C logits.

    Inputs: features (N, F) and normalised adjacency Â (N, N). Output: logits
    (N, num_classes), float32.
    """

    def __init__(self, units, num_classes: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"Expected num_classes >= 2. Received: {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Expected dropout in [0, 1). Received: dropout={dropout}")
        self.units = tuple(int(u) for u in units)
        self.num_classes = num_classes
        self.dropout_rate = dropout
        self.convs = [
            GCNConv(u, activation="relu", name=f"gcn_{i}", dtype=self.dtype_policy)
            for i, u in enumerate(self.units)
        ]
        self.convs.append(
            GCNConv(num_classes, name=f"gcn_{len(self.units)}", dtype=self.dtype_policy)
        )
        self.drops = [
            keras.layers.Dropout(dropout, name=f"gcn_dropout_{i}")
            for i in range(len(self.convs))
        ]

    def build(self, input_shape):
        dim = input_shape[0][-1]
        for conv in self.convs:
            conv.build([(None, dim), (None, None)])
            dim = conv.channels
        self.built = True

    def call(self, inputs, training=None):
        x, a_hat = inputs
        for drop, conv in zip(self.drops, self.convs, strict=True):
            x = conv([drop(x, training=training), a_hat])  # (N, units)
        return keras.ops.cast(x, "float32")  # (N, C)

    def transform(self, i: int, mixed):
        """Layer i applied to already aggregated features (Â X): act(mixed W + b),
        (N, d_i) -> (N, d_{i+1})."""
        conv = self.convs[i]
        h = keras.ops.matmul(mixed, keras.ops.cast(conv.kernel, mixed.dtype))
        if conv.use_bias:
            h = h + keras.ops.cast(conv.bias, h.dtype)
        return conv.activation(h)

    def hidden_outputs(self, x):
        """The hidden layers' outputs with A = I and no dropout, (N, d) each."""
        outs = []
        for i in range(len(self.convs) - 1):
            x = self.transform(i, x)
            outs.append(x)
        return outs

    def get_config(self):
        return {
            **super().get_config(),
            "units": list(self.units),
            "num_classes": self.num_classes,
            "dropout": self.dropout_rate,
        }
