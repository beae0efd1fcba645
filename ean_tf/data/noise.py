"""Symmetric label noise for the paper's tables 3-4."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np

from ean_tf.data.base import Examples
from ean_tf.files import atomic_open


def flip_labels(
    labels: np.ndarray, num_classes: int, rate: float, seed: int
) -> np.ndarray:
    """Flips exactly round(rate * N) labels, each to a different class.

    The flipped rows are chosen uniformly without replacement, and each new label is
    drawn uniformly from the C - 1 other classes. Deterministic under `seed`.
    Returns the noisy labels, (N,) int64.
    """
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    count = int(np.floor(rate * n + 0.5))  # round half up, not to even
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    if count == 0 or num_classes < 2:
        return noisy
    rows = rng.choice(n, size=count, replace=False)
    shift = rng.integers(1, num_classes, size=count)  # 1..C-1: never the same class
    noisy[rows] = (labels[rows] + shift) % num_classes
    return noisy


def add_noise(examples: Examples, rate: float, seed: int) -> Examples:
    """`examples` with flipped labels; the clean ones stay in `clean_labels`.

    Soft targets (FERPlus probability modes) become one-hot noisy labels.
    """
    noisy = flip_labels(examples.labels, examples.num_classes, rate, seed)
    return dataclasses.replace(
        examples, labels=noisy, targets=None, clean_labels=examples.labels.copy()
    )


def write_noisy_labels(examples: Examples, path: str) -> None:
    """Writes `path,clean_label,noisy_label` for every training row."""
    clean = examples.clean_labels
    if clean is None:
        clean = examples.labels
    with atomic_open(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "clean_label", "noisy_label"])
        for p, c, y in zip(examples.paths, clean, examples.labels, strict=True):
            writer.writerow([p, int(c), int(y)])


def read_noisy_labels(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return (
        [r["path"] for r in rows],
        np.asarray([int(r["clean_label"]) for r in rows]),
        np.asarray([int(r["noisy_label"]) for r in rows]),
    )
