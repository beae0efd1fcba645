"""Perturbed views of face images, and face images grouped by identity.

`make_views` turns a batch of frontal faces into perturbed views of the same faces,
the invariant feature generator's `x_p` (docs/DESIGN.md section 1.3):

- occlusion: a random block, an eye bar or a lower-face mask, in a random grey;
- illumination: gamma, a one-sided gradient light, or lowered contrast;
- pose: a perspective warp with an in-plane rotation.

Everything is stateless under `seed`, batched and in TF, so it runs inside a
`tf.data` map: the same seed gives the same views, and images keep their shape,
dtype and the 0..255 range.

`read_identity_folders` reads real identity data in the CFP layout
(`<identity>/frontal/*.jpg`, `<identity>/profile/*.jpg`).
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf

from ean_tf.data.base import DataError
from ean_tf.data.generic import IMAGE_EXTENSIONS

VIEW_KINDS = ("occlusion", "illumination", "pose")


def _uniform(seed, shape, low, high):
    return tf.random.stateless_uniform(shape, seed, low, high)


def _sub(seed, i):
    """The i-th independent seed derived from `seed`."""
    return tf.random.experimental.stateless_fold_in(seed, i)


def occlude(images: tf.Tensor, seed) -> tf.Tensor:
    """Random block (60%), eye bar (20%) or lower-face mask (20%) per image."""
    b = tf.shape(images)[0]
    size_h, size_w = tf.shape(images)[1], tf.shape(images)[2]
    ys = (tf.cast(tf.range(size_h), tf.float32) + 0.5) / tf.cast(size_h, tf.float32)
    xs = (tf.cast(tf.range(size_w), tf.float32) + 0.5) / tf.cast(size_w, tf.float32)
    y, x = ys[None, :, None], xs[None, None, :]  # (1, H, 1), (1, 1, W)
    kind = _uniform(_sub(seed, 0), [b], 0.0, 1.0)[:, None, None]
    cy = _uniform(_sub(seed, 1), [b], 0.3, 0.75)[:, None, None]
    cx = _uniform(_sub(seed, 2), [b], 0.25, 0.75)[:, None, None]
    half = _uniform(_sub(seed, 3), [b], 0.12, 0.22)[:, None, None]
    block = (tf.abs(y - cy) < half) & (tf.abs(x - cx) < half)
    bar_y = _uniform(_sub(seed, 4), [b], 0.33, 0.43)[:, None, None]
    eye_bar = (tf.abs(y - bar_y) < 0.08) & (x >= 0.0)
    lower = (y > _uniform(_sub(seed, 5), [b], 0.55, 0.68)[:, None, None]) & (x >= 0.0)
    mask = tf.where(kind < 0.6, block, tf.where(kind < 0.8, eye_bar, lower))
    grey = _uniform(_sub(seed, 6), [b], 0.0, 255.0)[:, None, None, None]
    return tf.where(mask[..., None], grey * tf.ones_like(images), images)


def relight(images: tf.Tensor, seed) -> tf.Tensor:
    """Gamma, a one-sided gradient light, or low contrast (a third each)."""
    b = tf.shape(images)[0]
    size_w = tf.shape(images)[2]
    x01 = images / 255.0
    kind = _uniform(_sub(seed, 0), [b], 0.0, 1.0)[:, None, None, None]
    log_gamma = _uniform(_sub(seed, 1), [b], math.log(0.35), math.log(2.8))
    gamma = tf.exp(log_gamma)[:, None, None, None]
    gamma_img = tf.pow(tf.maximum(x01, 1e-6), gamma)
    xs = (tf.cast(tf.range(size_w), tf.float32) + 0.5) / tf.cast(size_w, tf.float32)
    side = tf.sign(_uniform(_sub(seed, 2), [b], -1.0, 1.0))[:, None]
    ramp = tf.where(side > 0, xs[None, :], 1.0 - xs[None, :])  # (B, W)
    floor = _uniform(_sub(seed, 3), [b], 0.1, 0.4)[:, None]
    light = (floor + (1.0 - floor) * ramp)[:, None, :, None]
    grad_img = x01 * light
    contrast = _uniform(_sub(seed, 4), [b], 0.25, 0.55)[:, None, None, None]
    mean = tf.reduce_mean(x01, axis=[1, 2, 3], keepdims=True)
    low_img = mean + (x01 - mean) * contrast
    out = tf.where(kind < 1 / 3, gamma_img, tf.where(kind < 2 / 3, grad_img, low_img))
    return tf.clip_by_value(out * 255.0, 0.0, 255.0)


def warp_pose(images: tf.Tensor, seed) -> tf.Tensor:
    """A perspective warp (yaw/pitch-like) with an in-plane rotation."""
    b = tf.shape(images)[0]
    h = tf.cast(tf.shape(images)[1], tf.float32)
    w = tf.cast(tf.shape(images)[2], tf.float32)
    angle = _uniform(_sub(seed, 0), [b], -30.0, 30.0) * (math.pi / 180.0)
    # perspective: |p| up to 0.35 of the image's size per axis
    px = _uniform(_sub(seed, 1), [b], -0.35, 0.35) / w
    py = _uniform(_sub(seed, 2), [b], -0.2, 0.2) / h
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = w / 2.0, h / 2.0
    # Output (x, y) reads input c + R (x - c) / k, k = 1 + px (x - cx) + py (y - cy):
    # a rotation about the centre seen through a tilted plane. As the projective
    # transform [a0 a1 a2 b0 b1 b2 c0 c1] (input = (a.x, b.x) / (c.x + 1)):
    k0 = 1.0 - px * cx - py * cy
    rows = [
        cx * px + cos,
        cx * py - sin,
        cx * k0 - cos * cx + sin * cy,
        cy * px + sin,
        cy * py + cos,
        cy * k0 - sin * cx - cos * cy,
        px,
        py,
    ]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=tf.stack(rows, axis=1) / k0[:, None],
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
    return tf.clip_by_value(out, 0.0, 255.0)


def make_views(images: tf.Tensor, seed, kinds=VIEW_KINDS) -> tf.Tensor:
    """Perturbed views of (B, H, W, 3) float 0..255 images, one kind per image
    drawn uniformly from `kinds`; deterministic under `seed` (shape (2,) ints)."""
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in VIEW_KINDS]
    if not kinds or unknown:
        raise ValueError(
            f"Expected view kinds among {VIEW_KINDS}. Received: {list(kinds)}"
        )
    images = tf.convert_to_tensor(images, tf.float32)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
    fns = {"occlusion": occlude, "illumination": relight, "pose": warp_pose}
    outs = [fns[k](images, _sub(seed, 10 + VIEW_KINDS.index(k))) for k in kinds]
    if len(outs) == 1:
        return outs[0]
    b = tf.shape(images)[0]
    pick = tf.random.stateless_uniform([b], _sub(seed, 99), 0, len(kinds), tf.int32)
    out = outs[0]
    for i, other in enumerate(outs[1:], start=1):
        out = tf.where((pick == i)[:, None, None, None], other, out)
    return out


def read_identity_folders(root: str) -> dict:
    """CFP layout: `<root>/<identity>/frontal/*` and `<root>/<identity>/profile/*`.

    Returns {'identities': names, 'frontal': [(path, id)], 'profile': [(path, id)]}.
    Missing folders, empty folders and a root without identities are DataErrors
    naming the folder.
    """
    if not os.path.isdir(root):
        raise DataError(f"--identity_data_dir={root}: no such folder")
    names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not names:
        raise DataError(
            f"--identity_data_dir={root}: no identity folders "
            "(expected <identity>/frontal/ and <identity>/profile/)"
        )
    out = {"identities": names, "frontal": [], "profile": []}
    for i, name in enumerate(names):
        for view in ("frontal", "profile"):
            folder = os.path.join(root, name, view)
            if not os.path.isdir(folder):
                raise DataError(
                    f"--identity_data_dir: {folder} is missing (CFP layout: every "
                    "identity needs frontal/ and profile/ folders)"
                )
            files = sorted(
                os.path.join(folder, f)
                for f in os.listdir(folder)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not files:
                raise DataError(f"--identity_data_dir: {folder} holds no images")
            out[view] += [(f, i) for f in files]
    return out


def identity_pairs(folders: dict, seed: int = 0) -> tuple[list, list, np.ndarray]:
    """Every frontal image paired with a random profile image of its identity."""
    rng = np.random.default_rng(seed)
    profiles: dict[int, list[str]] = {}
    for path, i in folders["profile"]:
        profiles.setdefault(i, []).append(path)
    frontal = [p for p, _ in folders["frontal"]]
    ids = np.array([i for _, i in folders["frontal"]], np.int64)
    profile = [profiles[i][rng.integers(len(profiles[i]))] for i in ids]
    return frontal, profile, ids


def view_kinds(config) -> tuple[str, ...]:
    """The kinds of perturbed view of `--view_kinds`, in order."""
    return tuple(k.strip() for k in config.generator.view_kinds.split(",") if k.strip())
