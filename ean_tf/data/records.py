"""The prepared shards' format: TFRecord examples of (PNG bytes, index, label) and
the manifest that lists them. `prepare.py` writes them; the readers and the input
pipeline read them through this module alone."""

from __future__ import annotations

import json
import os

import numpy as np

from ean_tf.data.base import DataError, Examples

MANIFEST = "manifest.json"


def example(png: bytes, index: int, label: int):
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[index])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def parse_record(record):
    """A serialized shard record -> (PNG bytes, index into the split)."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(
        record,
        {
            "image": tf.io.FixedLenFeature([], tf.string),
            "index": tf.io.FixedLenFeature([], tf.int64),
            "label": tf.io.FixedLenFeature([], tf.int64),
        },
    )
    return parsed["image"], parsed["index"]


def read_split(out_dir: str, split: str) -> Examples:
    """A prepared split: its rows, with `records` naming the shards to read."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        raise DataError(f"{path}: not found; run --mode=prepare first")
    with open(path) as f:
        manifest = json.load(f)
    if split not in manifest["splits"]:
        raise DataError(
            f"{path}: no split {split!r}; it has {list(manifest['splits'])}"
        )
    info = manifest["splits"][split]
    if info["num_images"] == 0:
        raise DataError(f"{path}: split {split!r} is empty")
    return Examples(
        paths=info["paths"],
        labels=np.asarray(info["labels"]),
        class_names=tuple(manifest["class_names"]),
        records=[os.path.join(out_dir, s) for s in info["shards"]],
        record_indices=np.asarray(info["indices"], np.int64),
        source=path,
    )
