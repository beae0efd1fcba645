"""A small client for an EAN model served by TensorFlow Serving.

Faces are detected and aligned here, with the same MTCNN aligner as training
(`ean_tf.data.align`), and the aligned crops are sent as PNG bytes to the
`serving_default` signature, over REST or gRPC:

    python export/client.py --images=photo.jpg --rest=http://localhost:8501
    python export/client.py --images=photos/ --grpc=localhost:8500 --image_size=112

Prints one JSON line per face: file, box, class_name, probabilities (or the
server's `problem` for a face it could not read). The server is checked first: when
none answers at the address, one line says so and nothing else runs.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # no start-up log lines


class ServerError(RuntimeError):
    """No TensorFlow Serving model answers at the given address."""


def check_rest(url: str, model: str = "ean", timeout: float = 5.0) -> None:
    """GET /v1/models/<model>: raises `ServerError` naming the address when no
    server answers or it does not serve `model`."""
    address = f"{url.rstrip('/')}/v1/models/{model}"
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as error:
        raise ServerError(
            f"{address}: the server answers but not for model {model!r} "
            f"(HTTP {error.code})"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServerError(
            f"no TensorFlow Serving answers at {url} ({reason})"
        ) from None


def check_grpc(target: str, timeout: float = 5.0) -> None:
    """Raises `ServerError` when no gRPC server accepts a connection at `target`."""
    import grpc

    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ServerError(
            f"no TensorFlow Serving answers at {target} (gRPC, {timeout:g} s)"
        ) from None
    finally:
        channel.close()


def encode_png(image_rgb: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", np.ascontiguousarray(image_rgb[..., ::-1]))
    if not ok:
        raise ValueError("could not encode the face crop")
    return data.tobytes()


def predict_rest(
    url: str, images: list[bytes], model: str = "ean", timeout: float = 30.0
) -> list[dict]:
    """POST /v1/models/<model>:predict with {"b64": ...} instances."""
    body = json.dumps(
        {
            "signature_name": "serving_default",
            "instances": [{"b64": base64.b64encode(b).decode()} for b in images],
        }
    ).encode()
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v1/models/{model}:predict",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        rows = json.loads(response.read())["predictions"]
    return [
        {"problem": row["problem"]}
        if row.get("problem")
        else {k: v for k, v in row.items() if k not in ("valid", "problem")}
        for row in rows
    ]


def predict_grpc(
    target: str, images: list[bytes], model: str = "ean", timeout: float = 30.0
) -> list[dict]:
    """PredictionService.Predict over gRPC (tensorflow-serving-api)."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(target)
    )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(
        tf.make_tensor_proto(images, dtype=tf.string)
    )
    response = stub.Predict(request, timeout)
    probs = tf.make_ndarray(response.outputs["probabilities"])
    names = tf.make_ndarray(response.outputs["class_name"])
    index = tf.make_ndarray(response.outputs["class_index"])
    problems = tf.make_ndarray(response.outputs["problem"])
    return [
        {"probabilities": p.tolist(), "class_name": n.decode(), "class_index": int(i)}
        if not e
        else {"problem": e.decode()}
        for p, n, i, e in zip(probs, names, index, problems, strict=True)
    ]


def classify_files(files: list[str], send, image_size: int) -> list[dict]:
    """Detects and aligns faces in `files`, sends them with `send(list of
    bytes)`; returns one dict per face (files without a face get a row with
    `problem`)."""
    import cv2

    from ean_tf.data.align import FaceAligner

    aligner = FaceAligner(image_size)
    rows = []
    for path in files:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            rows.append({"file": path, "problem": "unreadable"})
            continue
        faces = aligner.faces(np.ascontiguousarray(image[..., ::-1]))
        if not faces:
            rows.append({"file": path, "problem": "no face found"})
            continue
        answers = send([encode_png(f["aligned"]) for f in faces])
        for face, answer in zip(faces, answers, strict=True):
            rows.append({"file": path, "box": face["box"], **answer})
    return rows


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="file, folder or glob")
    parser.add_argument("--rest", help="REST address, e.g. http://localhost:8501")
    parser.add_argument("--grpc", help="gRPC address, e.g. localhost:8500")
    parser.add_argument("--model", default="ean", help="model name on the server")
    parser.add_argument(
        "--image_size", type=int, default=48, help="the exported model's input size"
    )
    args = parser.parse_args(argv)
    if bool(args.rest) == bool(args.grpc):
        parser.error("give exactly one of --rest and --grpc")
    try:  # before MTCNN and TensorFlow start
        if args.rest:
            check_rest(args.rest, args.model)
            send = lambda images: predict_rest(args.rest, images, args.model)
        else:
            check_grpc(args.grpc)
            send = lambda images: predict_grpc(args.grpc, images, args.model)
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from ean_tf.predict import list_images  # TensorFlow starts here

    for row in classify_files(list_images(args.images), send, args.image_size):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
