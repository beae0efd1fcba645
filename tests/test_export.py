import io
import os
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli

from ean_tf.data.decode import header_pixels
from ean_tf.data.pipeline import decode_image, resize_image
from ean_tf.models.ean import EAN
from export import serving

SIZE = 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = EAN(
        4,
        image_size=SIZE,
        width=8,
        embedding_dim=16,
        memory_size=20,
        tau1=0.0,
        class_names=["a", "b", "c", "d"],
    )
    model.graph_enabled.assign(1.0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, SIZE, SIZE, 3)).astype(np.float32)
    model.build_memory([x[:20]], np.eye(4, dtype=np.float32)[np.arange(20) % 4])
    base = str(tmp_path_factory.mktemp("exports"))
    path = serving.export_model(model, base, max_image_bytes=20_000)
    return model, base, path, tf.saved_model.load(path)


def test_a_linear_head_says_it_serves_the_network_alone(tmp_path):
    keras.utils.set_random_seed(4)
    model = EAN(3, image_size=SIZE, width=8, head="linear", class_names="abc")
    assert model.inference_graph == "nearest"  # the config's, never read
    loaded = tf.saved_model.load(serving.export_model(model, str(tmp_path)))
    assert loaded.served_graph.numpy().decode() == "isolated"
    assert float(loaded.nearest_label_weight.numpy()) == 0.0
    x = np.random.default_rng(2).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    out = loaded.signatures["predict_images"](images=tf.constant(x))
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(model(x)), atol=1e-5)


def _png(seed, size=40):
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


def test_version_folder_and_side_files(exported):
    _, base, path, _ = exported
    assert path == os.path.join(base, "1")
    assert os.path.isfile(os.path.join(base, "batching_parameters.txt"))
    assert "model_config_list" in open(os.path.join(base, "models.config")).read()
    assert [d for d in os.listdir(base) if d.startswith(".tmp")] == []


def test_a_server_running_as_another_user_reads_the_export(exported):
    """Every folder and file of the export has the modes of ones made normally
    (0755 and 0644 under umask 022), not mkdtemp's 0700."""
    from ean_tf.files import dir_mode, file_mode

    _, base, path, _ = exported
    assert dir_mode() & 0o005 and file_mode() & 0o004  # the tests' umask: 022
    modes = {}
    for root, folders, files in os.walk(base):
        for name in folders + files:
            full = os.path.join(root, name)
            modes[os.path.relpath(full, base)] = os.stat(full).st_mode & 0o777
            want = dir_mode() if os.path.isdir(full) else file_mode()
            assert modes[os.path.relpath(full, base)] == want, full
    assert {"1", "1/saved_model.pb", "1/variables", "batching_parameters.txt"} <= (
        set(modes)
    )


def test_an_export_whose_version_is_taken_meanwhile_takes_the_next(
    exported, tmp_path, monkeypatch
):
    """Two exports to one folder at once: the second to finish takes the next
    version (or, asked for that version, stops), and neither loses the other's."""
    model, *_ = exported
    save = tf.saved_model.save

    def save_while_another_finishes(module, path, signatures):
        save(module, path, signatures=signatures)
        taken = os.path.join(os.path.dirname(path), "1")  # the other export's
        os.makedirs(taken)
        with open(os.path.join(taken, "saved_model.pb"), "wb") as f:
            f.write(b"the other export")

    monkeypatch.setattr(tf.saved_model, "save", save_while_another_finishes)
    assert serving.export_model(model, str(tmp_path)) == str(tmp_path / "2")
    assert (tmp_path / "1" / "saved_model.pb").read_bytes() == b"the other export"
    assert (tmp_path / "2" / "saved_model.pb").stat().st_size > 1000
    other = tmp_path / "explicit"
    with pytest.raises(FileExistsError, match="--export_version=1: .* exists"):
        serving.export_model(model, str(other), version=1)
    assert sorted(os.listdir(other)) == ["1"]  # nothing of this export left


