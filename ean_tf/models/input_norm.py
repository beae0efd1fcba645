"""What a backbone's first layer does to the images: RGB in 0..255 in, the input
its weights expect out. The models take 0..255 images and never import the input
pipeline."""

from __future__ import annotations

import keras
import tensorflow as tf

INPUT_NORMS = ("auto", "symmetric", "imagenet", "vggface1", "vggface2")


def normalize(images):
    """0..255 RGB -> -1..1, the project's own networks' input range."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


# Mean pixel (B, G, R) of the VGGFace (1) and VGGFace2 training sets, 0..255.
_VGGFACE_MEAN = {
    "vggface1": (93.5940, 104.7624, 129.1863),
    "vggface2": (91.4953, 103.8827, 131.0912),
}


@keras.saving.register_keras_serializable("ean_tf")
class InputNorm(keras.layers.Layer):
    """Maps RGB images in 0..255 to a backbone's own input.

    symmetric: [-1, 1] (`normalize`); imagenet: (x / 255 - mean) / std
    (torchvision); vggface1/vggface2: BGR, 0..255, minus the data set's mean pixel.
    """

    def __init__(self, mode: str = "symmetric", **kwargs):
        super().__init__(**kwargs)
        if mode not in INPUT_NORMS[1:]:
            raise ValueError(
                f"Expected input_norm in {INPUT_NORMS[1:]}. Received: {mode!r}"
            )
        self.mode = mode

    def call(self, x):
        if self.mode == "symmetric":
            return normalize(x)
        if self.mode == "imagenet":
            mean = keras.ops.convert_to_tensor([0.485, 0.456, 0.406], x.dtype)
            std = keras.ops.convert_to_tensor([0.229, 0.224, 0.225], x.dtype)
            return (x / 255.0 - mean) / std
        bgr = keras.ops.flip(x, axis=-1)
        return bgr - keras.ops.convert_to_tensor(_VGGFACE_MEAN[self.mode], x.dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
