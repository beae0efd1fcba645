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
    _FRACTION_UP_TO_1,
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
    signed_edges: bool = _f(False, "Opposite edges weigh -1 instead of +1 (ablation).")
    adj_loss_weight: float = _f(
        0.1, "alpha, the weight of Adj_loss (0: off).", check=_NON_NEGATIVE
    )
    adj_reduction: str = _f(
        "mean", "Adj_loss reduction: the paper's sum, or mean.", ("sum", "mean")
    )
    isolated_ce_weight: float = _f(
        1.0,
        "beta: weight of an auxiliary cross-entropy on the isolated logits (A = I, "
        "the same head): the loss is (CE_graph + beta CE_isolated) / (1 + beta) "
        "+ alpha Adj_loss. 0: the paper's loss.",
        check=_NON_NEGATIVE,
    )
    neighbour_target_weight: float = _f(
        0.0,
        "lambda: each image's cross-entropy target is (1 - lambda) its label + "
        "lambda the mean prediction of its similar graph neighbours (their "
        "isolated softmax, no gradient), once the graph is on; an image with no "
        "neighbour keeps its label. 0: the label alone.",
        check=_FRACTION_BELOW_1,
    )
    neighbour_target_scope: str = _f(
        "both",
        "Which cross-entropies --neighbour_target_weight mixes the targets of: "
        "both (the graph's and the one on each image alone), or isolated (the "
        "one on each image alone: the graph's keeps the stored labels, so "
        "that its edges still learn from them).",
        ("both", "isolated"),
    )
    neighbour_label_filter: bool = _f(
        False,
        "Once the graph is on, leave out of the loss each image whose label its "
        "graph disputes: its own isolated prediction and the mean prediction of "
        "its similar batch neighbours both name another class (a guard against "
        "wrong labels). The kept images' mean is the batch's loss.",
    )
    neighbour_label_filter_confidence: float = _f(
        0.0,
        "With --neighbour_label_filter, a label is disputed only when the own "
        "prediction and the neighbours' mean each give the class they name at "
        "least this probability (0: any other class named disputes it).",
        check=_FRACTION_BELOW_1,
    )
    neighbour_label_filter_share: float = _f(
        1.0,
        "With --neighbour_label_filter, at most this share of each class's images "
        "in a batch (by label, rounded down) is left out, those whose label their "
        "own and their neighbours' predictions find least likely first, so the "
        "filter cannot grow with the network's own mistakes (1: no bound).",
        check=_FRACTION_UP_TO_1,
    )
    neighbour_feature_grad: bool = _f(
        True,
        "The graph cross-entropy's gradient reaches the neighbours' features (the "
        "paper). False: each node's graph logits train its own features only "
        "(its neighbours' enter as constants; the edges still learn).",
    )
    graph_target_mixing: bool = _f(
        False,
        "The graph cross-entropy's target for each node is its neighbours' "
        "labels mixed by the same normalised adjacency that mixes their "
        "features (its row of Â times the targets, summed to 1), not its own "
        "label alone: the head learns each mixed feature with the labels it "
        "mixes. The cross-entropy on each image alone keeps its own label. "
        "Needs unsigned edges.",
    )
    graph_backbone_grad: bool = _f(
        False,
        "True: the graph's cross-entropy and Adj_loss train the backbone (the "
        "paper). False: they do not reach the backbone, which "
        "learns from CE_isolated alone, at full weight (the loss's value is "
        "unchanged). The paper's loss is --isolated_ce_weight=0 "
        "--graph_backbone_grad=true --graph_head_grad=true.",
    )
    graph_head_grad: bool = _f(
        False,
        "True: the graph's cross-entropy trains the head (the paper). False: it "
        "trains the edges (the embedding) only, and the head and the backbone "
        "learn from CE_isolated alone, at full weight, as the linear twin's do "
        "(the loss's value is unchanged). False needs "
        "--graph_backbone_grad=false; the paper's loss is --isolated_ce_weight=0 "
        "--graph_backbone_grad=true --graph_head_grad=true.",
    )
    self_weight: float = _f(
        0.0,
        "alpha: each node keeps alpha of its own row, Â becomes alpha I + "
        "(1 - alpha) Â, in training and in every served graph (0: eq. 8).",
        check=_FRACTION_BELOW_1,
    )
    bank_per_class: int = _f(
        16, "Reference-bank embeddings per class.", check=_AT_LEAST_1
    )
    context_size: int = _f(
        0,
        "Training images in the context graph's reference context (0: a training "
        "graph's nodes minus one, so that each query completes a training batch).",
        check=_NON_NEGATIVE_INT,
    )
    context_sets: int = _f(
        1,
        "Reference contexts a query is classified in; their logits are averaged.",
        check=_AT_LEAST_1,
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
        "(label propagation; 0: the graph's alone, the default until 2026-12-05).",
        check=_FRACTION_BELOW_1,
    )
    nearest_memory: int = _f(
        0,
        "Training images the nearest graph stores in the model (each one's "
        "embedding and isolated logits), drawn with the class prior and the run's "
        "seed; 0: every training image.",
        check=_NON_NEGATIVE_INT,
    )
    inference_graph: str = _f(
        "nearest",
        "Inference graph: nearest (each image joined to its nearest_k most similar "
        "stored training images), context (each image completes a training-sized "
        "batch of stored training images), bank (a class-balanced bank), batch (the "
        "request's images) or isolated (A = I); eval also takes all (side by side).",
        ("nearest", "context", "bank", "batch", "isolated", "all"),
    )
    num_classes: int = _f(0, "Classes (0: from the data set).", check=_NON_NEGATIVE_INT)
