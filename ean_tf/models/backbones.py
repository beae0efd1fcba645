"""Backbone CNNs G_enc, built in the project (no downloaded weights).

Each builder returns a functional `keras.Model` mapping RGB images in 0..255
(B, S, S, 3) to `[pooled (B, F), conv3 (B, h, w, c)]`: the global-average-pooled
feature the graph is built on, and the "conv3" feature map (after its batch norm)
that the invariant feature generator's discriminator reads.

Stems: `imagenet` (7x7/2 conv + 3x3/2 max-pool, for 224 px), `small` (3x3/1 conv, no
pool: 48 px keeps its resolution) and `small_s2` (3x3/2 conv, no pool).

Strided convolutions pad symmetrically (k // 2 on every side), as PyTorch and the
original networks do, rather than TensorFlow's `same` (which pads one pixel more at
the bottom and right): converted PyTorch weights then give the same features.

Every backbone takes RGB images in 0..255 and starts with an `InputNorm` layer
(`input_norm.py`) that turns them into what its weights expect: [-1, 1] for the
project's own, ImageNet mean/std for PyTorch face ResNets, BGR minus the mean pixel
for VGGFace.
"""

from __future__ import annotations

import os

import keras
from keras import layers

from ean_tf.models.input_norm import InputNorm

_BN = dict(momentum=0.9, epsilon=1e-5)
BACKBONE_NAMES = (
    "resnet18",
    "resnet34",
    "vgg13",
    "vgg16",
    "alexnet",
    "vgg16_face",
    "resnet50_face",
)


def _padded(x, kernel, stride, name):
    """Symmetric padding for a strided window (PyTorch's convention)."""
    if stride > 1 and kernel > 1:
        return layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x), "valid"
    return x, "same"


def _conv_bn(x, filters, kernel, stride, name, relu=True):
    x, padding = _padded(x, kernel, stride, name)
    x = layers.Conv2D(
        filters,
        kernel,
        stride,
        padding=padding,
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn", **_BN)(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _stem(x, stem: str, filters: int):
    if stem == "imagenet":
        x = _conv_bn(x, filters, 7, 2, "stem")
        # Zero padding equals PyTorch's -inf padding here: x >= 0 after the ReLU.
        x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        return layers.MaxPooling2D(3, 2, name="stem_pool")(x)
    if stem in ("small", "small_s2"):
        return _conv_bn(x, filters, 3, 1 if stem == "small" else 2, "stem")
    raise ValueError(
        f"Expected stem in ('imagenet', 'small', 'small_s2'). Received: stem={stem!r}"
    )


def _basic_block(x, filters, stride, name):
    shortcut = x
    y = _conv_bn(x, filters, 3, stride, f"{name}_1")
    y = _conv_bn(y, filters, 3, 1, f"{name}_2", relu=False)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, f"{name}_down", relu=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet(
    depth: int,
    image_size: int,
    stem: str = "imagenet",
    width: int = 64,
    name: str | None = None,
    input_norm: str = "symmetric",
) -> keras.Model:
    """ResNet-18/34 (He et al.), `width` channels in stage 1 (64 = standard).

    With `stem="imagenet"` and `width=64` the layers match torchvision's
    `resnet18`/`resnet34` one to one (see `ean_tf.models.convert`).
    """
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[depth]
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = InputNorm(input_norm, name="input_norm")(inputs)
    x = _stem(x, stem, width)
    conv3 = None
    for stage, n in enumerate(blocks):
        filters = width * 2**stage
        for b in range(n):
            stride = 2 if (b == 0 and stage > 0) else 1
            x = _basic_block(x, filters, stride, f"layer{stage + 1}_{b}")
        if stage == 2:
            conv3 = x
    pooled = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, [pooled, conv3], name=name or f"resnet{depth}")


_VGG = {13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3)}


def vgg(
    depth: int,
    image_size: int,
    stem: str = "imagenet",
    width: int = 64,
    name: str | None = None,
    input_norm: str = "symmetric",
) -> keras.Model:
    """VGG13/16 with batch norm; small stems drop the first two max-pools."""
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x, conv3 = InputNorm(input_norm, name="input_norm")(inputs), None
    for stage, n in enumerate(_VGG[depth]):
        filters = width * min(2**stage, 8)
        for b in range(n):
            x = _conv_bn(x, filters, 3, 1, f"block{stage + 1}_{b}")
        if stage == 2:
            conv3 = x
        if stem == "imagenet" or stage >= 2:
            x = layers.MaxPooling2D(
                2, 2, padding="same", name=f"block{stage + 1}_pool"
            )(x)
    pooled = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, [pooled, conv3], name=name or f"vgg{depth}")


def alexnet(
    image_size: int,
    stem: str = "imagenet",
    width: int = 64,
    name: str = "alexnet",
    input_norm: str = "symmetric",
) -> keras.Model:
    """AlexNet (Krizhevsky et al.) with batch norm after each conv."""
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = InputNorm(input_norm, name="input_norm")(inputs)
    if stem == "imagenet":
        x = _conv_bn(x, width, 11, 4, "conv1")
        x = layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
    else:
        x = _conv_bn(x, width, 3, 1 if stem == "small" else 2, "conv1")
    x = _conv_bn(x, width * 3, 5, 1, "conv2")
    x = layers.MaxPooling2D(3, 2, padding="same", name="pool2")(x)
    conv3 = _conv_bn(x, width * 6, 3, 1, "conv3")
    x = _conv_bn(conv3, width * 4, 3, 1, "conv4")
    x = _conv_bn(x, width * 4, 3, 1, "conv5")
    x = layers.MaxPooling2D(3, 2, padding="same", name="pool5")(x)
    pooled = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, [pooled, conv3], name=name)


