import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_png

from ean_tf.data import pipeline
from ean_tf.data.base import Examples
from ean_tf.models.input_norm import normalize


def _encode(fmt, grey=False):
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30) if grey else (20, 30, 3), dtype=np.uint8)
    ok, data = cv2.imencode(fmt, image)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("fmt", [".png", ".jpg", ".bmp"])
@pytest.mark.parametrize("grey", [False, True])
def test_decode_formats_to_rgb(fmt, grey):
    image = pipeline.decode_image(tf.constant(_encode(fmt, grey)))
    assert image.shape == (20, 30, 3) and image.dtype == tf.uint8
    if grey:
        np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_decode_gif_first_frame(tmp_path):
    from PIL import Image

    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    image = pipeline.decode_image(tf.io.read_file(str(path))).numpy()
    assert image.shape == (6, 8, 3)
    assert image[..., 0].mean() > 200 and image[..., 2].mean() < 50


def test_resize_and_normalize_range():
    image = tf.constant(np.full((10, 14, 3), 255, np.uint8))
    resized = pipeline.resize_image(image, 16)
    assert resized.shape == (16, 16, 3) and float(tf.reduce_max(resized)) <= 255
    norm = normalize(resized)
    np.testing.assert_allclose(norm.numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(normalize(tf.zeros([2])).numpy(), -1.0)


def _image():
    return tf.constant(
        np.random.default_rng(1).uniform(0, 255, (16, 16, 3)), tf.float32
    )


def test_augment_deterministic_eager_and_in_tf_data():
    image, seed = _image(), tf.constant([3, 9], tf.int64)
    kw = dict(flip=True, crop_pad=4, erasing=1.0)
    eager = pipeline.augment(image, seed, **kw).numpy()
    again = pipeline.augment(image, seed, **kw).numpy()
    np.testing.assert_array_equal(eager, again)
    ds = tf.data.Dataset.from_tensors((image, seed)).map(
        lambda x, s: pipeline.augment(x, s, **kw)
    )
    np.testing.assert_array_equal(next(iter(ds)).numpy(), eager)
    other = pipeline.augment(image, tf.constant([4, 9], tf.int64), **kw).numpy()
    assert not np.array_equal(other, eager)
    assert eager.shape == (16, 16, 3)
    assert eager.min() >= 0 and eager.max() <= 255


def test_flip_only_mirrors():
    image = _image()
    outs = [
        pipeline.augment(image, tf.constant([0, i], tf.int64), flip=True).numpy()
        for i in range(8)
    ]
    mirrored = image.numpy()[:, ::-1]
    assert all(
        np.array_equal(o, image.numpy()) or np.array_equal(o, mirrored) for o in outs
    )
    assert any(np.array_equal(o, mirrored) for o in outs)


def test_crop_shifts_content_within_pad():
    image = _image()
    out = pipeline.augment(
        image, tf.constant([1, 1], tf.int64), flip=False, crop_pad=2
    ).numpy()
    padded = np.pad(image.numpy(), ((2, 2), (2, 2), (0, 0)))
    assert any(
        np.array_equal(out, padded[y : y + 16, x : x + 16])
        for y in range(5)
        for x in range(5)
    )


def test_random_erasing_changes_a_rectangle_only():
    image = _image()
    out = pipeline.random_erasing(image, tf.constant([5, 5], tf.int64), 1.0).numpy()
    changed = np.any(out != image.numpy(), axis=-1)
    ys, xs = np.nonzero(changed)
    assert changed.any()
    box = changed[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert box.mean() > 0.9  # a filled rectangle
    kept = pipeline.random_erasing(image, tf.constant([5, 5], tf.int64), 0.0)
    np.testing.assert_array_equal(kept.numpy(), image.numpy())


def test_crop_box():
    image = tf.reshape(tf.range(100), (10, 10, 1))
    out = pipeline.crop_box(image, tf.constant([2, 3, 4, 5])).numpy()
    assert out.shape == (5, 4, 1) and out[0, 0, 0] == 32
    assert pipeline.crop_box(image, tf.constant([0, 0, 0, 0])).shape == (10, 10, 1)


def _examples(tmp_path, n=10):
    paths = [
        write_png(str(tmp_path / f"{i}.png"), 20, seed=i, grey=i % 2 == 0)
        for i in range(n)
    ]
    return Examples(paths, np.arange(n) % 3, ("a", "b", "c"))


def test_dataset_shapes_and_order(tmp_path):
    ex = _examples(tmp_path)
    ds = pipeline.make_dataset(ex, 16, 4, training=False)
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    targets = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(targets.argmax(1), ex.labels)
    assert batches[0][0].shape[1:] == (16, 16, 3)


def test_training_stream_is_reproducible_and_resumable(tmp_path):
    ex = _examples(tmp_path)
    kw = dict(
        image_size=16,
        batch_size=4,
        training=True,
        seed=5,
        crop_pad=2,
        deterministic=True,
        drop_remainder=True,
    )
    ds = pipeline.make_dataset(ex, **kw)
    first = [b[0].numpy() for b in ds.take(6)]
    again = [b[0].numpy() for b in pipeline.make_dataset(ex, **kw).take(6)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    resumed = [b[0].numpy() for b in pipeline.make_dataset(ex, skip=8, **kw).take(4)]
    for a, b in zip(first[2:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_balanced_sampling_is_roughly_uniform(tmp_path):
    paths = [write_png(str(tmp_path / f"{i}.png"), 8, seed=i) for i in range(12)]
    ex = Examples(paths, np.array([0] * 10 + [1, 2]), ("a", "b", "c"))
    ds = pipeline.make_dataset(ex, 8, 30, training=True, balanced=True, flip=False)
    labels = np.concatenate([b[1].numpy().argmax(1) for b in ds.take(10)])
    counts = np.bincount(labels, minlength=3) / len(labels)
    assert np.all(np.abs(counts - 1 / 3) < 0.08)


def test_cache_gives_same_images(tmp_path):
    ex = _examples(tmp_path, 4)
    a = next(iter(pipeline.make_dataset(ex, 16, 4, training=False)))[0]
    b = next(iter(pipeline.make_dataset(ex, 16, 4, training=False, cache=True)))[0]
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert os.path.exists(ex.paths[0])
