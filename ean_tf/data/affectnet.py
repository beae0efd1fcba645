"""AffectNet: `training.csv` / `validation.csv` and `Manually_Annotated_Images/`.

CSV header: `subDirectory_filePath,face_x,face_y,face_width,face_height,
facial_landmarks,expression,valence,arousal`. Expression codes 0..7 = Neutral, Happy,
Sad, Surprise, Fear, Disgust, Anger, Contempt; 8..10 (None, Uncertain, No-face) are
dropped, and so is 7 in the 7-class setting. The face box crops each image.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from ean_tf.data.base import DataError, Examples

CLASS_NAMES = (
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)
SPLITS = {"train": "training.csv", "validation": "validation.csv"}
IMAGE_DIR = "Manually_Annotated_Images"
_COLUMNS = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "expression",
)


def read_split(data_dir: str, split: str, num_classes: int = 8) -> Examples:
    if split not in SPLITS:
        raise DataError(
            f"AffectNet split {split!r} does not exist; expected {tuple(SPLITS)}"
        )
    label_file = os.path.join(data_dir, SPLITS[split])
    if not os.path.isfile(label_file):
        raise DataError(
            f"{label_file}: not found. --data_dir must hold AffectNet's "
            f"training.csv, validation.csv and {IMAGE_DIR}/"
        )
    image_dir = os.path.join(data_dir, IMAGE_DIR)
    paths, labels, boxes = [], [], []
    with open(label_file, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{label_file}:1: header lacks columns {missing}")
        for lineno, row in enumerate(reader, start=2):
            try:
                code = int(row["expression"])
                box = [int(float(row[k])) for k in _COLUMNS[1:5]]
            except (TypeError, ValueError):
                raise DataError(
                    f"{label_file}:{lineno}: expression or face box is not"
                    f" a number: {row!r}"
                ) from None
            if not 0 <= code <= 10:
                raise DataError(
                    f"{label_file}:{lineno}: unknown expression code {code}"
                    " (AffectNet codes are 0..10)"
                )
            if code >= num_classes:
                continue  # 8-10 not an expression; 7 in the 7-class setting
            paths.append(os.path.join(image_dir, row["subDirectory_filePath"]))
            labels.append(code)
            boxes.append(box)
    if not paths:
        raise DataError(f"{label_file}: no usable sample")
    return Examples(
        paths,
        np.asarray(labels),
        CLASS_NAMES[:num_classes],
        boxes=np.asarray(boxes, np.int64),
        source=label_file,
    )
