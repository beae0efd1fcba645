"""The model's section of the configuration (`ModelConfig`): the backbone, the
graph and its losses, and the served graphs. Each field is a flag of `run.py` of
the same name; its metadata holds the flag's help, choices and range (see
`fields.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ean_tf.config.fields import (
    _AT_LEAST_1,
    _FRACTION_BELOW_1,
    _NON_NEGATIVE,
    _NON_NEGATIVE_INT,
    _POSITIVE,
    _POSITIVE_INTS,
    BACKBONES,
    INPUT_NORMS,
    _at_least,
    _f,
    _range,
)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = _f(
        "resnet18",
        "Backbone CNN G_enc. vgg16_face and resnet50_face have the VGGFace models' "
        "fixed layers (--stem and --width do not apply to them).",
        BACKBONES,
    )
    stem: str = _f(
        "small_s2",
        "Backbone stem: imagenet (7x7/2 + max-pool), small (3x3/1) or small_s2 (3x3/2)"
        ", no max-pool for the small ones.",
        ("imagenet", "small", "small_s2"),
    )
    width: int = _f(
        32, "Channels of the first backbone stage (64 = standard).", check=_at_least(4)
    )
    backbone_weights: str = _f(
        "",
        "Backbone weights to start from: a Keras .weights.h5, a PyTorch ResNet "
        "checkpoint (.pth/.pth.tar; needs torch) or a VGGFace .h5 file.",
    )
    input_norm: str = _f(
        "auto",
        "What the backbone expects as input: symmetric ([-1, 1] RGB), imagenet "
        "(torchvision mean/std, for PyTorch checkpoints), vggface1/vggface2 (BGR "
        "minus the mean pixel); auto: vggface for the face backbones, else "
        "symmetric.",
        INPUT_NORMS,
    )
    grayscale: bool = _f(
        False,
        "Turn every input grey (luma, in all three channels) as the model's first "
        "operation: for grey training data (FERPlus), so that colour photos look "
        "like it.",
    )
    head: str = _f(
        "ean",
        "Classifier head: the GCN of EAN or a linear baseline.",
        ("ean", "linear"),
    )
    embedding_dim: int = _f(
        128, "Size of the linear embedding the graph is built on.", check=_at_least(2)
    )
    embedding_norm: str = _f(
        "batchnorm",
        "Normalisation of the embedding before the cosine: batchnorm "
        "centres it (cosines spread over [-1, 1]); none is the plain linear map.",
        ("batchnorm", "none"),
    )
    gcn_units: tuple = _f(
        (),
        "Hidden GCN layer widths (the last layer is C; none: one GCN layer, which "
        "cannot die at lr 0.1 the way a hidden ReLU layer does).",
        check=_POSITIVE_INTS,
    )
    gcn_dropout: float = _f(
        0.0, "Dropout before each GCN layer.", check=_FRACTION_BELOW_1
    )
    tau1: float = _f(
        0.5, "Similar-edge threshold: A=1 where cos >= tau1.", check=_range(-1.0, 1.0)
    )
    tau2: float = _f(
        -math.inf, "Opposite-edge threshold: A=1 where cos <= tau2 (-inf: none)."
    )
    temperature: float = _f(
        0.1, "Temperature T of the relaxed adjacency.", check=_POSITIVE
    )
    straight_through: bool = _f(
        True, "Let gradients flow through the graph the GCN sees (straight-through)."
    )
    adj_loss_weight: float = _f(
        0.1, "alpha, the weight of Adj_loss (0: off).", check=_NON_NEGATIVE
    )
    adj_reduction: str = _f(
        "mean", "Adj_loss reduction: the paper's sum, or mean.", ("sum", "mean")
    )
    objective: str = _f(
        "split",
        "What trains what (ean_tf/models/objective.py). split: the loss is "
        "CE_isolated + CE_graph / 2 + alpha Adj_loss; the cross-entropy on each "
        "image alone (A = I) trains the backbone and the head, and the graph's "
        "cross-entropy and Adj_loss train the embedding the edges are built on. "
        "paper: eq. 6, CE_graph + alpha Adj_loss, trains every part.",
        ("split", "paper"),
    )
    nearest_k: int = _f(
        4,
        "Neighbours of a query in the nearest graph: its k most similar stored "
        "training images (cosine in the graph's embedding, those >= tau1).",
        check=_AT_LEAST_1,
    )
    nearest_label_weight: float = _f(
        0.25,
        "w: in the nearest graph a query's probabilities are (1 - w) its graph's "
        "and w the mean training target of the stored images it is joined to "
        "(label propagation; 0: the graph's alone).",
        check=_FRACTION_BELOW_1,
    )
    nearest_memory: int = _f(
        0,
        "Training images the nearest graph stores in the model (each one's "
        "embedding, isolated logits and target), drawn with the class prior and "
        "the run's seed; 0: every training image.",
        check=_NON_NEGATIVE_INT,
    )
    inference_graph: str = _f(
        "nearest",
        "Inference graph: nearest (served: each image joined to its nearest_k most "
        "similar stored training images; an answer never depends on the rest of "
        "the request), batch (the request's images form the graph, the paper's "
        "protocol: answers depend on the batch) or isolated (A = I, the network "
        "alone); --mode=eval also takes all (side by side).",
        ("nearest", "batch", "isolated", "all"),
    )
    num_classes: int = _f(0, "Classes (0: from the data set).", check=_NON_NEGATIVE_INT)
