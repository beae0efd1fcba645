"""Command-line flags of `run.py` and their mapping to `ean_tf.config.Config`.

Every config field is a flag of the same name, defined here from the field's type and
its `help`/`choices` metadata, so a flag and its field can never drift apart. Only
`run.py` imports this package (as `import flags as ean_flags`, never next to
`from absl import flags` under the same name).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys

from absl import flags as absl_flags


def _config_package():
    """`ean_tf.config`, without `ean_tf`'s own start-up (which loads TensorFlow)
    unless that has run already: the config is plain Python, so flags parse, and
    help and usage errors print, at once."""
    if "ean_tf.config" in sys.modules or "ean_tf" in sys.modules:
        from ean_tf import config

        return config
    package = importlib.util.find_spec("ean_tf")  # finds it, runs nothing
    folder = os.path.join(list(package.submodule_search_locations)[0], "config")
    spec = importlib.util.spec_from_file_location(
        "ean_tf.config",
        os.path.join(folder, "__init__.py"),
        submodule_search_locations=[folder],
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["ean_tf.config"] = module
    spec.loader.exec_module(module)
    return module


config_lib = _config_package()

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
# The modes that use a trained run: they start from its saved configuration.
RUN_MODES = ("eval", "predict", "export", "visualize", "robustness")

CONFIG = absl_flags.DEFINE_enum(
    "config",
    "default",
    list(config_lib.PRESETS),
    "Named preset; flags set explicitly override it. --mode=eval, predict, export, "
    "visualize and robustness start from the run's <run_dir>/config.json instead "
    "when there is one; a --config given there applies its preset's fields over "
    "the run's, as flags do.",
)
SHOW_TF_LOGS = absl_flags.DEFINE_bool(
    "show_tf_logs",
    False,
    "Show TensorFlow's C++ start-up and info logs.",
)
CHECKPOINT = absl_flags.DEFINE_string(
    "checkpoint",
    "",
    "Model for eval/predict/export/describe: a .keras file, a shipped model's "
    "name (ferplus48), or for predict and describe a SavedModel folder. Empty: "
    "<run_dir>/model.keras; predict, export and describe without --run_dir use "
    "the shipped FERPlus model. Without --run_dir, a model in a run folder "
    "(beside its config.json) takes that run's configuration and folder.",
)
VERSION = absl_flags.DEFINE_bool("version", False, "Print the version and exit.")
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


def run_folder(mode: str, run_dir: str, checkpoint: str) -> str:
    """The trained run a mode of `RUN_MODES` works on, a folder holding its
    config.json, or "" (no such run: the configuration comes from the flags).

    `run_dir`: --run_dir when given, else ""; without it, the folder of
    --checkpoint, or the default --run_dir when there is no --checkpoint. A
    --checkpoint that is a bare name and no file (a shipped model's) has no run.
    """
    if mode not in RUN_MODES:
        return ""
    bare = checkpoint and not os.path.dirname(checkpoint)
    if not run_dir and bare and not os.path.exists(checkpoint):
        return ""
    if not run_dir and checkpoint:
        run_dir = os.path.dirname(checkpoint) or "."
    run_dir = run_dir or FIELD_FLAGS["run_dir"].default
    return run_dir if os.path.isfile(os.path.join(run_dir, "config.json")) else ""


def config_from_flags(checkpoint: str | None = None) -> config_lib.Config:
    """The preset named by --config, with every explicitly set flag applied on top;
    for a mode of `RUN_MODES` with a run folder (`run_folder`), the run's saved
    configuration instead of the preset, an explicit --config's preset fields
    and then every explicitly set flag applied on top. `checkpoint`: the model
    the mode uses (default --checkpoint)."""
    index = config_lib.field_index()
    overrides = {
        name: _coerce(name, holder.value, index[name][1])
        for name, holder in FIELD_FLAGS.items()
        if FLAGS[name].present
    }
    if checkpoint is None:
        checkpoint = CHECKPOINT.value
    run_dir = run_folder(MODE.value, overrides.get("run_dir", ""), checkpoint)
    if not run_dir:
        return config_lib.make_config(CONFIG.value, **overrides)
    preset = config_lib.PRESETS[CONFIG.value] if FLAGS["config"].present else {}
    return config_lib.config_for_run(run_dir, **{**preset, **overrides})
