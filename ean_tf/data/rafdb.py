"""RAF-DB basic: `EmoLabel/list_patition_label.txt` and `Image/aligned/`.

Label-file rows: `train_00001.jpg 5`, labels 1..7 = Surprise, Fear, Disgust, Happiness,
Sadness, Anger, Neutral (class ids 0..6 here). Splits are the name prefixes `train`
and `test`. Images come from `Image/aligned/<stem>_aligned.jpg`, or, with
`aligned=False`, from `Image/original/<name>` (align those with `--mode=prepare`).
"""

from __future__ import annotations

import os

import numpy as np

from ean_tf.data.base import DataError, Examples

CLASS_NAMES = (
    "surprise",
    "fear",
    "disgust",
    "happiness",
    "sadness",
    "anger",
    "neutral",
)
SPLITS = ("train", "test")


def read_split(data_dir: str, split: str, aligned: bool | None = None) -> Examples:
    label_file = os.path.join(data_dir, "EmoLabel", "list_patition_label.txt")
    if not os.path.isfile(label_file):
        raise DataError(
            f"{label_file}: not found. --data_dir must be the RAF-DB "
            "basic folder (EmoLabel/, Image/)"
        )
    if split not in SPLITS:
        raise DataError(f"RAF-DB split {split!r} does not exist; expected {SPLITS}")
    if aligned is None:
        aligned = os.path.isdir(os.path.join(data_dir, "Image", "aligned"))
    paths, labels = [], []
    with open(label_file) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise DataError(
                    f"{label_file}:{lineno}: expected '<image> <label>', "
                    f"got {line.strip()!r}"
                )
            name, label = parts[0], int(parts[1])
            if not 1 <= label <= 7:
                raise DataError(
                    f"{label_file}:{lineno}: unknown class id {label} "
                    "(RAF-DB basic labels are 1..7)"
                )
            if not name.startswith(split + "_"):
                continue
            stem = os.path.splitext(name)[0]
            if aligned:
                path = os.path.join(data_dir, "Image", "aligned", f"{stem}_aligned.jpg")
            else:
                path = os.path.join(data_dir, "Image", "original", name)
            paths.append(path)
            labels.append(label - 1)
    if not paths:
        raise DataError(f"{label_file}: no image of split {split!r}")
    return Examples(paths, np.asarray(labels), CLASS_NAMES, source=label_file)
