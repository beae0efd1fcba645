"""The shipped FERPlus model, its compact form, the Python API and the package:
the smiling astronaut is `happiness` through the API, `--mode=predict` with no
run folder, and the export."""

import csv
import logging
import os
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
from conftest import run_cli

from ean_tf import pretrained
from ean_tf.models.ean import EAN
from ean_tf.predict import Recognizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    from skimage import data as skdata

    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    cv2.imwrite(str(path), skdata.astronaut()[..., ::-1])
    return str(path)


@pytest.fixture(scope="module")
def recognizer():
    return Recognizer()


def test_the_shipped_model_is_in_budget_and_its_hash_matches():
    path = pretrained.path()
    assert os.path.getsize(path) <= 50 * 2**20
    assert pretrained.sha256(path) == pretrained.MODELS["ferplus48"][1]


def test_a_damaged_shipped_model_is_refused_in_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not the model")
    monkeypatch.setattr(pretrained, "HERE", str(tmp_path))
    monkeypatch.setitem(pretrained.MODELS, "bad", ("bad.keras", "0" * 64))
    with pytest.raises(pretrained.PretrainedError, match="is not the shipped"):
        pretrained.path("bad")
    with pytest.raises(pretrained.PretrainedError, match="Shipped: ferplus48"):
        pretrained.path("nope")


def test_the_api_finds_the_astronaut_happy(recognizer, astronaut):
    from skimage import data as skdata

    faces = recognizer(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.label == "happiness", face.probabilities
    assert list(face.probabilities) == list(recognizer.class_names)
    assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    x, y, w, h = face.box  # her face is in the upper middle of the 512 px photo
    assert 100 < x + w / 2 < 300 and 50 < y + h / 2 < 250
    # An RGB array gives the same answer as its file.
    same = recognizer(skdata.astronaut())[0]
    assert same.label == face.label and same.box == face.box


def test_the_api_refuses_what_is_not_a_photo(recognizer, tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        recognizer(np.zeros((8, 8), np.uint8))
    with pytest.raises(FileNotFoundError, match="no such file"):
        recognizer(str(tmp_path / "missing.jpg"))
    blank = np.full((120, 120, 3), 128, np.uint8)
    assert recognizer(blank) == []  # no face, nothing to classify


def test_predict_without_a_run_folder_uses_the_shipped_model(
    astronaut, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    result = run_cli("--mode=predict", f"--images={astronaut}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class_name"] for r in rows] == ["happiness"]


def test_the_export_of_the_shipped_model_finds_her_happy(
    recognizer, astronaut, tmp_path
):
    import tensorflow as tf

    from ean_tf import make_config
    from ean_tf.modes import run_export

    config = make_config("default", export_dir=str(tmp_path / "exports"))
    run_export(config, "ferplus48", "")
    loaded = tf.saved_model.load(str(tmp_path / "exports" / "1"))
    names = [n.decode() for n in loaded.class_names.numpy()]
    rgb = cv2.imread(astronaut)[..., ::-1]
    aligned = recognizer.aligner.faces(np.ascontiguousarray(rgb))[0]["aligned"]
    probs = loaded.signatures["predict_images"](
        images=tf.constant(aligned[None].astype("float32"))
    )["probabilities"].numpy()[0]
    assert names[int(np.argmax(probs))] == "happiness"


def _tiny(**kwargs):
    keras.utils.set_random_seed(0)
    return EAN(4, image_size=32, width=8, embedding_dim=16, **kwargs)


def test_save_compact_halves_the_weights_and_keeps_the_answers(tmp_path):
    model = _tiny(memory_size=8, tau1=0.0)
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    model.build_memory([x], np.eye(4, dtype="float32")[np.arange(8) % 4])
    model.compile(optimizer="sgd")
    full, compact = tmp_path / "full.keras", tmp_path / "compact.keras"
    model.save(full)
    pretrained.save_compact(model, str(compact), grayscale=True)
    assert os.path.getsize(compact) < 0.6 * os.path.getsize(full)
    loaded = keras.models.load_model(compact)
    assert loaded.grayscale and not model.grayscale
    for a, b in zip(model.weights, loaded.weights, strict=True):
        assert a.path == b.path and b.dtype == "float32"
        np.testing.assert_array_equal(
            np.asarray(a).astype(np.float16).astype(np.float32), np.asarray(b)
        )


def test_a_grayscale_model_answers_a_colour_photo_as_its_grey_copy():
    model = _tiny(grayscale=True, head="linear")
    rgb = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    grey = rgb @ np.array([0.2989, 0.587, 0.114], np.float32)
    grey = np.repeat(grey[..., None], 3, axis=-1)
    # Equal up to grey-of-grey's rounding (the luma weights sum to 0.9999).
    np.testing.assert_allclose(
        np.asarray(model(rgb)), np.asarray(model(grey)), atol=5e-3
    )
    colour_blind = _tiny(head="linear")
    gap = np.abs(np.asarray(colour_blind(rgb)) - np.asarray(colour_blind(grey)))
    assert gap.max() > 0.05


def test_a_model_of_the_built_in_data_says_so_on_photos(tmp_path, caplog):
    path = str(tmp_path / "model.keras")
    _tiny(head="linear", training_data="default").save(path)
    with caplog.at_level(logging.WARNING, logger="ean_tf"):
        Recognizer(path)
    said = [r.getMessage() for r in caplog.records if "built-in" in r.getMessage()]
    assert len(said) == 1 and "mean nothing" in said[0]


def test_the_command_parses_flags_and_helps_without_tensorflow():
    def run(*args):
        return subprocess.run(
            [sys.executable, "-X", "importtime", os.path.join(ROOT, "run.py"), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("ean_tf ")
    helped = run("--help")
    assert helped.returncode == 0
    for flag in ("--mode", "--run_dir", "--checkpoint", "--objective", "--images"):
        assert flag in helped.stdout
    bad = run("--epochs=0")
    assert bad.returncode == 1 and "error: --epochs" in bad.stderr
    for result in (version, helped, bad):
        assert "tensorflow" not in result.stderr  # -X importtime lists every import


def test_the_package_declares_what_requirements_txt_pins():
    import tomllib

    from packaging.requirements import Requirement

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    pins = {}
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                name, version = line.split("==")
                pins[name.lower()] = version
    declared = [Requirement(r) for r in project["dependencies"]]
    assert {r.name.lower() for r in declared} == set(pins)
    for r in declared:
        assert r.specifier.contains(pins[r.name.lower()]), (r, pins[r.name.lower()])
    assert project["scripts"]["ean-tf"] == "flags.cli:main"
    assert project["license"] == {"text": "Apache-2.0"}


def test_the_next_step_names_the_command_that_runs(monkeypatch):
    from ean_tf import modes

    monkeypatch.setattr(sys, "argv", ["/venv/bin/ean-tf", "--mode=train"])
    assert modes._command() == "ean-tf"
    monkeypatch.setattr(sys, "argv", ["run.py", "--mode=train"])
    assert modes._command().endswith("run.py")
