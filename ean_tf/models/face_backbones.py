"""Face-recognition backbones with the layer structure of the VGGFace Keras models.

`vgg16_face` (VGGFace, Parkhi et al. 2015) and `resnet50_face` (VGGFace2, Cao et
al. 2018) are built here layer for layer like the `.h5` weight files that circulate
as `rcmalli_vggface_tf_notop_vgg16.h5` and `rcmalli_vggface_tf_notop_resnet50.h5`:
the same convolutions, strides, paddings, biases and batch-norm epsilon, with each
layer named after the file's layer (`/` becomes `_`, which Keras 3 does not allow
in names). `ean_tf.models.convert.load_vggface_h5` fills them from those files.

Like the project's other backbones, each maps [-1, 1] RGB images to
`[pooled (B, F), conv3 (B, h, w, c)]`; an `InputNorm` layer turns the input into
VGGFace's own (BGR, 0..255, minus the mean pixel). The pre-trained networks expect
224 px faces; smaller inputs work (down to 32 px) with smaller feature maps.
"""

from __future__ import annotations

import keras
from keras import layers

from ean_tf.models.input_norm import InputNorm

# Keras 2's defaults, which the VGGFace ResNet-50 was saved with.
_BN = dict(momentum=0.99, epsilon=1e-3)


def keras_name(file_name: str) -> str:
    """A VGGFace layer name as this project names the layer."""
    return file_name.replace("/", "_")


def vgg16_face(image_size: int, input_norm: str = "vggface1") -> keras.Model:
    """VGG16 of VGGFace: 13 biased 3x3 convs with ReLU, 2x2 max-pools, no BN."""
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = InputNorm(input_norm, name="input_norm")(inputs)
    conv3 = None
    for block, (n, filters) in enumerate(
        [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1
    ):
        for i in range(1, n + 1):
            x = layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=f"conv{block}_{i}"
            )(x)
        if block == 3:
            conv3 = x
        x = layers.MaxPooling2D(2, 2, name=f"pool{block}")(x)
    pooled = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, [pooled, conv3], name="vgg16_face")


def _conv_bn(x, filters, kernel, stride, name, relu=True, padding="valid"):
    x = layers.Conv2D(
        filters, kernel, stride, padding=padding, use_bias=False, name=name
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn", **_BN)(x)
    return layers.ReLU()(x) if relu else x


def _bottleneck(x, filters, stage, block, stride):
    f1, f2, f3 = filters
    base = f"conv{stage}_{block}"
    y = _conv_bn(x, f1, 1, stride, f"{base}_1x1_reduce")
    y = _conv_bn(y, f2, 3, 1, f"{base}_3x3", padding="same")
    y = _conv_bn(y, f3, 1, 1, f"{base}_1x1_increase", relu=False)
    shortcut = x
    if block == 1:  # VGGFace puts the stride on the 1x1 reduce and the projection
        shortcut = _conv_bn(x, f3, 1, stride, f"{base}_1x1_proj", relu=False)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def resnet50_face(image_size: int, input_norm: str = "vggface2") -> keras.Model:
    """ResNet-50 of VGGFace2 (bias-free convs, stride on the 1x1 reduce)."""
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = InputNorm(input_norm, name="input_norm")(inputs)
    x = _conv_bn(x, 64, 7, 2, "conv1_7x7_s2", padding="same")
    x = layers.MaxPooling2D(3, 2, name="pool1")(x)
    conv3 = None
    stages = [(2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512)]
    for stage, n, f in stages:
        for block in range(1, n + 1):
            stride = 2 if (block == 1 and stage > 2) else 1
            x = _bottleneck(x, (f, f, 4 * f), stage, block, stride)
        if stage == 4:
            conv3 = x
    pooled = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, [pooled, conv3], name="resnet50_face")
