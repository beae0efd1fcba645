"""The models shipped with ean_tf, and the compact form they are stored in.

A shipped model is an ordinary `.keras` file (`keras.models.load_model` reads it
once `ean_tf` is imported) whose weights are stored as float16 and whose
optimizer is left out: half the size, and the same answers to within the
accuracy its model card gives. Each comes with a model card (`MODEL_CARD.md`
beside it) and its SHA-256, checked before it is loaded.

    >>> model = ean_tf.pretrained.load_model()          # FERPlus, 8 classes
    >>> ean_tf.pretrained.path("ferplus48")             # its file
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = "ferplus48"
# name -> (file beside this module, its SHA-256).
MODELS = {
    "ferplus48": (
        "ferplus48.keras",
        "d36b187428d04addead7b1b3825a98b5dabea8411da091256aee5e3e671db051",
    ),
}
_VERIFIED: set[str] = set()


class PretrainedError(ValueError):
    """A shipped model is unknown, missing or not the file it should be."""


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path(name: str = DEFAULT) -> str:
    """The file of shipped model `name`, its SHA-256 checked (once a process)."""
    if name not in MODELS:
        raise PretrainedError(
            f"No shipped model {name!r}. Shipped: {', '.join(MODELS)}."
        )
    file, expected = MODELS[name]
    full = os.path.join(HERE, file)
    if full in _VERIFIED:
        return full
    if not os.path.isfile(full):
        raise PretrainedError(
            f"{full}: the shipped model {name!r} is missing; reinstall ean_tf "
            "(a checkout needs `git lfs`-free git: the file is in the repository)."
        )
    found = sha256(full)
    if found != expected:
        raise PretrainedError(
            f"{full}: SHA-256 {found} is not the shipped model's {expected}; the "
            "file is damaged or was replaced: reinstall ean_tf."
        )
    _VERIFIED.add(full)
    return full


def load_model(name: str = DEFAULT):
    """The shipped model `name` as an `EAN` (see its `MODEL_CARD.md`)."""
    from ean_tf.runs import load_model as load

    return load(path(name))


def save_compact(model, out_path: str, **changes) -> None:
    """Saves `model` as a `.keras` file with float16 weights and no optimizer;
    `changes` replace entries of its config (e.g. `grayscale=True`).

    Keras casts each stored array back to its variable's dtype when it loads, so
    the file loads as any other; only the float32 weights are rounded."""
    import tempfile

    twin = type(model).from_config({**model.get_config(), **changes})
    twin.set_weights(model.get_weights())
    with tempfile.TemporaryDirectory() as tmp:
        full = os.path.join(tmp, "model.keras")
        twin.save(full)
        with zipfile.ZipFile(full) as zin:
            members = {n: zin.read(n) for n in zin.namelist()}
    members["model.weights.h5"] = _float16_h5(members["model.weights.h5"])
    partial = f"{out_path}.{os.getpid()}.partial"
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zout:
        for member, data in members.items():
            zout.writestr(member, data)
    os.replace(partial, out_path)


def _float16_h5(data: bytes) -> bytes:
    """A Keras weights file with every float32 array stored as float16."""
    import h5py

    out = io.BytesIO()
    with h5py.File(io.BytesIO(data), "r") as src, h5py.File(out, "w") as dst:

        def copy(group, into) -> None:
            for key, value in group.attrs.items():
                into.attrs[key] = value
            for key, item in group.items():
                if isinstance(item, h5py.Group):
                    copy(item, into.create_group(key))
                    continue
                array = item[()]
                if getattr(array, "dtype", None) == np.float32:
                    array = array.astype(np.float16)
                into.create_dataset(key, data=array)

        copy(src, dst)
    return out.getvalue()
