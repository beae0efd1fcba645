"""What a configuration field is: its default, its flag's help, and what it accepts
(`choices`, or a `check=` range), plus the choice lists other modules share."""

from __future__ import annotations

from dataclasses import field


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
