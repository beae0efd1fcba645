"""Image bytes to pixels: the one decoder that validation, training, evaluation
and the exported SavedModel share."""

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
