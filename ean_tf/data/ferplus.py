"""FERPlus in its own layout: `FER2013{Train,Valid,Test}/label.csv` and the PNGs.

`label.csv` rows: `ferNNNNNNN.png,"(0, 0, 48, 48)",v0,...,v9`, ten crowd votes in the
order of `VOTE_NAMES`. The label schemes follow FERPlus's `src/ferplus.py`
(`_process_data`) rule for rule: votes of 1 are removed first; `majority` needs more
than half of the remaining votes; unknown and not-a-face samples are dropped.
"""

from __future__ import annotations

import csv
import os
import sys

import numpy as np

from ean_tf.data.base import DataError, Examples

CLASS_NAMES = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
VOTE_NAMES = CLASS_NAMES + ("unknown", "not_a_face")
SPLITS = ("FER2013Train", "FER2013Valid", "FER2013Test")
LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target")


def process_votes(votes, mode: str) -> np.ndarray:
    """10 raw votes -> a distribution over the 10 vote classes (FERPlus rules).

    A result whose arg-max is `unknown` (index 8) or `not_a_face` (9) means drop.
    """
    raw = [float(v) for v in votes]
    size = len(raw)
    unknown = [0.0] * size
    unknown[-2] = 1.0
    raw = [0.0 if v < 1.0 + sys.float_info.epsilon else v for v in raw]
    total = sum(raw)
    emotion = [0.0] * size
    if mode == "majority":
        peak = max(raw)
        if peak > 0.5 * total:
            emotion[int(np.argmax(raw))] = peak
        else:
            emotion = unknown
    elif mode in ("probability", "crossentropy"):
        part, count, valid = 0.0, 0, True
        while part < 0.75 * total and count < 3 and valid:
            peak = max(raw)
            for i in range(size):
                if raw[i] == peak:
                    emotion[i] = peak
                    raw[i] = 0.0
                    part += emotion[i]
                    count += 1
                    if i >= 8:  # unknown or not-a-face tie with the peak
                        valid = False
                        if sum(emotion) > peak:  # emotions came before it
                            emotion[i] = 0.0
                            count -= 1
                        break
        if sum(emotion) <= 0.5 * total or count > 3:
            emotion = unknown
    elif mode == "multi_target":
        for i in range(size):
            if raw[i] >= 0.3 * total:
                emotion[i] = raw[i]
        if sum(emotion) <= 0.5 * total:
            emotion = unknown
    else:
        raise ValueError(f"Unknown FERPlus label mode {mode!r}; expected {LABEL_MODES}")
    s = sum(emotion)
    return np.asarray([e / s for e in emotion], np.float64)


def read_split(
    data_dir: str, split: str, mode: str = "majority", num_classes: int = 8
) -> Examples:
    """Reads one FERPlus split; see the module docstring for the rules."""
    folder = os.path.join(data_dir, split)
    label_file = os.path.join(folder, "label.csv")
    if not os.path.isfile(label_file):
        raise DataError(
            f"{label_file}: not found. --data_dir must hold FERPlus's {split} "
            "folder (with its label.csv); training reads FER2013Train and "
            "FER2013Valid, FER2013Test is optional"
        )
    paths, targets = [], []
    with open(label_file, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 12:
                raise DataError(
                    f"{label_file}:{lineno}: expected 12 fields (name, box,"
                    f" 10 votes), got {len(row)}: {row!r}"
                )
            try:
                votes = [float(v) for v in row[2:]]
            except ValueError:
                raise DataError(
                    f"{label_file}:{lineno}: votes are not numbers: {row[2:]!r}"
                ) from None
            if any(v < 0 for v in votes):
                raise DataError(f"{label_file}:{lineno}: negative vote count")
            if sum(votes) == 0:
                continue  # no votes at all: nothing to learn from
            dist = process_votes(votes, mode)
            if int(np.argmax(dist)) >= 8:
                continue  # unknown or not a face: dropped, as in FERPlus
            dist = dist[:8] / dist[:8].sum()
            if num_classes == 7:
                if int(np.argmax(dist)) == 7:
                    continue  # contempt sample in the 7-class setting
                dist = dist[:7]
                if dist.sum() == 0:
                    continue
                dist = dist / dist.sum()
            paths.append(os.path.join(folder, row[0]))
            targets.append(dist)
    source = label_file
    if not paths:
        raise DataError(f"{label_file}: no usable sample in this split")
    targets = np.asarray(targets, np.float32)
    return Examples(
        paths=paths,
        labels=np.argmax(targets, axis=1),
        class_names=CLASS_NAMES[:num_classes],
        targets=targets,
        source=source,
    )
