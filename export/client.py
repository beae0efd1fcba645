"""A small client for an EAN model served by TensorFlow Serving.

Faces are detected and aligned here, with the same MTCNN aligner as training
(`ean_tf.data.align`), and the aligned crops are sent as PNG bytes to the
`serving_default` signature, over REST or gRPC:

    python export/client.py --images=photo.jpg --rest=http://localhost:8501
    python export/client.py --images=photos/ --grpc=localhost:8500 --image_size=112

Prints one JSON line per face: file, box, class_name, probabilities (or the
server's `problem` for a face it could not read; a photo of more than
`--max_image_pixels` pixels, by its header, is reported and never read). The
arguments and the server are checked first, from the model's metadata: when no
server answers at the address, or it serves no ean_tf export under `--model` (with
the classes of `--classes`, when given), one line says so and nothing else runs.
A request the server refuses stops the client with the server's message, in one
line.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # no start-up log lines


class ClientError(RuntimeError):
    """The client cannot go on; the message says why, in one line."""


class ServerError(ClientError):
    """No TensorFlow Serving model answers at the given address, it is not the
    model asked for, or it refused a request; the message says which."""


# What the client sends to serving_default and reads back (export/serving.py).
SIGNATURE = "serving_default"
INPUT = "image_bytes"
OUTPUTS = ("probabilities", "class_index", "class_name", "valid", "problem")


def check_model(signatures: dict, where: str, classes: list[str] = ()) -> int:
    """Checks a model's signatures, as its metadata lists them (TF Serving's
    SignatureDefMap as JSON): `serving_default` takes `image_bytes` and returns
    what an ean_tf export returns, and has `len(classes)` classes when classes
    are given. Returns the number of classes; raises `ServerError` otherwise."""
    signature = signatures.get(SIGNATURE)
    if signature is None:
        raise ServerError(
            f"{where}: the model has no {SIGNATURE} signature (it has "
            f"{', '.join(sorted(signatures)) or 'none'}): not an ean_tf export"
        )
    inputs, outputs = signature.get("inputs", {}), signature.get("outputs", {})
    missing = [name for name in OUTPUTS if name not in outputs]
    if INPUT not in inputs or missing:
        raise ServerError(
            f"{where}: its {SIGNATURE} takes {', '.join(sorted(inputs))} and "
            f"returns {', '.join(sorted(outputs))}; an ean_tf export takes {INPUT} "
            f"and returns {', '.join(OUTPUTS)}"
        )
    dims = outputs["probabilities"].get("tensor_shape", {}).get("dim", [])
    count = int(dims[-1].get("size", -1)) if len(dims) == 2 else -1
    if classes and count != len(classes):
        raise ServerError(
            f"{where}: the model has {count} classes, --classes names "
            f"{len(classes)} ({', '.join(classes)})"
        )
    return count


def check_rest(
    url: str, model: str = "ean", classes: list[str] = (), timeout: float = 5.0
) -> int:
    """GET /v1/models/<model>/metadata: raises `ServerError` naming the address
    when no server answers, it does not serve `model`, or `model` is not an
    ean_tf export (`check_model`); returns its number of classes."""
    address = f"{url.rstrip('/')}/v1/models/{model}/metadata"
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response:
            metadata = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise ServerError(
            f"{address}: the server answers but not for model {model!r} "
            f"(HTTP {error.code}: {_error_body(error)})"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServerError(
            f"no TensorFlow Serving answers at {url} ({reason})"
        ) from None
    except ValueError:
        raise ServerError(f"{address}: the answer is not JSON") from None
    signatures = (
        metadata.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
    )
    return check_model(signatures, f"{address} (model {model!r})", classes)


def check_grpc(
    target: str, model: str = "ean", classes: list[str] = (), timeout: float = 5.0
) -> int:
    """GetModelMetadata over gRPC: raises `ServerError` when no server accepts a
    connection at `target`, it does not serve `model`, or `model` is not an
    ean_tf export (`check_model`); returns its number of classes."""
    import grpc

    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        # Only now: these load TensorFlow, whose start-up takes seconds.
        from google.protobuf import json_format
        from tensorflow_serving.apis import (
            get_model_metadata_pb2,
            prediction_service_pb2_grpc,
        )

        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        request.metadata_field.append("signature_def")
        response = stub.GetModelMetadata(request, timeout)
    except grpc.FutureTimeoutError:
        raise ServerError(
            f"no TensorFlow Serving answers at {target} (gRPC, {timeout:g} s)"
        ) from None
    except grpc.RpcError as error:
        raise ServerError(
            f"{target}: the server answers but not for model {model!r} "
            f"({error.code().name}: {error.details()})"
        ) from None
    finally:
        channel.close()
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    # As TF Serving's REST API spells it (tensor_shape, not tensorShape).
    signatures = json_format.MessageToDict(
        signature_map, preserving_proto_field_name=True
    ).get("signature_def", {})
    return check_model(signatures, f"{target} (model {model!r})", classes)


def _error_body(error: urllib.error.HTTPError) -> str:
    """The message of an HTTP error's body: TF Serving's {"error": "..."}, or the
    body's first line."""
    try:
        body = error.read().decode("utf-8", "replace").strip()
    except OSError:
        return error.reason or ""
    try:
        return str(json.loads(body)["error"]).strip().splitlines()[0]
    except (ValueError, KeyError, TypeError, IndexError):
        return body.splitlines()[0] if body else str(error.reason or "")


