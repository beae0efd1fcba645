"""Image bytes to pixels: the one decoder, and the one reader of an image's size
from its header, that validation, training, evaluation, prediction and the
exported SavedModel share."""

from __future__ import annotations

import tensorflow as tf


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes -> (H, W, 3) uint8 RGB (grey -> RGB, GIF's
    first frame)."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """(H, W, 3) or (B, H, W, 3) any dtype -> float32 0..255 at image_size."""
    image = tf.image.resize(
        tf.cast(image, tf.float32),
        [image_size, image_size],
        method="bilinear",
        antialias=True,
    )
    return tf.clip_by_value(image, 0.0, 255.0)


def header_pixels(contents: tf.Tensor) -> tf.Tensor:
    """Width x height from an image's header, without decoding it (PNG IHDR,
    GIF logical screen, BMP info header, JPEG SOF); raises on a header that
    does not parse."""
    head = tf.strings.join([tf.strings.substr(contents, 0, 32), b"\0" * 32])
    b = tf.cast(tf.io.decode_raw(tf.strings.substr(head, 0, 32), tf.uint8), tf.int64)

    def word(start, count, big_endian):
        order = range(count) if big_endian else reversed(range(count))
        value = tf.constant(0, tf.int64)
        for k in order:
            value = value * 256 + b[start + k]
        return value

    def bmp():
        height = word(22, 4, False)
        height = tf.where(height >= 2**31, 2**32 - height, height)  # top-down
        return word(18, 4, False) * height

    def jpeg():
        shape = tf.cast(tf.io.extract_jpeg_shape(contents), tf.int64)
        return shape[0] * shape[1]

    starts = lambda magic: tf.equal(tf.strings.substr(contents, 0, len(magic)), magic)
    return tf.case(
        [
            (starts(b"\x89PNG"), lambda: word(16, 4, True) * word(20, 4, True)),
            (starts(b"GIF8"), lambda: word(6, 2, False) * word(8, 2, False)),
            (starts(b"BM"), bmp),
        ],
        default=jpeg,
    )


def file_pixels(contents: bytes) -> int | None:
    """`header_pixels` of a file's bytes, eagerly; None when its header does not
    parse."""
    try:
        return int(header_pixels(tf.constant(contents)))
    except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError):
        return None


def too_many_pixels(pixels: int, limit: int) -> str:
    """The problem of an image of `pixels` over `limit`, as training, prediction
    and serving name it."""
    return f"more pixels than the limit, {limit} (--max_image_pixels): {pixels}"
