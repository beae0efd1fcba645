"""Find every face in photos, align it, classify it: `Recognizer` (the Python
API) and `--mode=predict`.

    >>> recognizer = ean_tf.Recognizer()          # the shipped FERPlus model
    >>> for face in recognizer("photo.jpg"):      # a path or an RGB array
    ...     print(face.box, face.label, face.probabilities[face.label])

The classifier is a shipped model (`ean_tf.pretrained`), a `.keras` model, a run
folder (its `model.keras`) or an exported SavedModel folder (its
`predict_images` signature). Faces are found and aligned by the same MTCNN
aligner as `--mode=prepare`, at the model's input size.

`--mode=predict` takes a file, a folder (its images, sorted) or a glob, and
writes a CSV or JSON file (by extension) with one row per face (file, face box,
class, probabilities); with `annotate_dir`, copies of the photos with boxes and
labels drawn. Unreadable files, images of more pixels than `max_pixels` (read
from the header, before anything is decoded) and photos without a face are
reported in the output, never fatal. Where the output and the annotated copies
go is checked before any photo is read.
"""

from __future__ import annotations

import csv
import dataclasses
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


def model_path(model: str = "") -> str:
    """The file or folder `model` names: empty or a shipped model's name (the
    shipped file), a run folder (its model.keras), else `model` itself."""
    from ean_tf import pretrained

    if not model:
        return pretrained.path()
    if model in pretrained.MODELS and not os.path.exists(model):
        return pretrained.path(model)
    run_model = os.path.join(model, "model.keras")
    if os.path.isdir(model) and os.path.isfile(run_model):
        return run_model
    return model


class Classifier:
    """Wraps a `.keras` model or a SavedModel: (B, S, S, 3) 0..255 -> probs;
    `served_graph` the graph a `.keras` model serves (empty: its own). A
    SavedModel serves the graph it was exported with."""

    def __init__(self, path: str, served_graph: str = "", label_weight: float = -1.0):
        import tensorflow as tf

        self.training_data = ""
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
            self.training_data = self.model.training_data
            self.kind = "keras"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        images = tf.constant(np.asarray(images, np.float32))
        if self.kind == "savedmodel":
            return self._fn(images=images)["probabilities"].numpy()
        return tf.nn.softmax(self.model(images)).numpy()


@dataclasses.dataclass(frozen=True)
class Face:
    """One face of a photo: its box (x, y, width, height in the photo's pixels),
    the most probable class, every class's probability, and the face detector's
    confidence (0 for the centre crop of a photo where none was found)."""

    box: tuple[int, int, int, int]
    label: str
    probabilities: dict[str, float]
    confidence: float


class Recognizer:
    """Finds, aligns and classifies every face of a photo.

    model: empty for the shipped FERPlus model, a shipped model's name, a run
    folder, a `.keras` file or an exported SavedModel folder. served_graph and
    label_weight: as `--served_graph` and `--served_label_weight` (a `.keras`
    model only). no_face: "skip" (a photo without a face gives no face) or
    "center" (its centre crop is classified, with confidence 0).
    """

    def __init__(
        self,
        model: str = "",
        served_graph: str = "",
        label_weight: float = -1.0,
        no_face: str = "skip",
    ):
        from ean_tf.data.align import FaceAligner

        if no_face not in ("skip", "center"):
            raise ValueError(f"no_face: expected skip or center. Received: {no_face!r}")
        self.path = model_path(model)
        self.classifier = Classifier(self.path, served_graph, label_weight)
        self.class_names = self.classifier.class_names
        self.aligner = FaceAligner(self.classifier.image_size)
        self.no_face = no_face
        if self.classifier.training_data == "default":
            log.warning(
                "%s was trained on the built-in synthetic faces: its answers on "
                "photos mean nothing (use the shipped FERPlus model, or train on "
                "FERPlus).",
                self.path,
            )

    def __call__(self, image) -> list[Face]:
        """The faces of `image`: a path, or an (H, W, 3) uint8 RGB array."""
        if isinstance(image, (str, os.PathLike)):
            image = read_rgb(os.fspath(image))
        rgb = np.asarray(image)
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(
                "Expected an (H, W, 3) uint8 RGB image. Received: "
                f"{rgb.dtype} array of shape {rgb.shape}"
            )
        return self.faces(rgb)

    def faces(self, rgb: np.ndarray) -> list[Face]:
        from ean_tf.data.align import center_crop

        found = self.aligner.faces(rgb)
        if not found and self.no_face == "center":
            h, w = rgb.shape[:2]
            side = min(h, w)
            found = [
                {
                    "box": [(w - side) // 2, (h - side) // 2, side, side],
                    "confidence": 0.0,
                    "aligned": center_crop(rgb, self.classifier.image_size),
                }
            ]
        if not found:
            return []
        probs = self.classifier(np.stack([f["aligned"] for f in found]))
        names = self.class_names
        return [
            Face(
                box=tuple(int(v) for v in face["box"]),
                label=names[int(np.argmax(p))],
                probabilities={n: float(q) for n, q in zip(names, p, strict=True)},
                confidence=float(face["confidence"]),
            )
            for face, p in zip(found, probs, strict=True)
        ]


def read_rgb(path: str) -> np.ndarray:
    """The photo at `path` as an (H, W, 3) uint8 RGB array."""
    import cv2

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    too_large = pixel_problem(path, DEFAULT_MAX_IMAGE_PIXELS)
    if too_large:
        raise ValueError(f"{path}: {too_large}")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: unreadable (not an image?)")
    return np.ascontiguousarray(image[..., ::-1])


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

    writable_file(output, "--output")
    if annotate_dir:
        writable_folder(annotate_dir, "--annotate_dir")
    files = list_images(images)
    recognizer = Recognizer(model_path, served_graph, label_weight, no_face)
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
        faces = recognizer.faces(np.ascontiguousarray(image[..., ::-1]))
        if not faces or faces[0].confidence == 0.0:
            problems.append({"file": path, "problem": "no face found"})
        for face in faces:
            rows.append(
                {
                    "file": path,
                    "box": list(face.box),
                    "face_confidence": round(face.confidence, 4),
                    "class_index": recognizer.class_names.index(face.label),
                    "class_name": face.label,
                    "probabilities": {
                        n: round(q, 5) for n, q in face.probabilities.items()
                    },
                }
            )
        if annotate_dir:
            _annotate(image, [r for r in rows if r["file"] == path], path, annotate_dir)
    if bar is not None:
        bar.close()
    _write(output, rows, problems, recognizer.class_names)
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
