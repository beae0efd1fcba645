"""Typed, frozen configuration and named presets.

The library never reads command-line flags: it takes a `Config`. Every field of its
sections (`sections.py`, `ModelConfig` in `model.py`) is also a flag of `run.py`
with the same name (see `flags/`), and its `help` and `choices` metadata are the
flag's help and accepted values (`fields.py`). Presets are written as deltas of
the default (`PRESETS`), and a flag set explicitly on the command line wins over a
preset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ean_tf.config.fields import BACKBONES, DATASETS, INPUT_NORMS, ConfigError
from ean_tf.config.sections import (
    DataConfig,
    ExportConfig,
    GeneratorConfig,
    ModelConfig,
    TrainConfig,
)
from ean_tf.presets import PRESETS

# The ModelConfig fields that only EAN's graph head reads (a linear-head run
# ignores them), `context_size` aside.
GRAPH_FIELDS = (
    "embedding_dim",
    "embedding_norm",
    "gcn_units",
    "gcn_dropout",
    "tau1",
    "tau2",
    "temperature",
    "straight_through",
    "signed_edges",
    "adj_loss_weight",
    "adj_reduction",
    "isolated_ce_weight",
    "neighbour_target_weight",
    "neighbour_target_scope",
    "neighbour_label_filter",
    "neighbour_label_filter_confidence",
    "neighbour_label_filter_share",
    "neighbour_feature_grad",
    "graph_target_mixing",
    "graph_backbone_grad",
    "graph_head_grad",
    "self_weight",
    "bank_per_class",
    "context_sets",
    "nearest_k",
    "nearest_label_weight",
    "nearest_memory",
    "inference_graph",
)
# Per section, every field a linear-head run never reads: GRAPH_FIELDS, and the
# graph's size and schedule. None of them tells two linear runs apart.
LINEAR_IGNORED = {
    "model": frozenset(GRAPH_FIELDS) | {"context_size"},
    "train": frozenset(
        {"adj_warmup_epochs", "label_filter_warmup_epochs", "cross_replica_graph"}
    ),
}
# Model fields that choose what a trained model answers with, not what is
# trained: a run resumes with other values, and a result evaluated with other
# values is the same run.
EVALUATION_FIELDS = frozenset({"inference_graph", "nearest_k", "nearest_label_weight"})
# (section, field) -> what a config written before the field existed was trained
# with, for the fields whose default has changed since: a saved model, a run
# folder or a result file without the field means this value, not today's default.
FIRST_DEFAULTS = {
    ("model", "isolated_ce_weight"): 0.0,  # until 2026-12-01
    ("model", "graph_backbone_grad"): True,  # until 2026-12-02
    ("model", "nearest_label_weight"): 0.0,  # until 2026-12-05
    ("model", "graph_head_grad"): True,  # until 2026-12-05
}


def with_first_defaults(config: dict) -> dict:
    """A copy of `config` as JSON holds it (section -> field -> value), each field
    of `FIRST_DEFAULTS` that it lacks set to its first default."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for (section, name), before in FIRST_DEFAULTS.items():
        out.setdefault(section, {}).setdefault(name, before)
    return out


__all__ = [
    "BACKBONES",
    "DATASETS",
    "EVALUATION_FIELDS",
    "FIRST_DEFAULTS",
    "GRAPH_FIELDS",
    "INPUT_NORMS",
    "LINEAR_IGNORED",
    "PRESETS",
    "Config",
    "ConfigError",
    "DataConfig",
    "ExportConfig",
    "GeneratorConfig",
    "ModelConfig",
    "TrainConfig",
    "field_index",
    "make_config",
    "replace",
    "with_first_defaults",
    "validate",
]


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
    _check(
        t.batch_size % config.data.group_size == 0,
        "group_size",
        f"a divisor of --batch_size={t.batch_size}",
        config.data.group_size,
    )
    if m.head == "ean":  # otherwise the graph is never switched on
        _check(
            t.adj_warmup_epochs < t.epochs,
            "adj_warmup_epochs",
            f"fewer than --epochs={t.epochs} (else the graph is never used and "
            "every graph is the isolated network)",
            t.adj_warmup_epochs,
        )
        _check(
            not m.neighbour_label_filter or t.label_filter_warmup_epochs < t.epochs,
            "label_filter_warmup_epochs",
            f"fewer than --epochs={t.epochs} (else the filter never starts)",
            t.label_filter_warmup_epochs,
        )
        _check(
            m.graph_head_grad or not m.graph_backbone_grad,
            "graph_head_grad",
            "true with --graph_backbone_grad=true (the graph's terms would train "
            "the backbone through a head they do not train; the paper's way is "
            "--graph_backbone_grad=true --graph_head_grad=true)",
            m.graph_head_grad,
        )
        _check(
            m.neighbour_target_scope == "both" or m.isolated_ce_weight > 0,
            "neighbour_target_scope",
            "both with --isolated_ce_weight=0 (isolated mixes the targets of the "
            "cross-entropy on each image alone, which is then off)",
            m.neighbour_target_scope,
        )
        _check(
            not (m.graph_target_mixing and m.signed_edges),
            "graph_target_mixing",
            "false with --signed_edges (a negative edge would mix in a negative "
            "share of a label)",
            m.graph_target_mixing,
        )
        _check(
            m.graph_backbone_grad or m.isolated_ce_weight > 0,
            "isolated_ce_weight",
            "a weight above 0 with --graph_backbone_grad=false, the default "
            "(else nothing trains the backbone; the paper's loss is "
            "--isolated_ce_weight=0 --graph_backbone_grad=true "
            "--graph_head_grad=true)",
            m.isolated_ce_weight,
        )
