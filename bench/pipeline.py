"""Input pipeline throughput on FERPlus next to the training step's, and MTCNN.

    python bench/pipeline.py                      # FERPlus at 48 and 112 px
    python bench/pipeline.py --data_dir=PATH/ferplus --batches=50

The pipeline is measured alone (decode, resize, flip, pad-crop, batch) over
`--batches` batches of 64 on all cores; `bench/speed.py` gives the training step's
images/s at the same sizes. MTCNN: detection + alignment images/s of
`--mode=prepare` on `--mtcnn_images` FERPlus validation images.
"""

from __future__ import annotations

import time

import common
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", common.FERPLUS_DIR, "FERPlus root.")
flags.DEFINE_list("sizes", ["48", "112"], "Image sizes.")
flags.DEFINE_integer("batches", 100, "Batches of 64 timed per size.")
flags.DEFINE_integer("mtcnn_images", 100, "Images for the MTCNN measurement (0: skip).")
flags.DEFINE_string("out_dir", common.RESULTS_DIR, "Where the JSON goes.")
flags.DEFINE_string("name", "pipeline", "Result file name.")


def main(argv):
    del argv
    import numpy as np

    from ean_tf.data import ferplus
    from ean_tf.data.pipeline import make_dataset

    train = ferplus.read_split(FLAGS.data_dir, "FER2013Train")
    rows = []
    for size in map(int, FLAGS.sizes):
        ds = make_dataset(
            train, size, 64, training=True, crop_pad=4, drop_remainder=True
        )
        it = iter(ds)
        for _ in range(3):
            next(it)
        start = time.perf_counter()
        for _ in range(FLAGS.batches):
            images, _ = next(it)
        rate = 64 * FLAGS.batches / (time.perf_counter() - start)
        rows.append({"image_size": size, "pipeline_images_per_s": round(rate, 1)})
        print(rows[-1], flush=True)
    result = {"dataset": "ferplus FER2013Train", "rows": rows}
    if FLAGS.mtcnn_images:
        import cv2

        from ean_tf.data.align import FaceAligner

        valid = ferplus.read_split(FLAGS.data_dir, "FER2013Valid")
        aligner = FaceAligner(112)
        paths = valid.paths[: FLAGS.mtcnn_images]
        aligner.faces(cv2.imread(paths[0])[..., ::-1])  # warm-up
        found = 0
        start = time.perf_counter()
        for path in paths:
            found += bool(aligner.faces(cv2.imread(path)[..., ::-1]))
        seconds = time.perf_counter() - start
        result["mtcnn"] = {
            "images": len(paths),
            "faces_found": found,
            "images_per_s": round(len(paths) / seconds, 2),
            "input": "FER2013Valid 48 px, upscaled to 80 px",
        }
        print(result["mtcnn"], flush=True)
    result["rows"] = rows
    common.write_result(FLAGS.name, result, FLAGS.out_dir)
    del np


if __name__ == "__main__":
    app.run(main)
