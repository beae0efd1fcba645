"""`--mode=prepare`: detect and align every face once, into TFRecord shards.

For each split, images are read by the data set's reader, the largest face is
detected with MTCNN and aligned to the template at `--image_size`, and the crops
are written as PNG bytes into `<out>/<split>-NNNNN.tfrecord` shards of
`SHARD_SIZE` images. Each shard is written to a temporary name and renamed when
complete, with a JSON sidecar of what happened to its images, so an interrupted
run resumes without redoing finished shards. `manifest.json` then lists the
shards, the class names, the counts per class and split, the parameters, and the
images where no face was found and what was done with them (`--no_face`:
`center` keeps a centre crop, `skip` drops the image).

Training reads the shards with `--dataset=tfrecord --data_dir=<out>` and never
re-detects.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from ean_tf.data.base import DataError, Examples
from ean_tf.data.records import MANIFEST, example
from ean_tf.files import atomic_path, write_json

SHARD_SIZE = 1000
log = logging.getLogger("ean_tf")


def _write_shard(
    aligner, examples: Examples, rows, path: str, size: int, no_face: str
) -> dict:
    import cv2
    import tensorflow as tf

    info = {"written": [], "no_face": [], "unreadable": []}
    with atomic_path(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
        for i in rows:
            source = examples.paths[i]
            image = cv2.imread(source, cv2.IMREAD_COLOR)
            if image is None:
                info["unreadable"].append(source)
                continue
            image = image[..., ::-1]
            if examples.boxes is not None:  # a given face box narrows the search
                x, y, w, h = (int(v) for v in examples.boxes[i])
                if w > 0 and h > 0:
                    m = max(w, h) // 4
                    image = image[max(y - m, 0) : y + h + m, max(x - m, 0) : x + w + m]
            faces = aligner.faces(image)
            if faces:
                crop = faces[0]["aligned"]
            else:
                info["no_face"].append(source)
                if no_face == "skip":
                    continue
                from ean_tf.data.align import center_crop

                crop = center_crop(image, size)
            ok, png = cv2.imencode(".png", np.ascontiguousarray(crop[..., ::-1]))
            writer.write(
                example(
                    png.tobytes(), int(i), int(examples.labels[i])
                ).SerializeToString()
            )
            info["written"].append(int(i))
        # Its report first: the shard exists only once complete, beside it.
        write_json(path + ".json", info)
    return info


def prepare(data, out_dir: str, no_face: str = "center", progress: bool = True) -> dict:
    """Aligns the training and validation splits of `data` into `out_dir`."""
    from ean_tf import data as data_lib
    from ean_tf.data.align import FaceAligner

    if no_face not in ("center", "skip"):
        raise ValueError(f"Expected no_face 'center' or 'skip'. Received: {no_face!r}")
    if data.dataset == "tfrecord":
        raise DataError(
            "--mode=prepare reads a raw data set; --dataset=tfrecord is its output"
        )
    os.makedirs(out_dir, exist_ok=True)
    train_name = data.train_split or data_lib.DEFAULT_SPLITS[data.dataset][0]
    val_name = data.val_split or data_lib.DEFAULT_SPLITS[data.dataset][1]
    aligner = FaceAligner(data.image_size)
    manifest = {
        "image_size": data.image_size,
        "source_dataset": data.dataset,
        "source_dir": os.path.abspath(data.data_dir or ""),
        "no_face_action": no_face,
        "detector": "mtcnn",
        "splits": {},
    }
    t0, processed = time.time(), 0
    for split in (train_name, val_name):
        examples = data_lib.read_split(data, split)
        n_shards = max(1, -(-len(examples) // SHARD_SIZE))
        shards, written, no_faces, unreadable = [], [], [], []
        for s in range(n_shards):
            name = f"{split}-{s:05d}-of-{n_shards:05d}.tfrecord"
            path = os.path.join(out_dir, name)
            rows = range(s * SHARD_SIZE, min((s + 1) * SHARD_SIZE, len(examples)))
            if os.path.isfile(path) and os.path.isfile(path + ".json"):
                with open(path + ".json") as f:
                    info = json.load(f)  # finished before: not redone
            else:
                info = _write_shard(
                    aligner, examples, rows, path, data.image_size, no_face
                )
                processed += len(rows)
            shards.append(name)
            written += info["written"]
            no_faces += info["no_face"]
            unreadable += info["unreadable"]
            if progress:
                rate = processed / max(time.time() - t0, 1e-6)
                print(
                    f"\r{split}: shard {s + 1}/{n_shards}, {rate:.1f} images/s",
                    end="",
                    flush=True,
                )
        if progress:
            print()
        kept = examples.select(np.asarray(sorted(written), np.int64))
        manifest["splits"][split] = {
            "shards": shards,
            "num_images": len(kept),
            "paths": kept.paths,
            "labels": kept.labels.tolist(),
            "indices": sorted(written),
            "class_counts": kept.class_counts(),
            "no_face": no_faces,
            "unreadable": unreadable,
        }
        manifest["class_names"] = list(examples.class_names)
    manifest["seconds"] = round(time.time() - t0, 1)
    manifest["images_per_second"] = round(processed / max(time.time() - t0, 1e-6), 2)
    write_json(os.path.join(out_dir, MANIFEST), manifest)
    for split, info in manifest["splits"].items():
        log.info(
            "%s: %d images (%d without a face: %s), %d unreadable",
            split,
            info["num_images"],
            len(info["no_face"]),
            no_face,
            len(info["unreadable"]),
        )
    return manifest
