import math
import os
import subprocess
import sys

import pytest

import flags as ean_flags
from ean_tf import config as config_lib
from ean_tf.config import ConfigError, make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_config_field_is_a_flag():
    for name in config_lib.field_index():
        assert name in ean_flags.FLAGS, name


def test_defaults_give_the_default_preset(parse):
    assert parse() == make_config("default")


def test_preset_is_a_delta_of_the_default(parse):
    config = parse("--config=tiny")
    assert config.data.image_size == config_lib.PRESETS["tiny"]["image_size"]
    # A field the preset does not name keeps the default.
    assert config.model.tau1 == make_config().model.tau1


@pytest.mark.parametrize("preset", sorted(config_lib.PRESETS))
def test_every_preset_is_a_valid_config(preset):
    config = make_config(preset)
    for field, value in config_lib.PRESETS[preset].items():
        section, _ = config_lib.field_index()[field]
        assert getattr(getattr(config, section), field) == value, field
    assert config.train.adj_warmup_epochs < config.train.epochs


def test_explicit_flag_overrides_the_preset(parse):
    config = parse(
        "--config=ferplus48",
        "--epochs=3",
        "--tau2=-0.4",
        "--gcn_units=64,32",
        "--ferplus_classes=7",
        "--nostraight_through",
    )
    assert config.data.dataset == "ferplus"
    assert config.train.epochs == 3
    assert config.model.tau2 == -0.4
    assert config.model.gcn_units == (64, 32)
    assert config.data.ferplus_classes == 7


def test_flag_equal_to_default_still_overrides_preset(parse):
    default_size = make_config().data.image_size
    config = parse("--config=tiny", f"--image_size={default_size}")
    assert (
        config.data.image_size
        == default_size
        != config_lib.PRESETS["tiny"]["image_size"]
    )


def test_tau2_minus_inf_parses(parse):
    assert math.isinf(parse("--tau2=-inf").model.tau2)


def test_flagfile(parse, tmp_path):
    flagfile = tmp_path / "run.flags"
    flagfile.write_text("--config=tiny\n--epochs=5\n")
    config = parse(f"--flagfile={flagfile}")
    assert config.train.epochs == 5 and config.data.image_size == 32


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("noise_rate", 1.5, "noise_rate"),
        ("tau2", 0.9, "below tau1"),
        ("batch_size", 0, "batch_size"),
        ("image_size", 8, "image_size"),
    ],
)
def test_out_of_range_value_names_the_flag(name, value, expected):
    with pytest.raises(ConfigError, match=expected):
        make_config("default", **{name: value})


def test_bad_list_value_names_the_flag(parse):
    with pytest.raises(ConfigError, match="--gcn_units"):
        parse("--gcn_units=a,b")


def test_unknown_preset():
    with pytest.raises(ConfigError, match="--config"):
        make_config("nope")


def _run(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_cli_unknown_mode_is_one_line_naming_the_values():
    result = _run("--mode=dance")
    assert result.returncode != 0
    err = result.stderr
    assert "--mode" in err and "train" in err and "export" in err
    assert "Traceback" not in err


def test_cli_bad_enum_value():
    result = _run("--backbone=resnet999")
    assert result.returncode != 0
    assert "--backbone" in result.stderr and "resnet18" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_out_of_range_value_is_one_line():
    result = _run("--noise_rate=2", "--config=tiny")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: --noise_rate")
    assert "Traceback" not in result.stderr


def test_cli_identity_folder_error_is_one_line(tmp_path):
    from conftest import run_cli, write_png

    write_png(str(tmp_path / "cfp" / "id0" / "frontal" / "a.png"))
    result = run_cli(
        "--mode=pretrain_generator",
        "--config=tiny",
        f"--data_dir={tmp_path / 'data'}",
        f"--identity_data_dir={tmp_path / 'cfp'}",
        f"--run_dir={tmp_path / 'run'}",
    )
    assert result.returncode != 0
    assert not (tmp_path / "run").exists()  # nothing made before the error
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "id0/profile is missing" in lines[-1]
    assert "Traceback" not in result.stderr


def test_cli_helpfull_lists_modes_and_flags():
    result = _run("--helpfull")
    assert result.returncode == 0
    for word in (
        "--mode",
        "prepare",
        "pretrain_generator",
        "--tau1",
        "--noise_rate",
        "--config",
        "--strategy",
    ):
        assert word in result.stdout, word


def test_every_numeric_field_declares_what_it_accepts():
    """Ranges live in the fields' metadata (`check`, beside `choices`), so a new
    field cannot be left unchecked by forgetting a line in validate()."""
    import dataclasses

    from ean_tf.config import field_index

    free = {"noise_seed", "seed", "robustness_seed", "tau2"}  # any value (tau2: < tau1)
    for name, (_, f) in field_index().items():
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        numeric = isinstance(default, (int, float, tuple)) and not isinstance(
            default, bool
        )
        if numeric and name not in free:
            assert "check" in f.metadata or "choices" in f.metadata, name
            if "check" in f.metadata:
                ok, expected = f.metadata["check"]
                assert ok(default) and isinstance(expected, str), name


@pytest.mark.parametrize(
    "name,value",
    [
        ("learning_rate", float("inf")),
        ("learning_rate", float("nan")),
        ("weight_decay", float("inf")),
        ("lambda_adv", float("inf")),
        ("d_learning_rate", float("inf")),
        ("tau2", float("inf")),
    ],
)
def test_a_float_flag_must_be_finite(name, value):
    with pytest.raises(ConfigError, match=f"--{name}: expected a finite float"):
        make_config("default", **{name: value})


def test_tau2_may_be_minus_infinity():
    assert make_config("default", tau2=float("-inf")).model.tau2 == float("-inf")


def test_the_warmup_rule_names_the_flag_values_that_fix_it():
    with pytest.raises(ConfigError) as info:
        make_config("default", epochs=2)  # the default warm-up is 3 epochs
    assert "pass --adj_warmup_epochs=1 or --epochs=4" in str(info.value)