def test_outputs_equal_the_keras_model(exported):
    model, _, _, loaded = exported
    x = np.random.default_rng(1).uniform(0, 255, (5, SIZE, SIZE, 3)).astype("float32")
    served = loaded.signatures["predict_images"](images=tf.constant(x))
    assert model.inference_graph == "nearest"  # the default
    assert loaded.served_graph.numpy().decode() == "nearest"
    assert float(loaded.nearest_label_weight.numpy()) == 0.25  # the default
    np.testing.assert_allclose(
        served["probabilities"], tf.nn.softmax(model(x, graph="nearest")), atol=1e-5
    )
    assert not np.allclose(
        served["probabilities"], tf.nn.softmax(model(x, graph="isolated")), atol=1e-4
    )
    batch = loaded.signatures["predict_batch_graph"](images=tf.constant(x))
    np.testing.assert_allclose(
        batch["probabilities"], tf.nn.softmax(model(x, graph="batch")), atol=1e-5
    )
    isolated = loaded.signatures["predict_isolated"](images=tf.constant(x))
    np.testing.assert_allclose(
        isolated["probabilities"], tf.nn.softmax(model(x, graph="isolated")), atol=1e-5
    )
    embed = loaded.signatures["embed"](images=tf.constant(x))
    pooled, emb, _ = model.features(x)
    np.testing.assert_allclose(embed["features"], pooled, atol=1e-5)
    np.testing.assert_allclose(embed["embeddings"], emb, atol=1e-5)
    names = [n.decode() for n in served["class_name"].numpy()]
    assert names == [model.class_names[i] for i in served["class_index"].numpy()]


def test_serving_default_decodes_like_training(exported):
    model, _, _, loaded = exported
    data = [_png(i) for i in range(3)]
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(data))
    images = tf.stack([resize_image(decode_image(tf.constant(d)), SIZE) for d in data])
    np.testing.assert_allclose(
        out["probabilities"], tf.nn.softmax(model(images, graph="nearest")), atol=1e-5
    )
    assert out["probabilities"].shape == (3, 4)


def test_answer_is_the_same_alone_among_63_and_padded(exported):
    *_, loaded = exported
    serve = loaded.signatures["serving_default"]
    query = _png(100)
    alone = serve(image_bytes=tf.constant([query]))["probabilities"].numpy()[0]
    crowd = [query] + [_png(200 + i) for i in range(63)]
    among = serve(image_bytes=tf.constant(crowd))["probabilities"].numpy()[0]
    padded = serve(image_bytes=tf.constant([query] * 8))["probabilities"].numpy()
    np.testing.assert_allclose(alone, among, atol=1e-5)
    np.testing.assert_allclose(np.tile(alone, (8, 1)), padded, atol=1e-5)


def _png_claiming(width, height):
    """A small PNG whose IHDR claims width x height (a pixel bomb's header)."""
    data = bytearray(_png(7, size=8))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return bytes(data)


def _crc_damaged(png):
    data = bytearray(png)
    at = data.index(b"IDAT")
    data[at + 4 + int.from_bytes(data[at - 4 : at], "big")] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize(
    "bad,message",
    [
        (b"definitely not an image", "not a JPEG, PNG, BMP or GIF"),
        (b"", "empty string"),
        (b"\x89PNG" + b"\x00" * 30_000, "larger than the limit set at export"),
        (_png_claiming(20_000, 20_000), "more pixels than the limit set at export"),
        (_crc_damaged(_png(3)), "corrupt image"),
        (b"\xff\xd8\xff" + b"\x00" * 50, "bytes do not decode"),
    ],
)
def test_bad_image_fails_only_its_own_row(exported, bad, message):
    model, *_, loaded = exported
    serve = loaded.signatures["serving_default"]
    good = _png(1)
    out = serve(image_bytes=tf.constant([good, bad, good]))
    assert out["valid"].numpy().tolist() == [True, False, True]
    problem = [p.decode() for p in out["problem"].numpy()]
    assert problem[0] == problem[2] == "" and message in problem[1]
    assert out["class_index"][1] == -1 and out["class_name"][1] == b""
    np.testing.assert_array_equal(out["probabilities"][1], np.zeros(4))
    image = resize_image(decode_image(tf.constant(good)), SIZE)[None]
    want = tf.nn.softmax(model(image, graph="nearest"))[0]
    np.testing.assert_allclose(out["probabilities"][0], want, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"][2], want, atol=1e-5)
    # A request of bad rows only still answers, row by row.
    alone = serve(image_bytes=tf.constant([bad]))
    assert not alone["valid"].numpy()[0]


def test_header_pixels_read_without_decoding():
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 50, 3), np.uint8)
    encoded = {
        ext: cv2.imencode(ext, image)[1].tobytes() for ext in (".png", ".jpg", ".bmp")
    }
    gif = io.BytesIO()
    Image.fromarray(image).save(gif, format="GIF")
    encoded[".gif"] = gif.getvalue()
    for ext, data in encoded.items():
        assert int(header_pixels(tf.constant(data))) == 30 * 50, ext
    assert int(header_pixels(tf.constant(_png_claiming(20_000, 20_000)))) == (
        20_000 * 20_000
    )


