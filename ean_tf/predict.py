"""`--mode=predict`: find every face in photos, align it, classify it.

Input: a file, a folder (its images, sorted) or a glob. The classifier is a `.keras`
model or an exported SavedModel folder (its `predict_images` signature). Faces are
found and aligned by the same MTCNN aligner as `--mode=prepare`, at the model's
input size. Output: a CSV or JSON file (by extension) with one row per face
(file, face box, class, probabilities); with `annotate_dir`, copies of the photos
with boxes and labels drawn. Unreadable files, images of more pixels than
`max_pixels` (read from the header, before anything is decoded) and photos
without a face are reported in the output, never fatal. Where the output and
the annotated copies go is checked before any photo is read.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os

import numpy as np

from ean_tf.data.base import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_MAGIC
from ean_tf.data.generic import IMAGE_EXTENSIONS
from ean_tf.files import atomic_open, atomic_path, writable_file, writable_folder

log = logging.getLogger("ean_tf")


def list_images(spec: str) -> list[str]:
    """Files named by `spec`: a file, a folder (sorted) or a glob pattern."""
    if os.path.isdir(spec):
        return sorted(
            os.path.join(spec, f)
            for f in os.listdir(spec)
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
    if os.path.isfile(spec):
        return [spec]
    matches = sorted(glob.glob(spec))
    if not matches:
        raise FileNotFoundError(f"--images={spec}: no such file, folder or pattern")
    return matches


class Classifier:
    """Wraps a `.keras` model or a SavedModel: (B, S, S, 3) 0..255 -> probs;
    `served_graph` the graph a `.keras` model serves (empty: its own). A
    SavedModel serves the graph it was exported with."""

    def __init__(self, path: str, served_graph: str = "", label_weight: float = -1.0):
        import tensorflow as tf

        saved = os.path.join(path, "saved_model.pb")
        if os.path.isdir(path) and os.path.isfile(saved):
            loaded = tf.saved_model.load(path)
            exported = getattr(loaded, "served_graph", None)
            exported = exported.numpy().decode() if exported is not None else "?"
            if served_graph and served_graph != exported:
                raise ValueError(
                    f"--served_graph={served_graph}: {path} is a SavedModel, which "
                    f"serves the graph it was exported with ({exported}); export "
                    f"the .keras model again with --served_graph={served_graph}."
                )
            weight = getattr(loaded, "nearest_label_weight", None)
            weight = float(weight.numpy()) if weight is not None else None
            if label_weight >= 0 and (
                weight is None or abs(weight - label_weight) > 1e-6
            ):
                raise ValueError(
                    f"--served_label_weight={label_weight:g}: {path} is a SavedModel, "
                    "which answers with the label weight it was exported with "
                    f"({'unrecorded' if weight is None else f'{weight:g}'}); export "
                    "the .keras model again with "
                    f"--served_label_weight={label_weight:g}."
                )
            self._fn = loaded.signatures["predict_images"]
            self._loaded = loaded
            self.image_size = int(loaded.input_size.numpy())
            self.class_names = [n.decode() for n in loaded.class_names.numpy()]
            self.kind = "savedmodel"
        else:
            from ean_tf.runs import load_model
            from ean_tf.served import serving_model

            self.model = serving_model(
                load_model(path), served_graph, path, label_weight
            )
            self.image_size = self.model.image_size
            self.class_names = list(self.model.class_names)
            self.kind = "keras"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        images = tf.constant(np.asarray(images, np.float32))
        if self.kind == "savedmodel":
            return self._fn(images=images)["probabilities"].numpy()
        return tf.nn.softmax(self.model(images)).numpy()


def predict(
    model_path: str,
    images: str,
    output: str,
    annotate_dir: str = "",
    no_face: str = "center",
    progress: bool = True,
    served_graph: str = "",
    label_weight: float = -1.0,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> dict:
    """Runs the pipeline above; returns {"faces": rows, "problems": [...]}."""
    import cv2

    from ean_tf.data.align import FaceAligner, center_crop

    writable_file(output, "--output")
    if annotate_dir:
        writable_folder(annotate_dir, "--annotate_dir")
    files = list_images(images)
    classifier = Classifier(model_path, served_graph, label_weight)
    aligner = FaceAligner(classifier.image_size)
    rows, problems = [], []
    bar = None
    if progress and len(files) > 1:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="image", desc="predict")
    for path in files:
        if bar is not None:
            bar.update(1)
        too_large = pixel_problem(path, max_pixels)
        if too_large:
            problems.append({"file": path, "problem": too_large})
            continue
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            problems.append({"file": path, "problem": "unreadable (not an image?)"})
            continue
        rgb = np.ascontiguousarray(image[..., ::-1])
        faces = aligner.faces(rgb)
        if not faces:
            problems.append({"file": path, "problem": "no face found"})
            if no_face != "center":
                continue
            h, w = rgb.shape[:2]
            side = min(h, w)
            faces = [
                {
                    "box": [(w - side) // 2, (h - side) // 2, side, side],
                    "confidence": 0.0,
                    "aligned": center_crop(rgb, classifier.image_size),
                }
            ]
        probs = classifier(np.stack([f["aligned"] for f in faces]))
        for face, p in zip(faces, probs, strict=True):
            index = int(np.argmax(p))
            rows.append(
                {
                    "file": path,
                    "box": [int(v) for v in face["box"]],
                    "face_confidence": round(float(face["confidence"]), 4),
                    "class_index": index,
                    "class_name": classifier.class_names[index],
                    "probabilities": {
                        n: round(float(q), 5)
                        for n, q in zip(classifier.class_names, p, strict=True)
                    },
                }
            )
        if annotate_dir:
            _annotate(image, [r for r in rows if r["file"] == path], path, annotate_dir)
    if bar is not None:
        bar.close()
    _write(output, rows, problems, classifier.class_names)
    return {"faces": rows, "problems": problems, "output": output}


def pixel_problem(path: str, limit: int) -> str:
    """The problem of a JPEG, PNG, BMP or GIF file of more than `limit` pixels, by
    its header, as serving reads it; "" otherwise (other files go to OpenCV)."""
    from ean_tf.data.decode import file_pixels, too_many_pixels

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""  # OpenCV reports it unreadable
    if not data.startswith(IMAGE_MAGIC):
        return ""
    pixels = file_pixels(data)
    return too_many_pixels(pixels, limit) if pixels and pixels > limit else ""


def _annotate(image, rows, path, out_dir):
    import cv2

    os.makedirs(out_dir, exist_ok=True)
    canvas = image.copy()
    scale = max(0.5, min(canvas.shape[:2]) / 600)  # legible on large photos
    thick = max(1, round(2 * scale))
    for row in rows:
        x, y, w, h = row["box"]
        p = max(row["probabilities"].values())
        text = f"{row['class_name']} {p:.2f}"
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (0, 200, 0), thick)
        # White text on a filled green label above the box (inside it at the top
        # edge of the photo), readable on any background.
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        top = y - th - base - 4 if y - th - base - 4 >= 0 else y
        cv2.rectangle(
            canvas, (x, top), (x + tw + 4, top + th + base + 4), (0, 160, 0), -1
        )
        cv2.putText(
            canvas,
            text,
            (x + 2, top + th + 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    target = os.path.join(out_dir, os.path.basename(path))
    if not cv2.haveImageWriter(target):  # a format OpenCV reads but cannot write
        target = os.path.splitext(target)[0] + ".png"
    with atomic_path(target) as tmp:
        if not cv2.imwrite(tmp, canvas):
            raise OSError(f"--annotate_dir: could not write {target}")


def _write(output: str, rows, problems, class_names) -> None:
    if output.endswith(".json"):
        with atomic_open(output) as f:
            json.dump({"faces": rows, "problems": problems}, f, indent=2)
        return
    with atomic_open(output, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "file",
                "x",
                "y",
                "w",
                "h",
                "face_confidence",
                "class_index",
                "class_name",
                *class_names,
                "problem",
            ]
        )
        for r in rows:
            writer.writerow(
                [
                    r["file"],
                    *r["box"],
                    r["face_confidence"],
                    r["class_index"],
                    r["class_name"],
                    *[r["probabilities"][n] for n in class_names],
                    "",
                ]
            )
        for p in problems:
            writer.writerow(
                [
                    p["file"],
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    *[""] * len(class_names),
                    p["problem"],
                ]
            )
