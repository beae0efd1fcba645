"""Backbone weights from other frameworks' files, converted layer by layer.

Two kinds of file that face-pretrained backbones circulate as:

- PyTorch ResNet-18/34 checkpoints in torchvision's naming (SCN's
  `ijba_res18_naive.pth.tar`, DAN's `resnet18_msceleb.pth`, ...): a `state_dict`,
  a dict holding one under `state_dict` or `model_state_dict`, or a bare dict;
  `module.` prefixes (DataParallel) are removed and the `fc` head, of any size, is
  dropped (so is any other entry outside conv1/bn1/layerN, such as an extra
  `feature` layer; it is logged). Needs `torch` (`pip install torch==2.13.0`), for
  the conversion only: nothing else in the project imports it. Convert once with
  `python run.py --mode=convert_weights --backbone=resnet18 --stem=imagenet
  --width=64 --backbone_weights=IN.pth --output=OUT.weights.h5`.
- Keras 2 `.h5` weight files such as the VGGFace ones
  (`rcmalli_vggface_tf_notop_vgg16.h5`, `..._resnet50.h5`), for the `vgg16_face`
  and `resnet50_face` backbones; layers are matched by name and top layers
  (`fc6`-`fc8`, `classifier`) are dropped.

Either way every weight is checked before any is set: a missing layer, a leftover
entry or a wrong shape raises ValueError listing all of them, and the backbone is
left as it was.

PyTorch to Keras: conv kernels (out, in, kh, kw) -> (kh, kw, in, out); batch norm
weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance. The
project's batch norm uses PyTorch's epsilon (1e-5) and strided convolutions pad
like PyTorch, so the converted network computes the same features.
"""

from __future__ import annotations

import logging
import re

import keras
import numpy as np

log = logging.getLogger("ean_tf")

TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt")
_HEADS_VGGFACE = ("fc6", "fc7", "fc8", "classifier")


