"""The configuration's sections. Each field is a flag of `run.py` of the same name;
its metadata holds the flag's help, choices and range (see `fields.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ean_tf.config.fields import (
    _AT_LEAST_1,
    _FRACTION_BELOW_1,
    _FRACTION_UP_TO_1,
    _NON_EMPTY,
    _NON_NEGATIVE,
    _NON_NEGATIVE_INT,
    _POSITIVE,
    _POSITIVE_INTS,
    _PROBABILITY,
    BACKBONES,
    DATASETS,
    INPUT_NORMS,
    _at_least,
    _f,
    _range,
)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f("default", "Data set reader.", DATASETS)
    data_dir: str = _f(
        "",
        "Root folder of the data set. For `default`, where the generated images are "
        "cached (empty: ~/.cache/ean_tf).",
    )
    image_size: int = _f(
        48, "Square input size in pixels after resizing.", check=_range(16, 1024)
    )
    ferplus_label_mode: str = _f(
        "majority",
        "FERPlus label scheme, as in FERPlus's ferplus.py.",
        ("majority", "probability", "crossentropy", "multi_target"),
    )
    ferplus_classes: int = _f(8, "FERPlus classes: 8, or 7 without contempt.", (7, 8))
    affectnet_classes: int = _f(8, "AffectNet classes: 7 or 8 (with contempt).", (7, 8))
    balanced_sampling: bool = _f(False, "Sample training classes uniformly.")
    group_size: int = _f(
        1,
        "Grouped training batches: each image drawn is joined by group_size - 1 "
        "more of its (training) label, so the batch graph has same-class pairs "
        "to learn from (1: off). Divides --batch_size.",
        check=_AT_LEAST_1,
    )
    train_split: str = _f("", "Training split name (empty: the reader's own).")
    val_split: str = _f("", "Validation split name (empty: the reader's own).")
    noise_rate: float = _f(
        0.0,
        "Fraction of training labels flipped (tables 3-4).",
        check=_FRACTION_BELOW_1,
    )
    noise_seed: int = _f(0, "Seed choosing which labels flip and to what.")
    skip_bad_images: bool = _f(
        False,
        "Skip unreadable images and list them in a report instead of failing "
        "(decodes every image first, whatever --validate_images says).",
    )
    no_face: str = _f(
        "center",
        "--mode=prepare, image without a face: keep a "
        "centre crop, or skip it (both are listed in the manifest).",
        ("center", "skip"),
    )
    validate_images: bool = _f(
        True, "Decode every image once before training to catch corrupt files."
    )
    random_flip: bool = _f(True, "Random horizontal flip while training.")
    random_crop_pad: int = _f(
        4, "Pad by this many pixels, then crop back (0: off).", check=_NON_NEGATIVE_INT
    )
    random_erasing: float = _f(
        0.0, "Probability of random erasing while training.", check=_PROBABILITY
    )
    cache: bool = _f(False, "Cache decoded images in memory.")
    deterministic: bool = _f(False, "Deterministic input order and augmentation.")
    default_train_size: int = _f(
        2800, "Images in the built-in training split.", check=_at_least(8)
    )
    default_val_size: int = _f(
        700, "Images in the built-in validation split.", check=_AT_LEAST_1
    )
    default_identities: int = _f(
        40, "Identities in the built-in data.", check=_AT_LEAST_1
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
    neighbour_feature_grad: bool = _f(
        True,
        "The graph cross-entropy's gradient reaches the neighbours' features (the "
        "paper). False: each node's graph logits train its own features only "
        "(its neighbours' enter as constants; the edges still learn).",
    )
    graph_backbone_grad: bool = _f(
        False,
        "True: the graph's cross-entropy and Adj_loss train the backbone (the "
        "paper). False: they train the embedding and head only; the backbone "
        "learns from CE_isolated alone, at full weight (the loss's value is "
        "unchanged). The paper's loss is --isolated_ce_weight=0 "
        "--graph_backbone_grad=true.",
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
        "Training images in the served graph's reference context (0: a training "
        "graph's nodes minus one, so that each query completes a training batch).",
        check=_NON_NEGATIVE_INT,
    )
    context_sets: int = _f(
        1,
        "Reference contexts a query is classified in; their logits are averaged.",
        check=_AT_LEAST_1,
    )
    inference_graph: str = _f(
        "context",
        "Inference graph: context (each image completes a training-sized batch of "
        "stored training images), bank (a class-balanced bank), batch (the "
        "request's images) or isolated (A = I); eval also takes all (side by side).",
        ("context", "bank", "batch", "isolated", "all"),
    )
    num_classes: int = _f(0, "Classes (0: from the data set).", check=_NON_NEGATIVE_INT)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(10, "Training epochs.", check=_AT_LEAST_1)
    batch_size: int = _f(64, "Global batch size.", check=_AT_LEAST_1)
    learning_rate: float = _f(0.1, "Peak learning rate of SGD.", check=_POSITIVE)
    momentum: float = _f(0.9, "SGD momentum.", check=_FRACTION_BELOW_1)
    nesterov: bool = _f(False, "Nesterov momentum.")
    weight_decay: float = _f(
        5e-4, "Decoupled weight decay of SGD.", check=_NON_NEGATIVE
    )
    lr_schedule: str = _f(
        "step",
        "step: divide by lr_decay_factor every "
        "lr_decay_epochs; cosine: cosine to zero.",
        ("step", "cosine"),
    )
    lr_decay_epochs: int = _f(20, "Epochs between step decays.", check=_AT_LEAST_1)
    lr_decay_factor: float = _f(0.1, "Step-decay factor.", check=_FRACTION_UP_TO_1)
    lr_warmup_epochs: int = _f(
        0, "Linear learning-rate warm-up epochs.", check=_NON_NEGATIVE_INT
    )
    label_smoothing: float = _f(
        0.0, "Label smoothing of the cross-entropy.", check=_FRACTION_BELOW_1
    )
    adj_warmup_epochs: int = _f(
        3,
        "Epochs with A = I and Adj_loss off before the graph is used (paper: 50); "
        "must be below --epochs.",
        check=_NON_NEGATIVE_INT,
    )
    steps_per_epoch: int = _f(
        0, "Steps per epoch (0: one pass over the data).", check=_NON_NEGATIVE_INT
    )
    checkpoint_every_steps: int = _f(
        0,
        "Also checkpoint every this many steps within an epoch (0: epoch ends).",
        check=_NON_NEGATIVE_INT,
    )
    seed: int = _f(0, "Seed for weights, shuffling and augmentation.")
    run_dir: str = _f(
        "runs/default", "Folder for checkpoints, logs and reports.", check=_NON_EMPTY
    )
    overwrite: bool = _f(
        False,
        "--mode=train: start over in --run_dir, deleting the run there, when its "
        "configuration differs from this command's (else training stops).",
    )
    strategy: str = _f(
        "auto",
        "tf.distribute strategy.",
        ("auto", "one_device", "mirrored", "multi_worker"),
    )
    cross_replica_graph: bool = _f(
        False,
        "Gather all replicas' embeddings so the graph spans the global batch "
        "(default: each replica's graph is its local batch).",
    )
    mixed_precision: bool = _f(False, "mixed_float16 compute (GPUs).")
    jit_compile: bool = _f(False, "XLA-compile the train step (GPUs; slower on CPU).")


@dataclass(frozen=True)
class ExportConfig:
    export_dir: str = _f("exports/ean", "--mode=export: base folder of the versions.")
    export_version: int = _f(
        0, "Version number to write (0: the next free one).", check=_NON_NEGATIVE_INT
    )
    max_image_bytes: int = _f(
        10 * 1024 * 1024,
        "Largest encoded image serving_default accepts (bytes).",
        check=_AT_LEAST_1,
    )
    max_image_pixels: int = _f(
        4096 * 4096,
        "Most pixels (width x height, read from the header before decoding) of an "
        "image serving_default accepts.",
        check=_AT_LEAST_1,
    )
    images: str = _f("", "--mode=predict: an image, a folder of images or a glob.")
    annotate_dir: str = _f("", "--mode=predict: also write annotated copies here.")


@dataclass(frozen=True)
class GeneratorConfig:
    """The invariant feature generator (paper section 2.2, docs/DESIGN.md 1.3)."""

    identity_data_dir: str = _f(
        "",
        "Identity data in the CFP layout (<identity>/frontal/, <identity>/profile/); "
        "empty: perturbed views of the training images (built-in data: its own "
        "identities; other data: each image its own identity).",
    )
    view_kinds: str = _f(
        "occlusion,illumination,pose",
        "Comma-separated kinds of perturbed view to make: occlusion, illumination, "
        "pose.",
    )
    generator_epochs: int = _f(
        3, "--mode=pretrain_generator: epochs.", check=_AT_LEAST_1
    )
    lambda_adv: float = _f(
        0.1, "Weight of the view-adversarial term of the G loss.", check=_NON_NEGATIVE
    )
    lambda_id: float = _f(
        0.1, "Weight of the identity term of the G loss.", check=_NON_NEGATIVE
    )
    d_learning_rate: float = _f(
        1e-3, "Adam learning rate of the discriminator D_m.", check=_POSITIVE
    )
    generator_checkpoint: str = _f(
        "",
        "--mode=train: start the backbone from the weights --mode=pretrain_generator "
        "wrote (<run_dir>/generator/backbone.weights.h5).",
    )
    generator_cotrain_weight: float = _f(
        0.0,
        "--mode=train: add the generator's adversarial term (D_m's view head, "
        "trained alongside on perturbed views of each batch) to EAN's loss with "
        "this weight (0: off).",
        check=_NON_NEGATIVE,
    )
    robustness_seed: int = _f(
        1234, "Seed of the perturbed validation copies of --mode=robustness."
    )
