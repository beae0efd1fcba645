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
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from ean_tf.config.fields import BACKBONES, DATASETS, INPUT_NORMS, ConfigError
from ean_tf.config.presets import PRESETS
from ean_tf.config.sections import (
    DataConfig,
    EvaluationConfig,
    ExportConfig,
    GeneratorConfig,
    ModelConfig,
    PredictConfig,
    PrepareConfig,
    TrainConfig,
)

# The ModelConfig fields that only EAN's graph head reads (a linear-head run
# ignores them).
GRAPH_FIELDS = (
    "embedding_dim",
    "embedding_norm",
    "gcn_units",
    "gcn_dropout",
    "tau1",
    "tau2",
    "temperature",
    "straight_through",
    "adj_loss_weight",
    "adj_reduction",
    "objective",
    "nearest_k",
    "nearest_label_weight",
    "nearest_memory",
    "inference_graph",
)
# Per section, every field a linear-head run never reads: GRAPH_FIELDS, and the
# graph's schedule. None of them tells two linear runs apart.
LINEAR_IGNORED = {
    "model": frozenset(GRAPH_FIELDS),
    "train": frozenset({"adj_warmup_epochs", "cross_replica_graph"}),
}
# The GeneratorConfig fields only G's pre-training (--mode=pretrain_generator)
# reads: they do not tell apart two runs that do not start from a pre-trained G.
PRETRAIN_FIELDS = frozenset(
    {"identity_data_dir", "generator_epochs", "lambda_adv", "lambda_id", "lambda_views"}
)
# Model fields that choose what a trained model answers with, not what is
# trained: a run resumes with other values, and a result evaluated with other
# values is the same run.
EVALUATION_FIELDS = frozenset({"inference_graph", "nearest_k", "nearest_label_weight"})
__all__ = [
    "BACKBONES",
    "DATASETS",
    "EVALUATION_FIELDS",
    "GRAPH_FIELDS",
    "INPUT_NORMS",
    "LINEAR_IGNORED",
    "PRETRAIN_FIELDS",
    "PRESETS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "ExportConfig",
    "GeneratorConfig",
    "ModelConfig",
    "PredictConfig",
    "PrepareConfig",
    "TrainConfig",
    "config_for_run",
    "field_index",
    "make_config",
    "replace",
    "validate",
]


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)

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
    "evaluation": EvaluationConfig,
    "predict": PredictConfig,
    "prepare": PrepareConfig,
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
    return _from_fields({**PRESETS[preset], **overrides})


def _from_fields(values: dict[str, Any], source: str = "") -> Config:
    """A `Config` from field (= flag) values; the others keep their defaults."""
    index = field_index()
    per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in values.items():
        if name not in index:
            where = f"{source}: " if source else ""
            raise ConfigError(f"{where}Unknown config field {name!r}.")
        section, _ = index[name]
        per_section[section][name] = value
    return Config(**{s: SECTIONS[s](**kw) for s, kw in per_section.items()})


def config_for_run(run_dir: str, /, **overrides: Any) -> Config:
    """The configuration a training run saved in `<run_dir>/config.json`, with
    `overrides` (by flag name) applied over it. `run_dir` is the folder given
    here, wherever the run was trained (a moved folder keeps its run).

    Raises `ConfigError` naming the file when it is missing or unreadable.
    """
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as f:
            saved = json.load(f)
        values = {name: v for section in saved.values() for name, v in section.items()}
    except (OSError, ValueError, AttributeError) as error:
        raise ConfigError(f"{path}: not a run's configuration ({error})") from None
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return _from_fields({**values, **overrides, "run_dir": run_dir}, path)


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


# Float fields that may be infinite, and the infinity each may take.
INFINITE_OK = {"tau2": -math.inf}


def validate(config: Config) -> None:
    """Raises `ConfigError` naming the first flag whose value is out of range:
    each field against its declared choices and range (a float finite, unless
    `INFINITE_OK`), then the rules that relate two fields."""
    for name, (section, f) in field_index().items():
        value = getattr(getattr(config, section), name)
        if isinstance(value, float) and not math.isfinite(value):
            _check(value == INFINITE_OK.get(name), name, "a finite float", value)
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
    if m.head == "ean" and t.adj_warmup_epochs >= t.epochs:  # the graph is on
        raise ConfigError(
            f"--adj_warmup_epochs={t.adj_warmup_epochs}: expected fewer than "
            f"--epochs={t.epochs} (else the graph is never used and every graph is "
            f"the isolated network); pass --adj_warmup_epochs={t.epochs - 1} or "
            f"--epochs={t.adj_warmup_epochs + 1}"
        )