def test_interrupted_export_leaves_no_version(exported, tmp_path, monkeypatch):
    model, *_ = exported

    def broken(*args, **kwargs):
        os.makedirs(os.path.join(args[1], "variables"), exist_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(tf.saved_model, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        serving.export_model(model, str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_next_export_takes_the_next_version(exported, tmp_path):
    model, *_ = exported
    os.makedirs(tmp_path / "3")
    assert serving.next_version(str(tmp_path)) == 4
    with pytest.raises(FileExistsError):
        serving.export_model(model, str(tmp_path), version=3)


def test_export_removes_what_a_killed_export_left(exported, tmp_path):
    model, *_ = exported
    dead = int(open("/proc/sys/kernel/pid_max").read()) + 1  # no such process
    stale = tmp_path / f".tmp-2-{dead}-abc"
    (stale / "variables").mkdir(parents=True)
    old_style = tmp_path / ".tmp-1-xyz"
    old_style.mkdir()
    live = tmp_path / f".tmp-5-{os.getpid()}-def"  # an export still running
    live.mkdir()
    serving.export_model(model, str(tmp_path), version=7)
    assert not stale.exists() and not old_style.exists() and live.exists()
    assert (tmp_path / "7" / "saved_model.pb").is_file()


def test_warmup_records_parse(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    *_, path, loaded = exported
    file = os.path.join(path, "assets.extra", serving.WARMUP_FILE)
    records = list(tf.data.TFRecordDataset(file).as_numpy_iterator())
    assert len(records) >= 1
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        images = tf.make_ndarray(request.inputs["image_bytes"])
        out = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
        assert out["probabilities"].shape[0] == len(images)


def test_saved_model_cli_shows_the_signatures(exported):
    *_, path, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run(
        [cli, "show", "--dir", path, "--all"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in (
        "serving_default",
        "predict_images",
        "predict_batch_graph",
        "predict_isolated",
        "embed",
        "image_bytes",
        "probabilities",
        "class_name",
    ):
        assert name in result.stdout, name


def _cli_export(model, tmp_path, *flags, fresh_process=False):
    """`run.py --mode=export` of `model` saved as .keras, to tmp_path/exports (in
    a new process with `fresh_process`: what TensorFlow itself logs shows there)."""
    checkpoint = str(tmp_path / "model.keras")
    model.save(checkpoint)
    args = [
        "--mode=export",
        f"--checkpoint={checkpoint}",
        f"--export_dir={tmp_path / 'exports'}",
        *flags,
    ]
    if not fresh_process:
        return run_cli(*args)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(
        [sys.executable, "run.py", *args],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=600,
    )


def test_cli_export_to_an_existing_version_is_one_line(exported, tmp_path):
    os.makedirs(tmp_path / "exports" / "1")
    result = _cli_export(exported[0], tmp_path, "--export_version=1")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("error: --export_version=1:") and "exists" in lines[-1]


def test_an_export_serves_the_graph_the_model_serves(tmp_path):
    """A model set to serve `batch` exports that graph: the SavedModel answers as
    the Keras model does, the request's images forming one graph."""
    keras.utils.set_random_seed(4)
    model = EAN(
        4, image_size=SIZE, width=8, embedding_dim=16, tau1=0.0, inference_graph="batch"
    )
    model.graph_enabled.assign(1.0)
    x = np.random.default_rng(2).uniform(0, 255, (6, SIZE, SIZE, 3)).astype("float32")
    loaded = tf.saved_model.load(serving.export_model(model, str(tmp_path)))
    assert loaded.served_graph.numpy().decode() == "batch"
    # Its answers depend on the batch: nothing says batching is safe.
    assert not os.path.exists(tmp_path / "batching_parameters.txt")
    out = loaded.signatures["predict_images"](images=tf.constant(x))["probabilities"]
    np.testing.assert_allclose(out, tf.nn.softmax(model(x, graph="batch")), atol=1e-5)
    assert not np.allclose(out, tf.nn.softmax(model(x, graph="isolated")))


def test_cli_export_serves_the_graph_asked_for(exported, tmp_path):
    model, *_ = exported
    result = _cli_export(
        model, tmp_path, "--served_graph=isolated", fresh_process=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "serving its isolated graph" in result.stdout
    # TensorFlow's INFO lines stay quiet (--show_tf_logs shows them).
    assert "Assets written" not in result.stderr
    assert "signature_serialization" not in result.stderr
    loaded = tf.saved_model.load(str(tmp_path / "exports" / "1"))
    assert loaded.served_graph.numpy().decode() == "isolated"
    assert float(loaded.nearest_label_weight.numpy()) == 0.0  # not the nearest
    x = np.random.default_rng(5).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    out = loaded.signatures["predict_images"](images=tf.constant(x))
    np.testing.assert_allclose(
        out["probabilities"], tf.nn.softmax(model(x, graph="isolated")), atol=1e-5
    )


def test_cli_export_serves_the_label_weight_asked_for(exported, tmp_path):
    """--served_label_weight=w: the export answers in the nearest graph with its
    neighbours' stored labels at weight w, and records w for clients."""
    model, *_ = exported
    result = _cli_export(model, tmp_path, "--served_label_weight=0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "serving its nearest graph with label weight 0.5" in result.stdout
    loaded = tf.saved_model.load(str(tmp_path / "exports" / "1"))
    assert float(loaded.nearest_label_weight.numpy()) == 0.5
    x = np.random.default_rng(6).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    out = loaded.signatures["predict_images"](images=tf.constant(x))
    again = keras.models.load_model(str(tmp_path / "model.keras"))
    again.set_nearest_label_weight(0.5)
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(again(x)), atol=1e-5)
    assert not np.allclose(out["probabilities"], tf.nn.softmax(model(x)), atol=1e-3)


@pytest.mark.parametrize("graph", ["nearest", "batch"])
def test_export_prints_the_serving_command(tmp_path, monkeypatch, capsys, graph):
    """The docker command as the README has it: with server-side batching for a
    graph whose answers do not depend on the batch, without it for `batch`."""
    from ean_tf import modes
    from ean_tf.config import make_config

    keras.utils.set_random_seed(5)
    model = EAN(3, image_size=SIZE, width=8, memory_size=4, class_names="abc")
    checkpoint = str(tmp_path / "model.keras")
    model.save(checkpoint)
    monkeypatch.setattr(serving, "export_model", lambda *a: str(tmp_path / "x" / "1"))
    config = make_config("tiny", export_dir=str(tmp_path / "x"), served_graph=graph)
    modes.run_export(config, checkpoint=checkpoint)
    out = capsys.readouterr().out
    command = out.split("Serve it with TensorFlow Serving:\n")[1]
    assert f"-v {tmp_path / 'x'}:/models/ean" in command
    assert "-e MODEL_NAME=ean tensorflow/serving" in command
    batching = (
        "--enable_batching "
        "--batching_parameters_file=/models/ean/batching_parameters.txt"
    )
    if graph == "nearest":
        assert batching in command
    else:
        assert batching not in out
        assert "serve it without --enable_batching" in out


def test_describe_reads_an_export(exported):
    from ean_tf.modes import describe

    *_, path, _ = exported
    info = describe(path)
    assert info["classes"] == ["a", "b", "c", "d"]
    assert (info["image_size"], info["graph"], info["label_weight"]) == (
        SIZE,
        "nearest",
        0.25,
    )
