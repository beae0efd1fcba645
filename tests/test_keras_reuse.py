"""The model from Keras, as the README shows it: a user's own script, in a folder
outside the checkout, loads a trained `.keras` file, predicts, fine-tunes it with
`fit`, saves it and loads it again."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    from ean_tf.config import make_config
    from ean_tf.train import train

    tmp = tmp_path_factory.mktemp("reuse")
    config = make_config(
        "tiny", data_dir=str(tmp / "data"), run_dir=str(tmp / "run"), epochs=2
    )
    return train(config, verbose=0)["model"]


def test_readme_keras_snippet_runs_outside_the_checkout(trained_model, tmp_path):
    outside = tmp_path / "user_project"
    outside.mkdir()
    script = textwrap.dedent(f"""
        import numpy as np
        import keras
        import ean_tf  # registers the custom objects

        model = keras.models.load_model({trained_model!r})
        images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3))
        images = images.astype("float32")
        served = model(images).numpy()
        batch = model(images, graph="batch").numpy()
        pooled, embeddings, conv3 = model.features(images)
        assert served.shape == batch.shape == (8, model.num_classes)
        # Fine-tune one step with fit, on the optimizer it was trained with.
        labels = np.eye(model.num_classes, dtype="float32")[np.arange(8) % 7]
        before = model.optimizer.iterations.numpy()
        model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
        assert model.optimizer.iterations.numpy() == before + 1
        model.save("tuned.keras")
        again = keras.models.load_model("tuned.keras")
        np.testing.assert_allclose(again(images), model(images), atol=1e-5)
        print("REUSE_OK", ean_tf.__file__)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=outside,
        env=env,
        timeout=600,
    )
    assert "REUSE_OK" in result.stdout, result.stderr[-3000:]
    assert (outside / "tuned.keras").is_file()
    # The installed package is this checkout's, found without its folder on the path.
    assert os.path.join(ROOT, "ean_tf") in result.stdout
