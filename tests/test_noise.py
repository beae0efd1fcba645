import numpy as np
import pytest

from ean_tf.data import noise
from ean_tf.data.base import Examples


@pytest.mark.parametrize(
    "n,rate,expected",
    [(1000, 0.1, 100), (1000, 0.2, 200), (25, 0.1, 3), (7, 0.5, 4), (10, 0.0, 0)],
)
def test_flips_exactly_round_rate_n(n, rate, expected):
    labels = np.arange(n) % 8
    noisy = noise.flip_labels(labels, 8, rate, seed=3)
    assert np.sum(noisy != labels) == expected


def test_each_flip_goes_to_a_different_class_uniformly():
    labels = np.zeros(70000, np.int64)
    noisy = noise.flip_labels(labels, 8, 0.5, seed=0)
    flipped = noisy[noisy != labels]
    counts = np.bincount(flipped, minlength=8)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] / len(flipped) - 1 / 7) < 0.01)


def test_noise_is_deterministic_under_seed():
    labels = np.arange(500) % 5
    a = noise.flip_labels(labels, 5, 0.2, seed=7)
    b = noise.flip_labels(labels, 5, 0.2, seed=7)
    c = noise.flip_labels(labels, 5, 0.2, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)


def test_add_noise_keeps_clean_labels_and_writes_csv(tmp_path):
    ex = Examples(
        [f"im{i}.png" for i in range(20)],
        np.arange(20) % 4,
        ("a", "b", "c", "d"),
        targets=np.full((20, 4), 0.25, np.float32),
    )
    noisy = noise.add_noise(ex, 0.25, seed=1)
    assert noisy.targets is None  # soft targets give way to the noisy hard labels
    np.testing.assert_array_equal(noisy.clean_labels, ex.labels)
    assert np.sum(noisy.labels != ex.labels) == 5
    path = tmp_path / "run" / "noisy_labels.csv"
    noise.write_noisy_labels(noisy, str(path))
    assert path.read_text().splitlines()[0] == "path,clean_label,noisy_label"
    paths, clean, noisy_read = noise.read_noisy_labels(str(path))
    assert paths == ex.paths
    np.testing.assert_array_equal(noisy_read, noisy.labels)
    np.testing.assert_array_equal(clean, ex.labels)


def test_a_stratified_part_keeps_each_class_share_and_is_the_same_every_time():
    from ean_tf.data import DataError, stratified_part

    labels = np.repeat([0, 1, 2, 3], [600, 300, 90, 10])
    ex = Examples([f"im{i}.png" for i in range(1000)], labels, ("a", "b", "c", "d"))
    part = stratified_part(ex, 100)
    assert len(part) == 100
    assert np.bincount(part.labels).tolist() == [60, 30, 9, 1]
    assert part.paths == stratified_part(ex, 100).paths  # a fixed choice
    kept = set(part.paths)  # distinct rows, in the split's order
    assert len(kept) == 100 and part.paths == [p for p in ex.paths if p in kept]
    # Largest remainders fill the size exactly; a rare class keeps one image.
    odd = stratified_part(ex, 7)
    assert len(odd) == 7 and set(odd.labels.tolist()) == {0, 1, 2, 3}
    with pytest.raises(DataError, match="--train_size=1000: .* only 1000 images"):
        stratified_part(ex, 1000)
    with pytest.raises(DataError, match="--train_size=3: fewer than the 4 classes"):
        stratified_part(ex, 3)