def weights_format(path: str) -> str:
    """'torch', 'keras2_h5' (VGGFace and other Keras 2 files) or 'keras'."""
    if path.lower().endswith(TORCH_SUFFIXES):
        return "torch"
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                g = f.get("model_weights", f)
                if "layer_names" in g.attrs:
                    return "keras2_h5"
        except OSError:
            pass
        return "keras"
    if head.startswith(b"PK") or head[:1] == b"\x80":  # torch zip or pickle
        return "torch"
    return "keras"


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as NumPy arrays, `module.` prefixes removed."""
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"--backbone_weights={path} is a PyTorch checkpoint; converting it "
            "needs torch, for the conversion only: pip install torch==2.13.0"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"--backbone_weights={path}: not a readable PyTorch checkpoint "
            f"({type(error).__name__}: {first})"
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    tensors = (
        {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if isinstance(obj, dict)
        else {}
    )
    if not tensors or len(tensors) != len(obj):
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"--backbone_weights={path}: unknown checkpoint layout: expected a "
            "state_dict of tensors, or a dict holding one under 'state_dict' or "
            f"'model_state_dict'. Found: {keys}"
        )
    out = {}
    for key, value in tensors.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        out[key] = value.detach().cpu().float().numpy()
    return out


def _listed(what: str, names: list[str]) -> list[str]:
    """One problem line for a list of names (the first ten, and how many)."""
    if not names:
        return []
    more = f" ... ({len(names)} in all)" if len(names) > 10 else ""
    return [f"{what}: {names[:10]}{more}"]


def _match(layer, source: str, where: str, arrays, values: dict, problems: list):
    """Keeps `arrays` for `layer` when their shapes fit, else records why not."""
    shapes = [tuple(a.shape) for a in arrays]
    expected = [tuple(w.shape) for w in layer.weights]
    if shapes != expected:
        problems.append(
            f"layer {layer.name} ({source}): {where} has shapes {shapes}, "
            f"model {expected}"
        )
    else:
        values[layer.name] = arrays


def _torch_prefix(layer_name: str) -> str | None:
    """torchvision's name for one of the project's ResNet layers."""
    if layer_name in ("stem_conv", "stem_bn"):
        return "conv1" if layer_name == "stem_conv" else "bn1"
    m = re.fullmatch(r"layer(\d)_(\d+)_(1|2|down)_(conv|bn)", layer_name)
    if not m:
        return None
    stage, block, part, kind = m.groups()
    base = f"layer{stage}.{block}"
    if part == "down":
        return f"{base}.downsample.{0 if kind == 'conv' else 1}"
    return f"{base}.{kind}{part}"


def torch_resnet_values(
    backbone: keras.Model, state: dict[str, np.ndarray]
) -> tuple[dict, list[str]]:
    """Keras layer name -> weight list, and the problems found."""
    values, problems, used, missing = {}, [], set(), []
    for layer in backbone.layers:
        if not layer.weights:
            continue
        prefix = _torch_prefix(layer.name)
        if prefix is None:
            problems.append(f"layer {layer.name} has no PyTorch counterpart")
            continue
        if isinstance(layer, keras.layers.Conv2D):
            keys, convert = ["weight"], [lambda w: w.transpose(2, 3, 1, 0)]
        else:
            keys = ["weight", "bias", "running_mean", "running_var"]
            convert = [lambda w: w] * 4
        arrays = []
        for key, fn in zip(keys, convert, strict=True):
            name = f"{prefix}.{key}"
            if name not in state:
                missing.append(name)
                continue
            used.add(name)
            arrays.append(fn(state[name]))
        if len(arrays) != len(keys):
            continue
        _match(layer, prefix, "checkpoint", arrays, values, problems)
    unused = [k for k in state if k not in used and not k.endswith("batches_tracked")]
    # Entries outside the backbone (fc, or a checkpoint's own extra heads such as
    # `feature`) are heads and dropped; anything that looks like backbone and did not
    # match is an error.
    backbone_like = re.compile(r"(conv1|bn1|layer\d+)\.")
    heads = sorted(k for k in unused if not backbone_like.match(k))
    extra = sorted(k for k in unused if backbone_like.match(k))
    if heads:
        log.info("Dropped head entries of the checkpoint: %s", heads[:10])
    problems = (
        _listed("missing from the checkpoint", missing)
        + _listed("checkpoint entries with no layer here", extra)
        + problems
    )
    return values, problems


def read_keras2_h5(path: str) -> dict[str, list[np.ndarray]]:
    """Layer name -> weight arrays of a Keras 2 `.h5` weights (or model) file."""
    import h5py

    out = {}
    try:
        with h5py.File(path, "r") as f:
            g = f.get("model_weights", f)
            for name in g.attrs["layer_names"]:
                name = name.decode() if isinstance(name, bytes) else str(name)
                weight_names = g[name].attrs.get("weight_names", [])
                arrays = [
                    np.asarray(g[name][w.decode() if isinstance(w, bytes) else w])
                    for w in weight_names
                ]
                if arrays:
                    out[name] = arrays
    except (OSError, KeyError) as error:
        raise ValueError(
            f"--backbone_weights={path}: not a readable Keras 2 .h5 weights file "
            f"({error})"
        ) from None
    return out


def vggface_values(
    backbone: keras.Model, weights: dict[str, list[np.ndarray]]
) -> tuple[dict, list[str]]:
    """Matches a Keras 2 file's layers to the backbone's by name."""
    from ean_tf.models.face_backbones import keras_name

    by_name = {keras_name(k): (k, v) for k, v in weights.items()}
    values, problems, missing = {}, [], []
    for layer in backbone.layers:
        if not layer.weights:
            continue
        if layer.name not in by_name:
            missing.append(layer.name)
            continue
        file_name, arrays = by_name.pop(layer.name)
        _match(layer, file_name, "file", arrays, values, problems)
    extra = sorted(k for k, _ in by_name.values() if not k.startswith(_HEADS_VGGFACE))
    problems = (
        _listed("layers missing from the file", missing)
        + _listed("file layers with no layer here", extra)
        + problems
    )
    return values, problems


def _assign(backbone: keras.Model, path: str, values: dict, problems: list, hint=""):
    if not values and not problems:
        problems = ["no weights found"]
    if problems:
        shown = "; ".join(problems[:12])
        more = f"; ... {len(problems) - 12} more" if len(problems) > 12 else ""
        raise ValueError(
            f"--backbone_weights={path} does not fit backbone {backbone.name!r}: "
            f"{shown}{more}{hint}"
        )
    for layer in backbone.layers:
        if layer.name in values:
            layer.set_weights(values[layer.name])


def load_torch_resnet(backbone: keras.Model, path: str) -> None:
    """Loads a torchvision-style ResNet checkpoint into a project ResNet."""
    state = read_torch_state_dict(path)
    values, problems = torch_resnet_values(backbone, state)
    hint = ""
    if problems:
        hint = (
            " (torchvision's ResNets match --backbone=resnet18 or resnet34 with "
            "--stem=imagenet --width=64)"
        )
    _assign(backbone, path, values, problems, hint)


def load_vggface_h5(backbone: keras.Model, path: str) -> None:
    """Loads a Keras 2 / VGGFace `.h5` weight file into the matching backbone."""
    values, problems = vggface_values(backbone, read_keras2_h5(path))
    hint = ""
    if problems:
        hint = (
            " (the VGGFace files match --backbone=vgg16_face (VGG16) or "
            "--backbone=resnet50_face (ResNet-50))"
        )
    _assign(backbone, path, values, problems, hint)
