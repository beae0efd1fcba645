"""The model from Keras, as the README shows it: the README's own snippet, run as
a user's script in a folder outside the checkout, loads the shipped `.keras`
file, predicts, fine-tunes it with `fit` and saves it; the test loads it again."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_snippet(section):
    """The first ```python block under the README's `section` heading."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    after = readme[readme.index(f"## {section}") :]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_keras_snippet_runs_outside_the_checkout(tmp_path):
    outside = tmp_path / "user_project"
    outside.mkdir()
    script = _readme_snippet("Using the model from Keras") + textwrap.dedent("""
        assert logits.shape == (8, model.num_classes)
        assert pooled.shape[0] == embeddings.shape[0] == conv3.shape[0] == 8
        assert model.optimizer.iterations.numpy() == 1
        again = keras.models.load_model("tuned.keras")
        np.testing.assert_allclose(again(images), model(images), atol=1e-4)
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
