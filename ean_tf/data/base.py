"""The one in-memory form every reader returns, and the data errors."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re

import numpy as np

# The most pixels (width x height) of an image read for training, prediction or
# serving, unless --max_image_pixels says otherwise.
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096


class DataError(ValueError):
    """Bad input data; the message names the file (and line) at fault."""


# What TensorFlow adds to an error's message for its own developers: the trace of
# where a graph op was defined, and the names of internal functions and ops.
_TF_NOISE = re.compile(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]|\s+name:\s*\S*$")
_TF_TRACE = ("Graph execution error", "Detected at node", "File ", "[[")


def error_text(error) -> str:
    """The line of a TensorFlow error (or any error) that says what went wrong,
    without TensorFlow's internal op and function names (`{{function_node ...}}`,
    `[Op:...]`) or the trace of where its graph was built."""
    message = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(_TF_TRACE)]
    text = _TF_NOISE.sub("", useful[0] if useful else "").strip()
    return text.rstrip(".:;, ") or type(error).__name__


@dataclasses.dataclass
class Examples:
    """A split of a data set: one row per image.

    paths:       N image files.
    labels:      (N,) int class ids in [0, C).
    class_names: C names, index = class id.
    targets:     (N, C) float label distributions (FERPlus soft modes), or None.
    identities:  (N,) int identity ids (built-in data, CFP layout), or None.
    boxes:       (N, 4) int face boxes x, y, w, h to crop before resizing, or None.
    clean_labels:(N,) labels before noise was added, or None for clean data.
    records:     TFRecord shards holding the images (prepared data), or None when
                 the images are the files in `paths`.
    record_indices: (N,) sorted `index` field of each row's record.
    """

    paths: list[str]
    labels: np.ndarray
    class_names: tuple[str, ...]
    targets: np.ndarray | None = None
    identities: np.ndarray | None = None
    boxes: np.ndarray | None = None
    clean_labels: np.ndarray | None = None
    records: list[str] | None = None
    record_indices: np.ndarray | None = None
    source: str = ""

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int64)
        if len(self.paths) != len(self.labels):
            raise DataError(
                f"{self.source}: {len(self.paths)} paths but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def soft_targets(self) -> np.ndarray:
        """(N, C) float32 targets: the label distribution, or one-hot labels."""
        if self.targets is not None:
            return self.targets.astype(np.float32)
        return np.eye(self.num_classes, dtype=np.float32)[self.labels]

    def select(self, keep: np.ndarray) -> Examples:
        """The rows where `keep` (bool (N,) or int indices) holds."""
        idx = np.arange(len(self))[keep] if np.asarray(keep).dtype == bool else keep
        pick = lambda a: None if a is None else np.asarray(a)[idx]
        return dataclasses.replace(
            self,
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            targets=pick(self.targets),
            identities=pick(self.identities),
            boxes=pick(self.boxes),
            clean_labels=pick(self.clean_labels),
            record_indices=pick(self.record_indices),
        )

    def shuffle_order(self, seed: int) -> np.ndarray:
        """A fixed permutation of the rows under `seed`: the order in which the
        `batch` graph is evaluated, during training and after (a class-major
        folder would otherwise put same-class images in the same batches)."""
        return np.random.default_rng(seed).permutation(len(self))

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}


IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"BM", b"GIF87a", b"GIF89a")


def _image_problem(path: str, max_pixels: int) -> str | None:
    """Why `path` is not a readable image, or None when it is: its size read from
    its header first (as serving reads it: more than `max_pixels` is refused
    before decoding), then decoded by the decoder training uses (OpenCV only
    warns about some damage, a PNG's CRC)."""
    import tensorflow as tf

    # local: TensorFlow loads lazily
    from ean_tf.data.decode import decode_image, file_pixels, too_many_pixels

    if not os.path.exists(path):
        return "file not found"
    if os.path.getsize(path) == 0:
        return "empty file"
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(IMAGE_MAGIC):
        return "not a JPEG, PNG, BMP or GIF image"
    pixels = file_pixels(data)
    if pixels is None:
        return "corrupt image header, does not decode"
    if pixels > max_pixels:
        return too_many_pixels(pixels, max_pixels)
    try:
        image = decode_image(tf.constant(data))
    except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
        return f"corrupt image, does not decode ({error_text(error)})"
    if 0 in image.shape:
        return "corrupt image, no pixels"
    return None


def check_images(
    examples: Examples,
    skip_bad: bool,
    full_decode: bool = True,
    threads: int = 8,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> tuple[Examples, list[dict]]:
    """Finds files that are missing, empty, not images, of more than `max_pixels`
    pixels, or corrupt (the last two with `full_decode`).

    Fails on the first bad file with a `DataError` naming it, unless `skip_bad`, in
    which case bad rows are dropped and returned as a report
    (`[{"path": ..., "problem": ...}]`), never silently.
    """
    if len(examples) == 0:
        raise DataError(f"{examples.source}: the split is empty")
    if full_decode:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            problems = list(
                pool.map(
                    _image_problem,
                    examples.paths,
                    [max_pixels] * len(examples),
                    chunksize=256,
                )
            )
    else:
        problems = [
            None
            if os.path.isfile(p) and os.path.getsize(p) > 0
            else ("file not found" if not os.path.exists(p) else "empty file")
            for p in examples.paths
        ]
    bad = [i for i, p in enumerate(problems) if p is not None]
    if bad and not skip_bad:
        i = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"{examples.paths[i]}: {problems[i]}{more}, listed in {examples.source}. "
            "Fix or remove it, or pass --skip_bad_images to skip and report it."
        )
    report = [{"path": examples.paths[i], "problem": problems[i]} for i in bad]
    if bad:
        keep = np.ones(len(examples), bool)
        keep[bad] = False
        examples = examples.select(keep)
        if len(examples) == 0:
            raise DataError(f"{examples.source}: no readable image left")
    return examples, report


def name_undecodable_image(
    error: Exception, splits, note: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> None:
    """A decode error inside the input pipeline names no file: finds the file
    (decoding every image of `splits` as training does) and raises a `DataError`
    naming it, followed by `note` (what was kept). Raises other errors unchanged."""
    if "decode" not in str(error).lower() and "image" not in str(error).lower():
        raise error
    for split in splits:
        try:
            check_images(split, skip_bad=False, full_decode=True, max_pixels=max_pixels)
        except DataError as bad:
            raise DataError(f"{bad} {note}") from None
    raise error
