"""The tf.data input pipeline and the preprocessing shared with serving.

Training, evaluation and the exported SavedModel all go through `decode_image` and
`resize_image`; the model itself normalises as its first step (its backbone's
`InputNorm`), so whatever
feeds it (tf.data here, a serving signature, a Keras user) hands it RGB images in
0..255 at `image_size` and there is no train/serve skew.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ean_tf.data.base import Examples
from ean_tf.data.decode import decode_image, resize_image  # noqa: F401 (public here)

AUTOTUNE = tf.data.AUTOTUNE


def crop_box(image: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
    """Crops (x, y, w, h) clipped to the image; an empty box keeps the image."""
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    box = tf.cast(box, tf.int32)
    x0 = tf.clip_by_value(box[0], 0, w - 1)
    y0 = tf.clip_by_value(box[1], 0, h - 1)
    x1 = tf.clip_by_value(box[0] + box[2], x0 + 1, w)
    y1 = tf.clip_by_value(box[1] + box[3], y0 + 1, h)
    valid = tf.logical_and(box[2] > 0, box[3] > 0)
    return tf.cond(valid, lambda: image[y0:y1, x0:x1], lambda: image)


def augment(
    image: tf.Tensor,
    seed: tf.Tensor,
    flip: bool = True,
    crop_pad: int = 0,
    erasing: float = 0.0,
) -> tf.Tensor:
    """The paper's augmentation: random flip and crop, plus optional erasing.

    image: (S, S, 3) float32 0..255. seed: (2,) int — the same seed gives the same
    result, eagerly or inside tf.data.
    """
    size = tf.shape(image)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    if crop_pad > 0:
        padded = tf.image.pad_to_bounding_box(
            image, crop_pad, crop_pad, size + 2 * crop_pad, size + 2 * crop_pad
        )
        image = tf.image.stateless_random_crop(
            padded, tf.stack([size, size, 3]), seeds[1]
        )
    if erasing > 0:
        image = random_erasing(image, seeds[2], erasing)
    return image


def random_erasing(
    image: tf.Tensor,
    seed: tf.Tensor,
    probability: float,
    area=(0.02, 0.25),
    aspect=(0.3, 3.3),
) -> tf.Tensor:
    """Zhong et al.'s random erasing: a rectangle filled with noise, with
    `probability`. Stateless: the same seed erases the same rectangle."""
    size = tf.cast(tf.shape(image)[0], tf.float32)
    u = tf.random.stateless_uniform([5], seed)
    frac = area[0] + u[0] * (area[1] - area[0])
    log_r = np.log(aspect[0]) + u[1] * (np.log(aspect[1]) - np.log(aspect[0]))
    ratio = tf.exp(log_r)
    h = tf.clip_by_value(tf.round(size * tf.sqrt(frac * ratio)), 1.0, size)
    w = tf.clip_by_value(tf.round(size * tf.sqrt(frac / ratio)), 1.0, size)
    y0 = tf.floor(u[2] * (size - h + 1))
    x0 = tf.floor(u[3] * (size - w + 1))
    ys = tf.range(size)[:, None]
    xs = tf.range(size)[None, :]
    inside = (ys >= y0) & (ys < y0 + h) & (xs >= x0) & (xs < x0 + w)  # (S, S)
    noise = tf.random.stateless_uniform(tf.shape(image), seed + 1, 0.0, 255.0)
    erased = tf.where(inside[..., None], noise, image)
    return tf.cond(u[4] < probability, lambda: erased, lambda: image)


def load_example(path: tf.Tensor, box: tf.Tensor | None, image_size: int) -> tf.Tensor:
    image = decode_image(tf.io.read_file(path))
    if box is not None:
        image = crop_box(image, box)
    return resize_image(image, image_size)


def _source(examples: Examples, image_size: int):
    """(dataset of raw rows, function turning a row into (image, target))."""
    targets = examples.soft_targets()
    if examples.records:  # prepared TFRecord shards: (PNG bytes, index) records
        from ean_tf.data.records import parse_record

        indices = tf.constant(examples.record_indices, tf.int64)
        table = tf.constant(targets)
        ds = tf.data.TFRecordDataset(examples.records).map(parse_record)

        def load_record(image_bytes, index):
            row = tf.searchsorted(indices, tf.reshape(index, [1]))[0]
            image = resize_image(decode_image(image_bytes), image_size)
            return image, tf.gather(table, row)

        return ds, load_record
    boxes = examples.boxes
    columns = (np.asarray(examples.paths), targets)
    if boxes is not None:
        columns = columns + (np.asarray(boxes, np.int64),)

    def load(*cols):
        box = cols[2] if boxes is not None else None
        return load_example(cols[0], box, image_size), cols[1]

    return tf.data.Dataset.from_tensor_slices(columns), load


def _balanced(ds: tf.data.Dataset, examples: Examples, seed: int) -> tf.data.Dataset:
    """Rows drawn class by class, each class uniformly, each class's rows
    reshuffled every pass."""
    if examples.records:
        raise ValueError(
            "balanced sampling reads image files; it is not available for "
            "TFRecord data yet"
        )
    table = tf.constant(examples.labels)
    counts = np.bincount(examples.labels, minlength=examples.num_classes)
    present = np.flatnonzero(counts)
    rows = ds.enumerate()  # rows in `examples` order: the row's label by index
    per_class = [
        rows.filter(lambda i, _, k=k: tf.equal(tf.gather(table, i), k))
        .map(lambda _, cols: cols)
        .shuffle(int(counts[k]), seed=seed + int(k))
        .repeat()
        for k in present
    ]
    return tf.data.Dataset.sample_from_datasets(per_class, seed=seed)


def make_dataset(
    examples: Examples,
    image_size: int,
    batch_size: int,
    training: bool,
    seed: int = 0,
    flip: bool = True,
    crop_pad: int = 0,
    erasing: float = 0.0,
    cache: bool = False,
    deterministic: bool = False,
    balanced: bool = False,
    skip: int = 0,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """(images (B, S, S, 3) float32 0..255, targets (B, C) float32) batches.

    training: shuffled under `seed`, augmented, repeated forever (the trainer sets
    steps per epoch); `skip` drops that many examples of the stream first, which is
    how a resumed run continues at its data position. Each example's augmentation
    seed is (seed, its position in the stream), so the stream is reproducible.
    `balanced` draws classes uniformly.
    Otherwise: one ordered pass, no augmentation.
    """
    ds, load = _source(examples, image_size)
    options = tf.data.Options()
    options.deterministic = deterministic or not training
    # Multi-worker: every worker reads the same rows and keeps its share of each
    # batch (rows come from a list, not from per-worker files).
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    if not training:
        ds = ds.map(load, num_parallel_calls=AUTOTUNE)
        if cache:
            ds = ds.cache()
        return ds.batch(batch_size).with_options(options).prefetch(AUTOTUNE)

    if cache:  # cache decoded, un-augmented images; augment after
        ds = ds.map(load, num_parallel_calls=AUTOTUNE).cache()
        load_fn = lambda image, target: (image, target)
    else:
        load_fn = load
    if balanced:
        ds = _balanced(ds, examples, seed)
    else:
        buffer = min(len(examples), 20000) if examples.records else len(examples)
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.repeat()
    ds = ds.enumerate()
    if skip:
        ds = ds.skip(skip)

    def load_and_augment(index, cols):
        image, target = load_fn(*cols)
        image = augment(
            image, tf.stack([tf.cast(seed, tf.int64), index]), flip, crop_pad, erasing
        )
        return image, target

    ds = ds.map(load_and_augment, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.with_options(options).prefetch(AUTOTUNE)