def encode_png(image_rgb: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", np.ascontiguousarray(image_rgb[..., ::-1]))
    if not ok:
        raise ValueError("could not encode the face crop")
    return data.tobytes()


def predict_rest(
    url: str, images: list[bytes], model: str = "ean", timeout: float = 30.0
) -> list[dict]:
    """POST /v1/models/<model>:predict with {"b64": ...} instances; a refused
    request raises `ServerError` with the server's message."""
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
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            rows = json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as error:
        raise ServerError(
            f"{request.full_url}: HTTP {error.code}: {_error_body(error)}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServerError(f"{request.full_url}: no answer ({reason})") from None
    return [
        {"problem": row["problem"]}
        if row.get("problem")
        else {k: v for k, v in row.items() if k not in ("valid", "problem")}
        for row in rows
    ]


def predict_grpc(
    target: str, images: list[bytes], model: str = "ean", timeout: float = 30.0
) -> list[dict]:
    """PredictionService.Predict over gRPC (tensorflow-serving-api); a refused
    request raises `ServerError` with the server's message."""
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
    try:
        response = stub.Predict(request, timeout)
    except grpc.RpcError as error:
        raise ServerError(
            f"{target} (model {model!r}): {error.code().name}: {error.details()}"
        ) from None
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


def classify_files(
    files: list[str], send, image_size: int, max_pixels: int = 4096 * 4096
) -> list[dict]:
    """Detects and aligns faces in `files`, sends them with `send(list of
    bytes)`; returns one dict per face (files without a face, or of more than
    `max_pixels` pixels by their header, get a row with `problem`)."""
    return list(_classify(files, send, image_size, max_pixels))


def _classify(files: list[str], send, image_size: int, max_pixels: int):
    """`classify_files`, one row at a time."""
    import cv2

    from ean_tf.data.align import FaceAligner
    from ean_tf.predict import pixel_problem

    aligner = FaceAligner(image_size)
    for path in files:
        too_large = pixel_problem(path, max_pixels)
        if too_large:
            yield {"file": path, "problem": too_large}
            continue
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            yield {"file": path, "problem": "unreadable"}
            continue
        faces = aligner.faces(np.ascontiguousarray(image[..., ::-1]))
        if not faces:
            yield {"file": path, "problem": "no face found"}
            continue
        answers = send([encode_png(f["aligned"]) for f in faces])
        for face, answer in zip(faces, answers, strict=True):
            yield {"file": path, "box": face["box"], **answer}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="file, folder or glob (required)")
    parser.add_argument("--rest", help="REST address, e.g. http://localhost:8501")
    parser.add_argument("--grpc", help="gRPC address, e.g. localhost:8500")
    parser.add_argument("--model", default="ean", help="model name on the server")
    parser.add_argument(
        "--classes",
        default="",
        help="the model's class names, comma-separated: checked against the "
        "server's (optional)",
    )
    parser.add_argument(
        "--image_size", type=int, default=48, help="the exported model's input size"
    )
    parser.add_argument(
        "--max_image_pixels",
        type=int,
        default=4096 * 4096,
        help="photos of more pixels (by their header) are reported, not read",
    )
    args = parser.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    try:  # before MTCNN and TensorFlow start
        if not args.images:
            raise ClientError("--images: expected an image, a folder or a glob")
        if not (os.path.exists(args.images) or glob.glob(args.images)):
            raise ClientError(
                f"--images={args.images}: no such file, folder or pattern"
            )
        if bool(args.rest) == bool(args.grpc):
            raise ClientError("give exactly one of --rest and --grpc")
        if args.rest:
            check_rest(args.rest, args.model, classes)
            send = lambda images: predict_rest(args.rest, images, args.model)
        else:
            check_grpc(args.grpc, args.model, classes)
            send = lambda images: predict_grpc(args.grpc, images, args.model)
        from ean_tf.predict import list_images  # TensorFlow starts here

        files = list_images(args.images)
        for row in _classify(files, send, args.image_size, args.max_image_pixels):
            name = row.get("class_name")
            if classes and name is not None and name not in classes:
                raise ServerError(
                    f"the server answers class {name!r}, not one of --classes "
                    f"({', '.join(classes)})"
                )
            print(json.dumps(row), flush=True)
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
