"""The built-in data set: face-like images the project draws itself.

Each image is a cartoon face of one identity (face shape, skin tone, eye spacing and
size, brow thickness) showing one of seven expressions at an intensity, seen under a
pose (yaw squash and in-plane rotation), an illumination (gamma, one-sided light) and
maybe an occluder (a block, an eye bar or a lower-face mask), plus sensor noise. The
expression lives in brows, eyes and mouth; weak intensities, occluders and pose make
it hard enough that a model has to learn, and the cues are clear enough that a small
CNN gets well above chance in minutes on a CPU.

Everything is deterministic under a seed. `render_face` is public so that the
invariant feature generator can draw frontal and perturbed views of one identity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from ean_tf.data import ferplus

CLASS_NAMES = ferplus.CLASS_NAMES[:7]  # the seven basic expressions
RENDER_SIZE = 64
_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Identity:
    face_w: float  # half-width of the face ellipse, fraction of the image
    face_h: float
    skin: float  # grey level of the skin, 0..255
    eye_dx: float  # half distance between the eyes
    eye_r: float
    brow_t: int  # brow thickness in render pixels
    mouth_w: float

    @staticmethod
    def sample(rng: np.random.Generator) -> Identity:
        return Identity(
            face_w=rng.uniform(0.30, 0.38),
            face_h=rng.uniform(0.38, 0.46),
            skin=rng.uniform(120, 210),
            eye_dx=rng.uniform(0.13, 0.17),
            eye_r=rng.uniform(0.035, 0.05),
            brow_t=int(rng.integers(2, 5)),
            mouth_w=rng.uniform(0.11, 0.16),
        )


@dataclasses.dataclass(frozen=True)
class View:
    yaw: float = 0.0  # -1..1, squashes and shifts the face sideways
    roll: float = 0.0  # in-plane rotation, degrees
    gamma: float = 1.0
    light: float = 0.0  # -1..1, one-sided light gradient strength and side
    occlusion: str = "none"  # none | block | eye_bar | lower_mask
    occ_x: float = 0.5
    occ_y: float = 0.5

    @staticmethod
    def sample(rng: np.random.Generator, perturbed: bool = False) -> View:
        s = 1.0 if perturbed else 0.35
        occ_p = 0.6 if perturbed else 0.12
        occlusion = "none"
        if rng.random() < occ_p:
            occlusion = str(
                rng.choice(["block", "eye_bar", "lower_mask"], p=[0.6, 0.2, 0.2])
            )
        return View(
            yaw=float(rng.uniform(-0.6, 0.6) * s),
            roll=float(rng.normal(0, 12 * s)),
            gamma=float(np.exp(rng.normal(0, 0.35 * s))),
            light=float(rng.uniform(-0.7, 0.7) * s),
            occlusion=occlusion,
            occ_x=float(rng.uniform(0.25, 0.75)),
            occ_y=float(rng.uniform(0.3, 0.75)),
        )


def _draw_expression(
    img, ident: Identity, expression: int, intensity: float, scale: int
):
    import cv2

    S = RENDER_SIZE * scale
    px = lambda v: int(round(v * S))
    cx, cy = S // 2, S // 2
    k = intensity
    dark = 30
    eye_y = cy - px(0.08)
    # Eyes: wide for surprise/fear, narrow for happiness/disgust/anger.
    open_ = {
        0: 1.0,
        1: 1 - 0.5 * k,
        2: 1 + 0.6 * k,
        3: 0.9,
        4: 1 - 0.35 * k,
        5: 1 - 0.45 * k,
        6: 1 + 0.5 * k,
    }[expression]
    for side in (-1, 1):
        ex = cx + side * px(ident.eye_dx)
        r = max(px(ident.eye_r), 2)
        cv2.ellipse(
            img,
            (ex, eye_y),
            (r + scale, max(int(r * open_), 1)),
            0,
            0,
            360,
            235,
            -1,
            cv2.LINE_AA,
        )
        cv2.circle(img, (ex, eye_y), max(r // 2, 1), dark, -1, cv2.LINE_AA)
    # Brows: (inner, outer) heights relative to the eye, in face fractions.
    raise_ = {
        0: (0.0, 0.0),
        1: (0.01, 0.01),
        2: (0.06, 0.06),
        3: (0.05, -0.02),
        4: (-0.05, 0.02),
        5: (-0.03, -0.01),
        6: (0.06, 0.03),
    }[expression]
    for side in (-1, 1):
        inner = (cx + side * px(ident.eye_dx - 0.06), eye_y - px(0.08 + k * raise_[0]))
        outer = (cx + side * px(ident.eye_dx + 0.07), eye_y - px(0.08 + k * raise_[1]))
        cv2.line(img, inner, outer, dark, ident.brow_t * scale, cv2.LINE_AA)
    # Nose.
    cv2.line(
        img,
        (cx, cy - px(0.02)),
        (cx - px(0.02), cy + px(0.08)),
        dark + 40,
        scale,
        cv2.LINE_AA,
    )
    if expression == 5:  # disgust: nose wrinkle
        for dy in (0.0, 0.025):
            cv2.line(
                img,
                (cx - px(0.05), cy + px(0.02 + dy)),
                (cx - px(0.015), cy + px(0.035 + dy)),
                dark + 30,
                scale,
                cv2.LINE_AA,
            )
    # Mouth.
    my, mw = cy + px(0.2), px(ident.mouth_w)
    xs = np.linspace(-1, 1, 21)
    if expression in (2, 6):  # surprise: round O; fear: wide stretched opening
        h = px(0.03 + 0.07 * k) if expression == 2 else px(0.02 + 0.04 * k)
        w = int(mw * (0.55 if expression == 2 else 1.15))
        cv2.ellipse(
            img, (cx, my), (max(w, 2), max(h, 2)), 0, 0, 360, dark, -1, cv2.LINE_AA
        )
        return
    curve = {0: 0.0, 1: 0.09, 3: -0.07, 4: -0.015, 5: 0.0}[expression] * k
    ys = -curve * (xs**2) + curve * 0.5
    if expression == 5:  # disgust: one corner raised
        ys = ys - 0.06 * k * np.clip(xs, 0, None)
    width = 1.0 if expression != 4 else 0.8
    pts = np.stack([cx + xs * mw * width, my + ys * S], 1).astype(np.int32)
    cv2.polylines(img, [pts], False, dark, 2 * scale, cv2.LINE_AA)


def render_face(
    ident: Identity,
    expression: int,
    intensity: float,
    view: View,
    rng: np.random.Generator,
    size: int = RENDER_SIZE,
) -> np.ndarray:
    """One face image, (size, size, 3) uint8 RGB (grey faces, coloured occluders)."""
    import cv2

    scale = 2  # supersampling for anti-aliasing
    S = RENDER_SIZE * scale
    img = np.full((S, S), rng.uniform(40, 110), np.float32)
    img += rng.normal(0, 6, (8, 8)).repeat(S // 8, 0).repeat(S // 8, 1)  # background
    face = np.full((S, S), 0, np.uint8)
    cv2.ellipse(
        face,
        (S // 2, S // 2 + 2 * scale),
        (int(ident.face_w * S), int(ident.face_h * S)),
        0,
        0,
        360,
        255,
        -1,
        cv2.LINE_AA,
    )
    canvas = np.full((S, S), ident.skin, np.uint8)
    _draw_expression(canvas, ident, expression, intensity, scale)
    alpha = face.astype(np.float32) / 255
    img = img * (1 - alpha) + canvas.astype(np.float32) * alpha
    # Pose: yaw squashes one side, roll rotates.
    yaw = view.yaw
    src = np.float32([[0, 0], [S, 0], [0, S], [S, S]])
    sq = abs(yaw) * 0.18 * S
    if yaw >= 0:
        dst = np.float32([[0, 0], [S - 2 * sq, sq], [0, S], [S - 2 * sq, S - sq]])
    else:
        dst = np.float32([[2 * sq, sq], [S, 0], [2 * sq, S - sq], [S, S]])
    dst += np.float32([yaw * 0.06 * S, 0])
    warp = cv2.getPerspectiveTransform(src, dst)
    img = cv2.warpPerspective(img, warp, (S, S), borderMode=cv2.BORDER_REPLICATE)
    rot = cv2.getRotationMatrix2D((S / 2, S / 2), view.roll, 1.0)
    img = cv2.warpAffine(img, rot, (S, S), borderMode=cv2.BORDER_REPLICATE)
    # Illumination: one-sided gradient light, then gamma.
    ramp = np.linspace(-1, 1, S, dtype=np.float32)[None, :] * view.light
    img = img * (1 + 0.6 * ramp)
    img = 255 * np.clip(img / 255, 0, 1) ** view.gamma
    rgb = np.repeat(img[..., None], 3, axis=2)
    # Occlusion, drawn in colour so grey-to-RGB paths are exercised.
    colour = rng.uniform(0, 255, 3)
    if view.occlusion == "block":
        w = int(S * rng.uniform(0.2, 0.35))
        x0, y0 = int(view.occ_x * S - w / 2), int(view.occ_y * S - w / 2)
        rgb[max(y0, 0) : y0 + w, max(x0, 0) : x0 + w] = colour
    elif view.occlusion == "eye_bar":
        y0 = int(S * 0.34)
        rgb[y0 : y0 + int(S * 0.1), int(S * 0.12) : int(S * 0.88)] = colour
    elif view.occlusion == "lower_mask":
        y0 = int(S * 0.62)
        rgb[y0 : int(S * 0.92), int(S * 0.2) : int(S * 0.8)] = colour
    rgb += rng.normal(0, 7, rgb.shape)
    rgb = cv2.resize(np.clip(rgb, 0, 255), (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def sample_example(
    rng: np.random.Generator, identities: list[Identity], perturbed: bool = False
):
    """Draws (image, expression, identity id) from the built-in distribution."""
    ident_id = int(rng.integers(len(identities)))
    expression = int(rng.integers(len(CLASS_NAMES)))
    intensity = float(rng.uniform(0.35, 1.0))
    view = View.sample(rng, perturbed)
    image = render_face(identities[ident_id], expression, intensity, view, rng)
    return image, expression, ident_id


def generate(
    out_dir: str, train_size: int, val_size: int, num_identities: int, seed: int = 0
) -> str:
    """Writes the data set as PNGs plus `labels.csv`; returns the CSV's path.

    The folder name encodes every parameter, so a finished folder is reused and a
    changed parameter gets a new one. Written to a temporary folder and renamed, so
    an interrupted generation never leaves a half data set behind.
    """
    import cv2

    key = json.dumps([_VERSION, train_size, val_size, num_identities, seed])
    name = "default-" + hashlib.sha1(key.encode()).hexdigest()[:10]
    final = os.path.join(out_dir, name)
    csv_path = os.path.join(final, "labels.csv")
    if os.path.isfile(csv_path):
        return csv_path
    tmp = f"{final}.tmp-{os.getpid()}"
    os.makedirs(os.path.join(tmp, "images"), exist_ok=True)
    rng = np.random.default_rng(seed)
    identities = [Identity.sample(rng) for _ in range(num_identities)]
    rows = ["path,label,split,identity"]
    for split, n in (("train", train_size), ("val", val_size)):
        split_rng = np.random.default_rng([seed, 1 if split == "train" else 2])
        for i in range(n):
            image, expression, ident = sample_example(split_rng, identities)
            rel = f"images/{split}_{i:06d}.png"
            cv2.imwrite(os.path.join(tmp, rel), image[..., ::-1])
            rows.append(f"{rel},{CLASS_NAMES[expression]},{split},{ident}")
    with open(os.path.join(tmp, "labels.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    with open(os.path.join(tmp, "params.json"), "w") as f:
        json.dump(
            {
                "version": _VERSION,
                "train_size": train_size,
                "val_size": val_size,
                "identities": num_identities,
                "seed": seed,
            },
            f,
        )
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return csv_path
