"""Typed, frozen configuration and named presets.

The library never reads command-line flags: it takes a `Config`. Every field below is
also a flag of `run.py` with the same name (see `flags/`), and its `help` and `choices`
metadata are the flag's help and accepted values. Presets are written as deltas of the
default (`PRESETS`), and a flag set explicitly on the command line wins over a preset.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ean_tf.presets import PRESETS


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the flag."""


def _f(default, help: str, choices: tuple | None = None, check=None, **kw):
    """A config field: its default, its flag's help, and what it accepts: one of
    `choices`, or values passing `check`, a (predicate, "what is expected") pair."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if check is not None:
        meta["check"] = check
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta, **kw)


# Ranges, declared in the fields' metadata below (`check=`).
def _at_least(low):
    kind = "an int" if isinstance(low, int) else "a float"
    return (lambda v: v >= low, f"{kind} >= {low}")


def _range(low, high):
    kind = "an int" if isinstance(low, int) else "a float"
    return (lambda v: low <= v <= high, f"{kind} in [{low}, {high}]")


_AT_LEAST_1 = _at_least(1)
_NON_NEGATIVE_INT = _at_least(0)
_NON_NEGATIVE = _at_least(0.0)
_POSITIVE = (lambda v: v > 0, "a float > 0")
_FRACTION_BELOW_1 = (lambda v: 0.0 <= v < 1.0, "a float in [0, 1)")
_FRACTION_UP_TO_1 = (lambda v: 0.0 < v <= 1.0, "a float in (0, 1]")
_PROBABILITY = _range(0.0, 1.0)
_POSITIVE_INTS = (lambda v: all(int(u) > 0 for u in v), "positive ints")
_NON_EMPTY = (bool, "a non-empty path")


DATASETS = ("default", "ferplus", "rafdb", "affectnet", "folder", "csv", "tfrecord")
BACKBONES = (
    "resnet18",
    "resnet34",
    "vgg13",
    "vgg16",
    "alexnet",
    "vgg16_face",
    "resnet50_face",
)
INPUT_NORMS = ("auto", "symmetric", "imagenet", "vggface1", "vggface2")


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


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "export": ExportConfig,
    "generator": GeneratorConfig,
}


def field_index() -> dict[str, tuple[str, dataclasses.Field]]:
    """Maps each field name (= flag name) to (section, dataclass field)."""
    index = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name not in index, f"duplicate config field {f.name}"
            index[f.name] = (section, f)
    return index


def make_config(preset: str = "default", **overrides: Any) -> Config:
    """Builds a `Config` from a named preset and field overrides.

    >>> make_config("tiny", epochs=3).train.epochs
    3
    """
    if preset not in PRESETS:
        raise ConfigError(
            f"Unknown --config={preset!r}. Expected one of: {', '.join(PRESETS)}."
        )
    values = {**PRESETS[preset], **overrides}
    index = field_index()
    per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in values.items():
        if name not in index:
            raise ConfigError(f"Unknown config field {name!r}.")
        section, _ = index[name]
        per_section[section][name] = value
    return Config(**{s: SECTIONS[s](**kw) for s, kw in per_section.items()})


def replace(config: Config, **overrides: Any) -> Config:
    """Returns a copy of `config` with fields (by flag name) replaced."""
    index = field_index()
    per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in overrides.items():
        if name not in index:
            raise ConfigError(f"Unknown config field {name!r}.")
        per_section[index[name][0]][name] = value
    return Config(
        **{
            s: dataclasses.replace(getattr(config, s), **kw)
            for s, kw in per_section.items()
        }
    )


def _check(ok: bool, name: str, expected: str, value: Any):
    if not ok:
        raise ConfigError(f"--{name}: expected {expected}. Received: {name}={value!r}")


def validate(config: Config) -> None:
    """Raises `ConfigError` naming the first flag whose value is out of range:
    each field against its declared choices and range, then the rules that
    relate two fields."""
    for name, (section, f) in field_index().items():
        value = getattr(getattr(config, section), name)
        choices = f.metadata.get("choices")
        if choices is not None:
            _check(value in choices, name, f"one of {list(choices)}", value)
        if "check" in f.metadata:
            ok, expected = f.metadata["check"]
            _check(ok(value), name, expected, value)
    m, t, g = config.model, config.train, config.generator
    kinds = [k.strip() for k in g.view_kinds.split(",") if k.strip()]
    _check(
        bool(kinds) and all(k in ("occlusion", "illumination", "pose") for k in kinds),
        "view_kinds",
        "a comma-separated list of occlusion, illumination, pose",
        g.view_kinds,
    )
    _check(m.tau2 < m.tau1, "tau2", f"a float below tau1={m.tau1}", m.tau2)
    if m.head == "ean":  # otherwise the graph is never switched on
        _check(
            t.adj_warmup_epochs < t.epochs,
            "adj_warmup_epochs",
            f"fewer than --epochs={t.epochs} (else the graph is never used and "
            "every graph is the isolated network)",
            t.adj_warmup_epochs,
        )
