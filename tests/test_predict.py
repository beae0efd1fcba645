import base64
import csv
import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli, write_png

from ean_tf.models.ean import EAN
from ean_tf.predict import list_images, predict
from export import client, serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["neutral", "happiness", "surprise", "sadness"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A small EAN as .keras and as an exported SavedModel, plus photos."""
    from skimage import data as skdata

    tmp = tmp_path_factory.mktemp("predict")
    keras.utils.set_random_seed(0)
    model = EAN(
        4,
        image_size=48,
        width=8,
        embedding_dim=16,
        memory_size=16,
        tau1=0.0,
        class_names=NAMES,
    )
    model.graph_enabled.assign(1.0)
    x = np.random.default_rng(0).uniform(0, 255, (16, 48, 48, 3)).astype("float32")
    model.build_memory([x], np.eye(4, dtype="float32")[np.arange(16) % 4])
    model.save(str(tmp / "model.keras"))
    saved = serving.export_model(model, str(tmp / "exports"))
    photos = tmp / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "astronaut.jpg"), skdata.astronaut()[..., ::-1])
    noise = np.random.default_rng(1).integers(0, 256, (64, 80, 3), np.uint8)
    cv2.imwrite(str(photos / "texture.png"), noise)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    return model, str(tmp / "model.keras"), saved, photos, tmp


def test_list_images(models):
    *_, photos, _ = models
    assert [os.path.basename(p) for p in list_images(str(photos))] == [
        "astronaut.jpg",
        "broken.jpg",
        "texture.png",
    ]
    assert list_images(str(photos / "*.png")) == [str(photos / "texture.png")]
    with pytest.raises(FileNotFoundError, match="--images"):
        list_images(str(photos / "nope*.gif"))


@pytest.mark.parametrize("which", ["keras", "savedmodel"])
def test_predict_finds_and_classifies_the_face(models, which):
    model, keras_path, saved, photos, tmp = models
    out = str(tmp / f"pred_{which}.csv")
    result = predict(
        keras_path if which == "keras" else saved,
        str(photos),
        out,
        annotate_dir=str(tmp / f"annotated_{which}"),
        no_face="skip",
        progress=False,
    )
    faces = result["faces"]
    assert [os.path.basename(f["file"]) for f in faces] == ["astronaut.jpg"]
    x, y, w, h = faces[0]["box"]
    assert 120 < x + w / 2 < 300 and 50 < y + h / 2 < 200
    assert faces[0]["class_name"] in NAMES
    assert sum(faces[0]["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    problems = {os.path.basename(p["file"]): p["problem"] for p in result["problems"]}
    assert problems == {
        "broken.jpg": "unreadable (not an image?)",
        "texture.png": "no face found",
    }
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 3 and rows[0]["class_name"] == faces[0]["class_name"]
    assert os.path.isfile(tmp / f"annotated_{which}" / "astronaut.jpg")


def test_keras_and_savedmodel_predictions_agree(models):
    _, keras_path, saved, photos, tmp = models
    a = predict(
        keras_path, str(photos / "astronaut.jpg"), str(tmp / "a.json"), progress=False
    )
    b = predict(
        saved, str(photos / "astronaut.jpg"), str(tmp / "b.json"), progress=False
    )
    pa = np.array(list(a["faces"][0]["probabilities"].values()))
    pb = np.array(list(b["faces"][0]["probabilities"].values()))
    np.testing.assert_allclose(pa, pb, atol=1e-3)
    assert json.load(open(tmp / "a.json"))["faces"][0]["box"] == a["faces"][0]["box"]


def test_served_graph_picks_the_graph_a_keras_model_serves(models):
    _, keras_path, saved, photos, tmp = models
    one = str(photos / "astronaut.jpg")
    probs = {}
    for graph in ("", "nearest", "isolated"):
        out = str(tmp / f"graph_{graph or 'own'}.json")
        face = predict(keras_path, one, out, progress=False, served_graph=graph)
        probs[graph] = np.array(list(face["faces"][0]["probabilities"].values()))
    np.testing.assert_allclose(probs[""], probs["nearest"], atol=1e-6)  # its own
    assert not np.allclose(probs["nearest"], probs["isolated"], atol=1e-4)
    with pytest.raises(ValueError, match=r"SavedModel.*exported with \(nearest\)"):
        predict(saved, one, str(tmp / "s.json"), progress=False, served_graph="batch")


def test_served_label_weight_sets_the_nearest_graphs_label_weight(models):
    """A .keras model answers with the label weight asked for (its neighbours'
    stored labels, at that weight); a SavedModel only with the one it was
    exported with; a graph it does not apply to is a clear error."""
    from ean_tf.predict import Classifier

    model, keras_path, saved, photos, tmp = models
    x = np.random.default_rng(4).uniform(0, 255, (6, 48, 48, 3)).astype("float32")
    assert model.nearest_label_weight == 0.25  # the default
    own = Classifier(keras_path)(x)
    np.testing.assert_allclose(Classifier(keras_path, "", 0.25)(x), own, atol=1e-6)
    none = Classifier(keras_path, "", 0.0)(x)
    half = Classifier(keras_path, "", 0.5)(x)
    cs, idx = (t.numpy() for t in model.memory.neighbours(model.encode(x)[1], 4))
    targets = model.memory.targets.numpy()
    want = {0.25: none.copy(), 0.5: none.copy()}
    for q in range(len(x)):
        joined = idx[q][cs[q] >= model.tau1]
        for w in want if len(joined) else ():
            want[w][q] = (1 - w) * none[q] + w * targets[joined].mean(axis=0)
    np.testing.assert_allclose(half, want[0.5], atol=1e-5)
    np.testing.assert_allclose(own, want[0.25], atol=1e-5)
    assert not np.allclose(half, none, atol=1e-3)
    one = str(photos / "astronaut.jpg")
    Classifier(saved, "", 0.25)  # exported with the model's own weight
    with pytest.raises(ValueError, match=r"SavedModel.*exported with \(0.25\)"):
        predict(saved, one, str(tmp / "w.json"), progress=False, label_weight=0.5)
    with pytest.raises(ValueError, match="answers in its isolated graph"):
        predict(
            keras_path,
            one,
            str(tmp / "w.json"),
            progress=False,
            served_graph="isolated",
            label_weight=0.5,
        )


def _signature_map(saved):
    """The SignatureDefMap TF Serving's metadata API returns for an export."""
    from tensorflow.python.tools import saved_model_utils
    from tensorflow_serving.apis import get_model_metadata_pb2

    meta_graph = saved_model_utils.get_meta_graph_def(saved, "serve")
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in meta_graph.signature_def.items():
        signatures.signature_def[name].CopyFrom(signature)
    return signatures


def _metadata_json(saved):
    """GET /v1/models/ean/metadata as TF Serving's REST API answers it."""
    from google.protobuf import json_format

    signatures = json_format.MessageToDict(
        _signature_map(saved), preserving_proto_field_name=True
    )
    return {
        "model_spec": {"name": "ean", "signature_name": "", "version": "1"},
        "metadata": {"signature_def": signatures},
    }


class _FakeServing(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST predict API over a loaded SavedModel (row format)."""

    signature = None
    metadata = None
    refusal = ""  # when set, predict answers HTTP 400 with this error

    def _send(self, code, value):
        payload = json.dumps(value).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):  # noqa: N802  (model metadata: the client's check)
        if self.path == "/v1/models/ean/metadata":
            self._send(200, self.metadata)
        else:
            self._send(404, {"error": "Servable not found for request: Latest"})

    def do_POST(self):  # noqa: N802
        if self.refusal:
            self._send(400, {"error": self.refusal})
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/models/ean:predict"
        data = [base64.b64decode(i["b64"]) for i in body["instances"]]
        out = self.signature(image_bytes=tf.constant(data))
        predictions = [
            {
                "probabilities": p.tolist(),
                "class_index": int(i),
                "class_name": n.decode(),
                "valid": bool(v),
                "problem": e.decode(),
            }
            for p, i, n, v, e in zip(
                out["probabilities"].numpy(),
                out["class_index"].numpy(),
                out["class_name"].numpy(),
                out["valid"].numpy(),
                out["problem"].numpy(),
                strict=True,
            )
        ]
        payload = json.dumps({"predictions": predictions}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_rest_client_against_a_local_server(models):
    model, _, saved, photos, _ = models
    loaded = tf.saved_model.load(saved)
    _FakeServing.signature = loaded.signatures["serving_default"]
    _FakeServing.metadata = _metadata_json(saved)
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert client.check_rest(url) == 4  # up, serves "ean", an export of 4
        with pytest.raises(client.ServerError, match="not for model 'other'"):
            client.check_rest(url, "other")
        assert client.predict_rest(url, [b"not an image"]) == [
            {"problem": "not a JPEG, PNG, BMP or GIF image (bytes do not decode)"}
        ]
        rows = client.classify_files(
            [str(photos / "astronaut.jpg"), str(photos / "texture.png")],
            lambda images: client.predict_rest(url, images),
            model.image_size,
        )
    finally:
        server.shutdown()
    assert rows[-1] == {"file": str(photos / "texture.png"), "problem": "no face found"}
    face = rows[0]
    assert face["class_name"] in NAMES and len(face["probabilities"]) == 4
    # The same crop classified locally gives the same answer.
    from ean_tf.data.align import FaceAligner

    crop = FaceAligner(48).faces(
        cv2.imread(str(photos / "astronaut.jpg"))[..., ::-1].copy()
    )[0]["aligned"]
    local = _FakeServing.signature(image_bytes=tf.constant([client.encode_png(crop)]))
    np.testing.assert_allclose(
        face["probabilities"], local["probabilities"].numpy()[0], atol=1e-5
    )


def test_cli_predict(models):
    _, keras_path, _, photos, tmp = models
    out = tmp / "cli.json"
    result = run_cli(
        "--mode=predict",
        f"--checkpoint={keras_path}",
        f"--images={photos}",
        f"--output={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "broken.jpg: unreadable" in result.stdout
    report = json.load(open(out))
    # --no_face=center (the default): the texture is classified from a centre crop.
    assert {os.path.basename(f["file"]) for f in report["faces"]} == {
        "astronaut.jpg",
        "texture.png",
    }


def test_cli_predict_beside_a_model_outside_a_run_folder_writes_here(
    models, tmp_path, monkeypatch
):
    _, keras_path, _, photos, _ = models
    monkeypatch.chdir(tmp_path)
    result = run_cli(
        "--mode=predict", f"--checkpoint={keras_path}", f"--images={photos}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "predictions.csv").is_file()
    assert "wrote ./predictions.csv" in result.stdout


def test_cli_predict_checks_images_and_output_before_the_model(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = str(tmp_path / "no_model.keras")  # never read: the checks come first
    result = run_cli("--mode=predict", f"--checkpoint={missing}", f"--images={empty}")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: --images={empty}: no images (.jpg, .png, .bmp, ...) there"
    )
    write_png(str(empty / "a.png"))
    result = run_cli(
        "--mode=predict",
        f"--checkpoint={missing}",
        f"--images={empty}",
        f"--output={tmp_path / 'faces.xlsx'}",
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: --output={tmp_path / 'faces.xlsx'}: predictions are written as "
        ".csv or .json"
    )


@pytest.mark.parametrize("kind", ["rest", "grpc"])
def test_client_without_a_server_says_so_in_one_line(models, kind):
    *_, photos, _ = models
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"http://127.0.0.1:{port}" if kind == "rest" else f"127.0.0.1:{port}"
    result = subprocess.run(
        [
            sys.executable,
            "export/client.py",
            f"--images={photos / 'astronaut.jpg'}",
            f"--{kind}={address}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0], result.stderr
    assert lines[0].startswith("error: no TensorFlow Serving answers at")
    assert result.stdout == ""


@pytest.fixture
def rest_server(models):
    """The fake TF Serving over the module's export; yields its URL."""
    saved = models[2]
    _FakeServing.signature = tf.saved_model.load(saved).signatures["serving_default"]
    _FakeServing.metadata = _metadata_json(saved)
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeServing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        _FakeServing.refusal = ""
        server.shutdown()


def test_client_checks_it_reached_the_model_it_means(models, rest_server):
    """From the model's metadata: the name, an ean_tf export's signature, and the
    classes of --classes; each mismatch in one line."""
    with pytest.raises(client.ServerError) as info:
        client.check_rest(rest_server, classes=["a", "b", "c"])
    assert str(info.value).endswith(
        "(model 'ean'): the model has 4 classes, --classes names 3 (a, b, c)"
    )
    signatures = _FakeServing.metadata["metadata"]["signature_def"]["signature_def"]
    other = {"serving_default": signatures["predict_images"]}
    with pytest.raises(client.ServerError, match="takes images and returns"):
        client.check_model(other, "there")
    with pytest.raises(client.ServerError, match="no serving_default signature"):
        client.check_model({"predict": other["serving_default"]}, "there")


def test_client_shows_the_servers_refusal_in_one_line(models, rest_server):
    _FakeServing.refusal = "Expected tensor of type string but got float"
    with pytest.raises(client.ServerError) as info:
        client.predict_rest(rest_server, [b"x"])
    message = str(info.value)
    assert ":predict: HTTP 400: Expected tensor of type string but got float" in (
        message
    )
    assert len(message.splitlines()) == 1


def test_client_stops_in_one_line_on_a_refusal_or_a_missing_image(
    models, rest_server, capsys
):
    *_, photos, _ = models
    assert client.main([f"--rest={rest_server}"]) == 2
    assert capsys.readouterr().err == (
        "error: --images: expected an image, a folder or a glob\n"
    )
    assert client.main([f"--images={photos / 'nope*.jpg'}", "--rest=x"]) == 2
    assert "no such file, folder or pattern" in capsys.readouterr().err
    _FakeServing.refusal = "Servable not found"
    astronaut = str(photos / "astronaut.jpg")
    assert client.main([f"--images={astronaut}", f"--rest={rest_server}"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "HTTP 400: Servable not found" in (
        captured.err
    )
    assert captured.out == ""


def test_grpc_client_checks_the_model_and_shows_refusals(models):
    """Over gRPC: the metadata check and a refused Predict, in one line each."""
    from concurrent import futures

    import grpc
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        prediction_service_pb2_grpc,
    )

    saved = models[2]

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def GetModelMetadata(self, request, context):  # noqa: N802
            if request.model_spec.name != "ean":
                context.abort(grpc.StatusCode.NOT_FOUND, "Servable not found")
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = "ean"
            response.metadata["signature_def"].Pack(_signature_map(saved))
            return response

        def Predict(self, request, context):  # noqa: N802
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Bad image_bytes")

    server = grpc.server(futures.ThreadPoolExecutor(2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        Servicer(), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    target = f"127.0.0.1:{port}"
    try:
        assert client.check_grpc(target) == 4
        with pytest.raises(client.ServerError, match="not for model 'x'.*NOT_FOUND"):
            client.check_grpc(target, "x")
        with pytest.raises(client.ServerError, match="has 4 classes"):
            client.check_grpc(target, classes=["a"])
        with pytest.raises(client.ServerError, match="INVALID_ARGUMENT: Bad image"):
            client.predict_grpc(target, [b"x"])
    finally:
        server.stop(None)


def test_predict_refuses_too_many_pixels_from_the_header(models, monkeypatch):
    """A pixel bomb (a PNG whose header claims 12000 x 12000) is a problem row
    naming the limit, and is never decoded."""
    import ean_tf.predict as predict_lib

    _, keras_path, _, photos, tmp = models
    folder = tmp / "bomb"
    folder.mkdir()
    png = bytearray(open(photos / "texture.png", "rb").read())
    png[16:24] = (12_000).to_bytes(4, "big") * 2
    (folder / "bomb.png").write_bytes(bytes(png))
    cv2_imread = cv2.imread
    read = []
    monkeypatch.setattr(
        cv2, "imread", lambda path, *a: read.append(path) or cv2_imread(path, *a)
    )
    result = predict_lib.predict(
        keras_path, str(folder), str(tmp / "bomb.csv"), progress=False
    )
    problem = {
        "file": str(folder / "bomb.png"),
        "problem": "more pixels than the limit, 16777216 (--max_image_pixels): "
        "144000000",
    }
    assert result["problems"] == [problem]
    # The serving client, too, before it reads the photo.
    assert client.classify_files([problem["file"]], None, 48) == [problem]
    assert read == []


@pytest.mark.parametrize("flag", ["output", "annotate_dir"])
def test_predict_checks_where_it_writes_before_any_work(models, flag, monkeypatch):
    import ean_tf.predict as predict_lib

    _, keras_path, _, photos, tmp = models
    blocker = tmp / "blocker"
    blocker.write_text("")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(predict_lib, "Classifier", no_model)
    where = {
        "output": str(tmp / "ok.csv"),
        "annotate_dir": "",
        flag: str(blocker / "inside"),
    }
    with pytest.raises(ValueError, match=f"--{flag}=.*blocker is a file"):
        predict_lib.predict(
            keras_path,
            str(photos),
            where["output"],
            annotate_dir=where["annotate_dir"],
            progress=False,
        )


def test_export_checks_its_folder_before_loading_the_model(tmp_path):
    from ean_tf.config import make_config
    from ean_tf.modes import run_export

    (tmp_path / "blocker").write_text("")
    config = make_config("tiny", export_dir=str(tmp_path / "blocker" / "exports"))
    with pytest.raises(ValueError, match="--export_dir=.*blocker is a file"):
        run_export(config, checkpoint=str(tmp_path / "no_such_model.keras"))