def build_backbone(
    name: str,
    image_size: int,
    stem: str = "imagenet",
    width: int = 64,
    input_norm: str = "auto",
) -> keras.Model:
    """A backbone by name. `input_norm="auto"`: VGGFace's own input for the face
    backbones, the project's [-1, 1] for the others."""
    from ean_tf.models import face_backbones

    if input_norm == "auto":
        input_norm = (
            "vggface1"
            if name == "vgg16_face"
            else ("vggface2" if name == "resnet50_face" else "symmetric")
        )
    if name == "resnet18":
        return resnet(18, image_size, stem, width, input_norm=input_norm)
    if name == "resnet34":
        return resnet(34, image_size, stem, width, input_norm=input_norm)
    if name == "vgg13":
        return vgg(13, image_size, stem, width, input_norm=input_norm)
    if name == "vgg16":
        return vgg(16, image_size, stem, width, input_norm=input_norm)
    if name == "alexnet":
        return alexnet(image_size, stem, width, input_norm=input_norm)
    if name == "vgg16_face":
        return face_backbones.vgg16_face(image_size, input_norm)
    if name == "resnet50_face":
        return face_backbones.resnet50_face(image_size, input_norm)
    raise ValueError(
        f"Expected backbone in {BACKBONE_NAMES}. Received: backbone={name!r}"
    )


def load_backbone_weights(backbone: keras.Model, path: str) -> None:
    """Loads backbone weights from a local file, whichever of these it is:

    - a Keras weights file (`.weights.h5`, as `save_weights` writes it);
    - a PyTorch ResNet checkpoint (`.pth`, `.pt`, `.pth.tar`, `.bin`), converted
      by `ean_tf.models.convert` (needs torch, for the conversion only);
    - a Keras 2 / VGGFace `.h5` weight file (layers matched by name).

    A missing file or a mismatch raises ValueError listing what did not match, and
    the backbone is left as it was: nothing loads half-way.
    """
    if not os.path.isfile(path):
        raise ValueError(f"--backbone_weights={path}: no such file")
    from ean_tf.models import convert

    kind = convert.weights_format(path)
    if kind == "torch":
        return convert.load_torch_resnet(backbone, path)
    if kind == "keras2_h5":
        return convert.load_vggface_h5(backbone, path)
    problems = _mismatch(backbone, path)
    if problems:  # checked before loading: nothing loads half-way
        raise ValueError(
            f"--backbone_weights={path} does not fit backbone "
            f"{backbone.name!r}: {problems}"
        )
    before = [w.numpy() for w in backbone.weights]
    try:
        backbone.load_weights(path)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        for w, value in zip(backbone.weights, before, strict=True):
            w.assign(value)
        raise ValueError(
            f"--backbone_weights={path} could not be loaded into "
            f"{backbone.name!r}: {error}"
        ) from None


def _file_keys(backbone: keras.Model) -> dict[str, keras.layers.Layer]:
    """The keys Keras's weights file uses for the model's layers, in its order:
    the snake_case class name, numbered from the second of a kind on."""
    import re

    keys, seen = {}, {}
    for layer in backbone.layers:
        base = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", type(layer).__name__)
        base = re.sub("([a-z])([A-Z])", r"\1_\2", base).lower()
        n = seen.get(base, 0)
        seen[base] = n + 1
        keys[base if n == 0 else f"{base}_{n}"] = layer
    return keys


def _mismatch(backbone: keras.Model, path: str) -> str:
    """Lists the weighted layers that differ between `backbone` and the file."""
    import h5py

    keys = _file_keys(backbone)
    expected = {
        k: [tuple(w.shape) for w in layer.weights]
        for k, layer in keys.items()
        if layer.weights
    }
    found = {}
    try:
        with h5py.File(path, "r") as f:
            group = f.get("layers", f)
            for key in group:
                vars_ = group[key].get("vars", {})
                shapes = [tuple(vars_[v].shape) for v in sorted(vars_, key=int)]
                if shapes:
                    found[key] = shapes
    except (OSError, ValueError, TypeError):
        return "not a Keras weights file (.weights.h5)"
    name = lambda k: keys[k].name if k in keys else k
    missing = sorted(name(k) for k in set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    parts = []
    if missing:
        parts.append(
            f"layers missing from the file: {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}"
        )
    if extra:
        parts.append(
            f"file entries with no layer here: {extra[:10]}"
            f"{' ...' if len(extra) > 10 else ''}"
        )
    shapes = [k for k in expected if k in found and expected[k] != found[k]]
    for k in shapes[:10]:
        parts.append(
            f"layer {name(k)}: file has shapes {found[k]}, model {expected[k]}"
        )
    if len(shapes) > 10:
        parts.append(f"... {len(shapes) - 10} more layers with other shapes")
    return "; ".join(parts)
