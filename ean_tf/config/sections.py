"""The configuration's sections. Each field is a flag of `run.py` of the same name;
its metadata holds the flag's help, choices and range (see `fields.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from ean_tf.config.fields import (
    _AT_LEAST_1,
    _FRACTION_BELOW_1,
    _FRACTION_UP_TO_1,
    _NON_EMPTY,
    _NON_NEGATIVE,
    _NON_NEGATIVE_INT,
    _POSITIVE,
    _PROBABILITY,
    DATASETS,
    _at_least,
    _f,
    _range,
)
from ean_tf.config.model import ModelConfig

__all__ = [
    "DataConfig",
    "EvaluationConfig",
    "ExportConfig",
    "GeneratorConfig",
    "ModelConfig",
    "PredictConfig",
    "PrepareConfig",
    "TrainConfig",
]


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f("default", "Data set reader.", DATASETS)
    data_dir: str = _f(
        "",
        "Root folder of the data set. For `default`, where the generated images are "
        "cached (empty: ~/.cache/ean_tf): only an empty folder or one holding such "
        "caches; a folder holding anything else is refused, as another data set's.",
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
    train_split: str = _f("", "Training split name (empty: the reader's own).")
    val_split: str = _f(
        "",
        "Validation split name (empty: the reader's own); --mode=eval evaluates it "
        "(another split than the run's into a folder <run_dir>/eval_<split>...).",
    )
    train_size: int = _f(
        0,
        "Train on a class-stratified part of the training split of this many images "
        "(each class keeps its share; the same images for every --seed), before "
        "--noise_rate flips labels. 0: the whole split.",
        check=_NON_NEGATIVE_INT,
    )
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
    gce_q: float = _f(
        0.0,
        "With q in (0, 1]: the classification terms are the generalised "
        "cross-entropy (1 - p_y^q) / q (Zhang and Sabuncu, 2018), a loss robust "
        "to noisy labels, instead of the cross-entropy (q -> 0); 0: cross-entropy.",
        check=(lambda v: 0.0 <= v <= 1.0, "a float in [0, 1]"),
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
        "runs/default",
        "Folder for checkpoints, logs and reports. --mode=eval, predict, export, "
        "visualize and robustness start from the configuration of the run in it "
        "(its config.json); a flag given overrides that field only.",
        check=_NON_EMPTY,
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
        "image that training's image check, --mode=predict and the export's "
        "serving_default accept.",
        check=_AT_LEAST_1,
    )
    served_graph: str = _f(
        "",
        "--mode=export and --mode=predict with a .keras model: the graph to serve "
        "(empty: the one the model was saved with, its --inference_graph).",
        ("", "nearest", "batch", "isolated"),
    )
    served_label_weight: float = _f(
        -1.0,
        "--mode=eval, --mode=export and --mode=predict with a .keras model: the "
        "nearest graph's label weight to answer with (-1: the one the model was "
        "saved with, its --nearest_label_weight).",
        check=(lambda v: v == -1.0 or 0.0 <= v < 1.0, "-1 or a float in [0, 1)"),
    )


@dataclass(frozen=True)
class GeneratorConfig:
    """The invariant feature generator (paper section 2.2, docs/DESIGN.md 1.3)."""

    identity_data_dir: str = _f(
        "",
        "Identity data in the CFP layout (<identity>/frontal/, <identity>/profile/); "
        "empty: perturbed views of the training images, with the data's own "
        "identities (built-in data) or no identity term (other data).",
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
    lambda_views: float = _f(
        1.0,
        "Weight of the expression loss on the perturbed views in the G loss (0: "
        "the paper's G loss, expressions of the frontal images only).",
        check=_NON_NEGATIVE,
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


@dataclass(frozen=True)
class EvaluationConfig:
    """--mode=robustness (and the generator experiments' perturbed copies)."""

    robustness_seed: int = _f(
        1234, "Seed of the perturbed validation copies of --mode=robustness."
    )


@dataclass(frozen=True)
class PredictConfig:
    """--mode=predict."""

    images: str = _f("", "--mode=predict: an image, a folder of images or a glob.")
    annotate_dir: str = _f("", "--mode=predict: also write annotated copies here.")


@dataclass(frozen=True)
class PrepareConfig:
    """--mode=prepare, and --mode=predict's photos without a face."""

    no_face: str = _f(
        "center",
        "--mode=prepare and --mode=predict, an image without a face: keep a "
        "centre crop, or skip it (both are listed in the manifest or output).",
        ("center", "skip"),
    )
