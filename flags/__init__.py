"""Command-line flags of `run.py` and their mapping to `ean_tf.config.Config`.

Every config field is a flag of the same name, defined here from the field's type and
its `help`/`choices` metadata, so a flag and its field can never drift apart. Only
`run.py` imports this package (as `import flags as ean_flags`, never next to
`from absl import flags` under the same name).
"""

from __future__ import annotations

import dataclasses

from absl import flags as absl_flags

from ean_tf import config as config_lib

MODES = (
    "prepare",
    "train",
    "eval",
    "predict",
    "export",
    "pretrain_generator",
    "visualize",
    "convert_weights",
    "robustness",
    "describe",
)

FLAGS = absl_flags.FLAGS

MODE = absl_flags.DEFINE_enum("mode", "train", MODES, "What to run.")
CONFIG = absl_flags.DEFINE_enum(
    "config",
    "default",
    list(config_lib.PRESETS),
    "Named preset; flags set explicitly override it.",
)
SHOW_TF_LOGS = absl_flags.DEFINE_bool(
    "show_tf_logs",
    False,
    "Show TensorFlow's C++ start-up and info logs.",
)
CHECKPOINT = absl_flags.DEFINE_string(
    "checkpoint",
    "",
    "Model for eval/predict/export (empty: <run_dir>/model.keras).",
)
OUTPUT = absl_flags.DEFINE_string("output", "", "Output path of a mode, if any.")


def _define(name: str, f: dataclasses.Field) -> absl_flags.FlagHolder:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    help_ = f.metadata.get("help", name)
    choices = f.metadata.get("choices")
    if isinstance(default, bool):
        return absl_flags.DEFINE_bool(name, default, help_)
    if isinstance(default, str) and choices:
        return absl_flags.DEFINE_enum(name, default, list(choices), help_)
    if isinstance(default, int) and choices:
        return absl_flags.DEFINE_enum(
            name, str(default), [str(c) for c in choices], help_
        )
    if isinstance(default, int):
        return absl_flags.DEFINE_integer(name, default, help_)
    if isinstance(default, float):
        return absl_flags.DEFINE_float(name, default, help_)
    if isinstance(default, tuple):
        return absl_flags.DEFINE_list(name, [str(v) for v in default], help_)
    return absl_flags.DEFINE_string(name, default, help_)


FIELD_FLAGS: dict[str, absl_flags.FlagHolder] = {
    name: _define(name, f) for name, (_, f) in config_lib.field_index().items()
}


def _coerce(name: str, value, f: dataclasses.Field):
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, int) and isinstance(value, str):
        return int(value)
    if isinstance(default, tuple):
        try:
            return tuple(int(v) for v in value)
        except ValueError:
            raise config_lib.ConfigError(
                f"--{name}: expected a comma-separated list of ints. "
                f"Received: {name}={','.join(value)!r}"
            ) from None
    return value


def config_from_flags() -> config_lib.Config:
    """The preset named by --config, with every explicitly set flag applied on top."""
    index = config_lib.field_index()
    overrides = {
        name: _coerce(name, holder.value, index[name][1])
        for name, holder in FIELD_FLAGS.items()
        if FLAGS[name].present
    }
    return config_lib.make_config(CONFIG.value, **overrides)
