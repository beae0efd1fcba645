"""Data sets: readers, the built-in data, label noise and the tf.data pipeline."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from ean_tf.data import affectnet, ferplus, generic, rafdb, synthetic
from ean_tf.data.base import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DataError,
    Examples,
    check_images,
    name_undecodable_image,
)
from ean_tf.data.noise import add_noise

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ean_tf")

# (training split, validation split) of each reader when the flags leave them empty.
DEFAULT_SPLITS = {
    "default": ("train", "val"),
    "ferplus": ("FER2013Train", "FER2013Valid"),
    "rafdb": ("train", "test"),
    "affectnet": ("train", "validation"),
    "folder": ("train", "val"),
    "csv": ("train", "val"),
    "tfrecord": ("train", "val"),
}


# The DataConfig fields that decide which images a validation split holds and
# their labels: all data sets', then each reader's own.
SPLIT_FIELDS = ("dataset", "data_dir", "train_split", "val_split", "skip_bad_images")
READER_FIELDS = {
    "default": ("default_train_size", "default_val_size", "default_identities"),
    "ferplus": ("ferplus_label_mode", "ferplus_classes"),
    "affectnet": ("affectnet_classes",),
}


@dataclasses.dataclass
class DataSplits:
    train: Examples
    val: Examples
    bad_images: list[dict]  # rows skipped under --skip_bad_images, with the reason

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names


def split_names(data) -> tuple[str, str]:
    """(training, validation) split names of a `DataConfig`: the flags', else the
    reader's own."""
    train, val = DEFAULT_SPLITS[data.dataset]
    return data.train_split or train, data.val_split or val


def data_folder(data) -> str:
    """The folder the data is read from (the built-in data's cache folder)."""
    return data.data_dir or (DEFAULT_CACHE if data.dataset == "default" else "")


def validation_data(data) -> dict:
    """What decides the validation split of a `DataConfig` (`SPLIT_FIELDS` and the
    reader's own fields), split names resolved and the folder absolute: two
    configurations that give the same dict evaluate the same images and labels."""
    fields = SPLIT_FIELDS + READER_FIELDS.get(data.dataset, ())
    values = {name: getattr(data, name) for name in fields}
    values["train_split"], values["val_split"] = split_names(data)
    values["data_dir"] = os.path.abspath(data_folder(data))
    return values


def _check_cache_folder(root: str) -> None:
    """The built-in data is generated only into a folder that is empty or holds
    nothing but its caches (`default-<hash>`), never into another data set."""
    if not os.path.exists(root):
        return
    if not os.path.isdir(root):
        raise DataError(f"--data_dir={root}: not a folder")
    other = sorted(
        name for name in os.listdir(root) if not name.startswith(("default-", "."))
    )
    if other:
        raise DataError(
            f"--data_dir={root} holds {other[0]!r}, not the built-in data's cache: "
            "--dataset=default generates its images only into an empty folder or "
            f"one holding its caches; leave --data_dir empty ({DEFAULT_CACHE}) or "
            "name the data set of that folder with --dataset"
        )


def read_split(data, split: str) -> Examples:
    """One split of the data set named by `data.dataset` (a `DataConfig`)."""
    name, root = data.dataset, data.data_dir
    if name != "default" and not root:
        raise DataError(f"--dataset={name} needs --data_dir")
    if name != "default" and not os.path.exists(root):
        raise DataError(f"--data_dir={root}: no such folder or file")
    if name == "default":
        if root:
            _check_cache_folder(root)
        csv_path = synthetic.generate(
            root or DEFAULT_CACHE,
            data.default_train_size,
            data.default_val_size,
            data.default_identities,
        )
        return generic.read_csv(csv_path, split, synthetic.CLASS_NAMES)
    if name == "ferplus":
        return ferplus.read_split(
            root, split, data.ferplus_label_mode, data.ferplus_classes
        )
    if name == "rafdb":
        return rafdb.read_split(root, split)
    if name == "affectnet":
        return affectnet.read_split(root, split, data.affectnet_classes)
    if name == "folder":
        train_split = data.train_split or DEFAULT_SPLITS["folder"][0]
        return generic.read_folder(
            root, split, generic.folder_classes(root, train_split)
        )
    if name == "csv":
        rows = generic.read_csv_rows(generic.csv_file(root))
        train_split = data.train_split or DEFAULT_SPLITS["csv"][0]
        return generic.read_csv(root, split, generic.csv_classes(rows, 0, train_split))
    if name == "tfrecord":
        from ean_tf.data import records

        return records.read_split(root, split)
    raise DataError(f"Unknown --dataset={name!r}")


def _csv_without_splits(root: str) -> bool:
    rows = generic.read_csv_rows(generic.csv_file(root))
    return "split" not in rows[0]


def stratified_part(examples: Examples, size: int) -> Examples:
    """`size` rows of `examples`, each class keeping its share of them (largest
    remainders; every class present keeps at least one row), chosen by a fixed seed
    so that every run with this size trains on the same images, in their order."""
    if size >= len(examples):
        raise DataError(
            f"--train_size={size}: the training split {examples.source} has only "
            f"{len(examples)} images; pass fewer, or 0 for all of them"
        )
    classes, counts = np.unique(examples.labels, return_counts=True)
    if size < len(classes):
        raise DataError(
            f"--train_size={size}: fewer than the {len(classes)} classes of "
            f"{examples.source}; pass at least {len(classes)}"
        )
    share = counts * size / counts.sum()
    take = np.maximum(1, np.floor(share).astype(int))
    for i in np.argsort(-(share - np.floor(share)), kind="stable"):
        if take.sum() >= size:
            break
        take[i] += 1
    while take.sum() > size:  # the at-least-one rule overshot: trim the largest
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(0)
    keep = np.concatenate(
        [
            rng.choice(np.flatnonzero(examples.labels == c), n, replace=False)
            for c, n in zip(classes, take, strict=True)
        ]
    )
    return examples.select(np.sort(keep))


def load(
    data, seed: int = 0, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> DataSplits:
    """Reads, checks and (optionally) corrupts the training and validation splits;
    an image of more than `max_image_pixels` pixels is a bad image."""
    train_name, val_name = split_names(data)
    if data.dataset == "csv" and _csv_without_splits(data.data_dir):
        everything = read_split(data, train_name)  # no split column: all rows
        order = np.random.default_rng(seed).permutation(len(everything))
        n_val = max(1, len(everything) // 10)
        val, train = everything.select(order[:n_val]), everything.select(order[n_val:])
    else:
        train, val = read_split(data, train_name), read_split(data, val_name)
    if val.class_names != train.class_names:
        raise DataError(
            f"{val.source}: classes {val.class_names} differ from the "
            f"training split's {train.class_names}"
        )
    if data.train_size:
        train = stratified_part(train, data.train_size)
    bad = []
    if data.dataset != "tfrecord":
        # --skip_bad_images needs the full decode to find what to skip.
        full = data.validate_images or data.skip_bad_images
        limit = {"max_pixels": max_image_pixels}
        train, bad_train = check_images(train, data.skip_bad_images, full, **limit)
        val, bad_val = check_images(val, data.skip_bad_images, full, **limit)
        bad = bad_train + bad_val
    if data.noise_rate > 0:
        train = add_noise(train, data.noise_rate, data.noise_seed)
    return DataSplits(train, val, bad)


__all__ = [
    "DataError",
    "DataSplits",
    "Examples",
    "check_images",
    "data_folder",
    "load",
    "name_undecodable_image",
    "read_split",
    "split_names",
    "stratified_part",
    "validation_data",
]
