import json
import os

import numpy as np
import pytest

from ean_tf import data as data_lib
from ean_tf.config import make_config
from ean_tf.data import align, prepare
from ean_tf.data.pipeline import make_dataset


def test_similarity_transform_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rot.T + shift
    matrix = align.similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_template_scales_with_size():
    np.testing.assert_allclose(align.template(224), align.TEMPLATE_112 * 2)


@pytest.fixture(scope="module")
def photo_dataset(tmp_path_factory):
    """A folder data set: a real photo with a face, and a texture without one."""
    import cv2
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("photos")
    face = skdata.astronaut()  # RGB, 512x512, one face
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8)
    for split in ("train", "val"):
        os.makedirs(root / split / "happiness")
        os.makedirs(root / split / "neutral")
        cv2.imwrite(str(root / split / "happiness" / "astronaut.jpg"), face[..., ::-1])
        cv2.imwrite(str(root / split / "neutral" / "texture.png"), noise)
    return root


def test_aligner_finds_the_face_in_a_real_photo():
    from skimage import data as skdata

    faces = align.FaceAligner(64).faces(skdata.astronaut())
    assert len(faces) >= 1
    x, y, w, h = faces[0]["box"]
    # The astronaut's face is in the upper middle of the photo.
    assert 120 < x + w / 2 < 300 and 50 < y + h / 2 < 200
    assert faces[0]["aligned"].shape == (64, 64, 3)
    eyes = faces[0]["landmarks"][:2]
    assert eyes[0, 0] < eyes[1, 0]  # left eye left of the right eye


def test_prepare_writes_shards_manifest_and_resumes(photo_dataset, tmp_path):
    config = make_config(
        "tiny", dataset="folder", data_dir=str(photo_dataset), image_size=48
    )
    out = str(tmp_path / "prepared")
    manifest = prepare.prepare(config.data, out, "center", progress=False)
    train = manifest["splits"]["train"]
    assert train["num_images"] == 2
    assert train["class_counts"] == {"happiness": 1, "neutral": 1}
    assert [os.path.basename(p) for p in train["no_face"]] == ["texture.png"]
    assert manifest["no_face_action"] == "center"
    on_disk = json.load(open(os.path.join(out, "manifest.json")))
    assert on_disk["splits"]["val"]["num_images"] == 2
    shard = os.path.join(out, train["shards"][0])
    stamp = os.path.getmtime(shard)
    prepare.prepare(config.data, out, "center", progress=False)  # resumes
    assert os.path.getmtime(shard) == stamp  # finished shard not redone

    # Training reads the shards, with the labels of the manifest.
    prepared = make_config("tiny", dataset="tfrecord", data_dir=out, image_size=48)
    splits = data_lib.load(prepared.data)
    assert splits.class_names == ("happiness", "neutral")
    images, targets = next(iter(make_dataset(splits.train, 48, 4, training=False)))
    assert images.shape == (2, 48, 48, 3)
    assert sorted(targets.numpy().argmax(1).tolist()) == [0, 1]
    stream = make_dataset(splits.train, 48, 2, training=True, crop_pad=2)
    images, _ = next(iter(stream))
    assert images.shape == (2, 48, 48, 3)


def test_prepare_skip_drops_faceless_images(photo_dataset, tmp_path):
    config = make_config(
        "tiny", dataset="folder", data_dir=str(photo_dataset), image_size=48
    )
    manifest = prepare.prepare(config.data, str(tmp_path / "p"), "skip", progress=False)
    assert manifest["splits"]["train"]["num_images"] == 1
    assert len(manifest["splits"]["train"]["no_face"]) == 1
