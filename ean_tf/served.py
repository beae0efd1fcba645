"""Which graph a trained model answers in: the checks and settings behind
--served_graph and --served_label_weight, shared by eval, predict and export."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("ean_tf")


def check_graph(model, graph: str, path: str, flag: str = "inference_graph"):
    """A clear error where a run asks a model for the nearest graph it cannot give
    (built without its store), rather than its isolated answer under the nearest
    graph's name."""
    if graph == "nearest" and model.head_type == "ean" and model.memory is None:
        raise ValueError(
            f"--{flag}=nearest: {path} stores no training images for the nearest "
            f"graph (built with memory_size=0); it serves the "
            f"{model.inference_graph} graph: pass --{flag}={model.inference_graph}."
        )


def serving_model(model, graph: str, path: str, label_weight: float = -1.0):
    """`model` set to serve `graph` (empty: the graph it was saved with) with the
    nearest graph's `label_weight` (-1: its own), with a warning where that
    graph's stored training images or labels are missing."""
    if model.head_type == "ean" and graph:
        check_graph(model, graph, path, "served_graph")
        model.set_inference_graph(graph)
    if label_weight >= 0:
        set_label_weight(model, label_weight, path, model.inference_graph)
    if model.head_type != "ean":
        return model
    served = model.inference_graph
    if served == "nearest" and (
        model.memory is None or not float(model.memory.valid[0].numpy())
    ):
        log.warning(
            "%s stores no training images for its %s graph: its answers equal the "
            "isolated network's",
            path,
            served,
        )
    return model


def set_label_weight(model, weight: float, path: str, graph: str) -> None:
    """--served_label_weight: the nearest graph's label weight, for a model that
    answers in its nearest graph (`graph`: nearest, or eval's all; a clear error
    otherwise), with a warning where its store holds no training labels."""
    flag = f"--served_label_weight={weight:g}"
    if model.head_type != "ean" or model.memory is None:
        raise ValueError(
            f"{flag}: {path} has no nearest graph (a linear head, or built without "
            "stored images); leave the flag out."
        )
    if graph not in ("nearest", "all"):
        raise ValueError(
            f"{flag} weighs the nearest graph's labels; {path} answers in its "
            f"{graph} graph: add --served_graph=nearest (--inference_graph=nearest "
            "in --mode=eval) or leave the flag out."
        )
    model.set_nearest_label_weight(weight)
    if weight > 0 and not np.any(model.memory.targets.numpy()):
        log.warning(
            "%s stores no training labels for its nearest graph: %s changes "
            "nothing; refill it with build_memory(batches, targets) to use them",
            path,
            flag,
        )
