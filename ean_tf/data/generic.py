"""Generic layouts: a class-per-folder tree and a CSV of `path,label[,split]`.

folder: `<data_dir>/<split>/<class>/*.{jpg,jpeg,png,bmp,gif}`; the classes are the
    sub-folders of the training split that hold an image, sorted.
csv:    `<data_dir>/labels.csv` (or --data_dir naming the CSV itself) with a header
    `path,label[,split][,identity]`; paths relative to the CSV's folder; labels are
    class names, or integer ids when every label is an integer. The classes are the
    training split's labels.

The training data defines the classes: a validation image of a class the
training split has no image of is an error naming the split, the class and the
file.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from ean_tf.data.base import DataError, Examples

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def _images_in(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def folder_classes(data_dir: str, split: str) -> tuple[str, ...]:
    """The class sub-folders of `<data_dir>/<split>` that hold an image, sorted."""
    root = os.path.join(data_dir, split)
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a folder (expected <data_dir>/<split>/<class>/)")
    folders = sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
    )
    if not folders:
        raise DataError(f"{root}: no class sub-folders")
    return tuple(d for d in folders if _images_in(os.path.join(root, d)))


def read_folder(data_dir: str, split: str, class_names: tuple[str, ...]) -> Examples:
    root = os.path.join(data_dir, split)
    present = folder_classes(data_dir, split)
    unknown = sorted(set(present) - set(class_names))
    if unknown:
        name = unknown[0]
        file = os.path.join(root, name, _images_in(os.path.join(root, name))[0])
        raise DataError(
            f"{file}: split {split!r} has class {name!r}, which the training split "
            f"has no image of (its classes: {', '.join(class_names)}); move it to "
            "a class of the training split or add training images of it"
        )
    paths, labels = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        for file in _images_in(folder):
            paths.append(os.path.join(folder, file))
            labels.append(label)
    if not paths:
        raise DataError(
            f"{root}: the split holds no image ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return Examples(paths, np.asarray(labels), class_names, source=root)


def csv_file(data_dir: str) -> str:
    return (
        data_dir if data_dir.endswith(".csv") else os.path.join(data_dir, "labels.csv")
    )


def read_csv_rows(label_file: str) -> list[dict]:
    if not os.path.isfile(label_file):
        raise DataError(
            f"{label_file}: not found (expected a CSV with header path,label[,split])"
        )
    with open(label_file, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "path" not in fields or "label" not in fields:
            raise DataError(
                f"{label_file}:1: header must name the columns path and "
                f"label (and optionally split), got {fields}"
            )
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if None in row or not row.get("path") or row.get("label") in (None, ""):
                raise DataError(
                    f"{label_file}:{lineno}: expected {','.join(fields)}, got {row!r}"
                )
            row["_line"] = lineno
            rows.append(row)
    if not rows:
        raise DataError(f"{label_file}: no rows")
    return rows


def csv_classes(
    rows: list[dict], num_classes: int = 0, split: str = ""
) -> tuple[str, ...]:
    """The classes: the labels of the rows of `split` (every row where empty or
    the CSV has no split column), or ids 0..max when every label is an int."""
    if split and "split" in rows[0]:
        rows = [r for r in rows if r["split"] == split] or rows
    labels = {r["label"] for r in rows}
    if all(label.lstrip("-").isdigit() for label in labels):
        n = num_classes or max(int(v) for v in labels) + 1
        return tuple(str(i) for i in range(n))
    return tuple(sorted(labels))


def read_csv(data_dir: str, split: str, class_names: tuple[str, ...]) -> Examples:
    label_file = csv_file(data_dir)
    base = os.path.dirname(os.path.abspath(label_file))
    rows = read_csv_rows(label_file)
    has_split = "split" in rows[0]
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels, identities = [], [], []
    for row in rows:
        if has_split and row["split"] != split:
            continue
        if row["label"] not in index:
            raise DataError(
                f"{label_file}:{row['_line']}: {row['path']} of split {split!r} has "
                f"class {row['label']!r}, which the training split has no image of "
                f"(its classes: {', '.join(class_names)})"
            )
        paths.append(os.path.join(base, row["path"]))
        labels.append(index[row["label"]])
        if "identity" in row:
            identities.append(int(row["identity"]))
    if not paths:
        raise DataError(f"{label_file}: no row of split {split!r}")
    return Examples(
        paths,
        np.asarray(labels),
        class_names,
        identities=np.asarray(identities) if identities else None,
        source=label_file,
    )
