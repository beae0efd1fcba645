"""One function per `run.py --mode`, each taking a `Config` (never flags)."""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys

from ean_tf.config import Config

log = logging.getLogger("ean_tf")


def default_checkpoint(config: Config, checkpoint: str) -> str:
    """--checkpoint: a shipped model's name (its file), a path, or empty
    (<run_dir>/model.keras)."""
    from ean_tf import pretrained

    if checkpoint in pretrained.MODELS and not os.path.exists(checkpoint):
        return pretrained.path(checkpoint)
    return checkpoint or os.path.join(config.train.run_dir, "model.keras")


def run_train(config: Config, checkpoint: str = "", output: str = "") -> None:
    from ean_tf.train import train

    summary = train(config)
    print_summary(summary)


def _python() -> str:
    """The interpreter to name in a printed command: the one running, relative to
    the current folder when it lives below it (`.venv/bin/python`)."""
    exe = sys.executable or "python"
    rel = os.path.relpath(exe)
    return rel if not rel.startswith("..") else "python"


def _command() -> str:
    """The command to name in a printed next step: `ean-tf` when that is what
    runs, else `<python> run.py`."""
    if os.path.basename(sys.argv[0] if sys.argv else "") == "ean-tf":
        return "ean-tf"
    return f"{_python()} run.py"


def print_summary(summary: dict) -> None:
    acc = summary["accuracy"]
    done = (
        f"Finished {summary['epochs_done']} epochs in {summary['seconds']:.0f} s."
        if summary["epochs_trained"]
        else f"Already finished ({summary['epochs_done']} epochs): trained nothing; "
        f"evaluated the model in {summary['seconds']:.0f} s."
    )
    lines = [
        "",
        done,
        "Validation accuracy: "
        + ", ".join(f"{g} graph {a:.4f}" for g, a in acc.items()),
        f"  model:               {summary['model']}",
        f"  best checkpoint:     {summary['best_model']}",
        f"  metrics:             {summary['metrics']}",
        f"  confusion matrices:  {', '.join(summary['confusion'])}",
        f"  logs:                {summary['logs']}",
        f"  TensorBoard:         {summary['tensorboard']}",
        f"Next: {_command()} --mode=eval --inference_graph=all "
        f"--run_dir={shlex.quote(summary['run_dir'])}",
    ]
    print("\n".join(lines))


def _check_classes(model, path: str, class_names, data) -> None:
    """Stops where the data's classes are not the model's (names or number)."""
    from ean_tf.data import data_folder

    if tuple(class_names) == tuple(model.class_names):
        return
    raise ValueError(
        f"--dataset={data.dataset} at {data_folder(data)}: its {len(class_names)} "
        f"classes {list(class_names)} are not the {model.num_classes} classes of "
        f"{path} {list(model.class_names)}; evaluate the model on data of its own "
        "classes (--dataset, --data_dir)"
    )


def _data(config: Config, model, path: str):
    """The data of `config` at the model's image size, checked to hold the
    model's classes before anything is written, announced in one line."""
    import dataclasses

    from ean_tf import data as data_lib
    from ean_tf.data import synthetic

    d = dataclasses.replace(config.data, image_size=model.image_size, noise_rate=0.0)
    if d.dataset == "default":  # known without generating the images
        _check_classes(model, path, synthetic.CLASS_NAMES, d)
    splits = data_lib.load(d, seed=config.train.seed)
    _check_classes(model, path, splits.class_names, d)
    print(
        f"Data: {d.dataset} at {data_lib.data_folder(d)}, split "
        f"{data_lib.split_names(d)[1]}: {len(splits.val)} images of "
        f"{len(splits.class_names)} classes"
    )
    return splits


def _model_and_splits(config: Config, checkpoint: str):
    """The checkpoint (default <run_dir>/model.keras), its path, and the data at
    the model's image size; the model is checked for the graph the run asks of
    it first, so that a graph it lacks stops the run before the data is read."""
    from ean_tf.runs import load_model
    from ean_tf.served import check_graph, set_label_weight

    path = default_checkpoint(config, checkpoint)
    model = load_model(path)
    graph = config.model.inference_graph
    check_graph(model, model.inference_graph if graph == "all" else graph, path)
    if config.export.served_label_weight >= 0:
        set_label_weight(model, config.export.served_label_weight, path, graph)
    return model, path, _data(config, model, path)


def evaluation_dir(config: Config, checkpoint: str, *answers: str) -> str:
    """Where an evaluation of `checkpoint` on `config.data` writes: the run
    folder when it evaluates the run's own model (model.keras) on the run's own
    data as training did (the same --seed and --batch_size, no `answers`: the
    graphs or settings other than training's), or when the folder holds no
    run; else `<run_dir>/eval_<what>`, named by the model, data set, folder,
    split and reader fields and settings that differ from the run's and the
    `answers`, so that the training's metrics.json and figures stay as
    written."""
    from ean_tf import data as data_lib
    from ean_tf.config import config_for_run

    run_dir = config.train.run_dir
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        return run_dir
    parts = []
    model_path = os.path.abspath(checkpoint)
    if model_path != os.path.abspath(os.path.join(run_dir, "model.keras")):
        model_dir, name = os.path.split(model_path)
        stem = name.removesuffix(".keras")
        same = model_dir == os.path.abspath(run_dir)
        parts.append(stem if same else f"{os.path.basename(model_dir)}-{stem}")
    trained = config_for_run(run_dir)
    ours = data_lib.validation_data(config.data)
    run = data_lib.validation_data(trained.data)
    answers += tuple(  # what splits the data and batches the batch graph
        f"{k}-{getattr(config.train, k)}"
        for k in ("seed", "batch_size")
        if getattr(config.train, k) != getattr(trained.train, k)
    )
    if not parts and not answers and ours == run:
        return run_dir
    if ours["dataset"] != run["dataset"]:
        parts.append(ours["dataset"])
    data_dir = os.path.basename(ours["data_dir"])
    if ours["data_dir"] != run["data_dir"] and data_dir not in parts:
        parts.append(data_dir)
    parts.append(ours["val_split"])
    if ours["dataset"] == run["dataset"]:
        parts += [
            f"{k}-{v}"
            for k, v in ours.items()
            if k not in ("data_dir", "val_split") and v != run[k]
        ]
    parts += answers
    return os.path.join(run_dir, re.sub(r"[^\w.=-]+", "-", "eval_" + "_".join(parts)))


def run_eval(config: Config, checkpoint: str = "", output: str = "") -> None:
    from ean_tf import evaluate
    from ean_tf.files import writable_folder

    flag = "--output" if output else "--run_dir"
    writable_folder(output or config.train.run_dir, flag)  # before the evaluation

    model, path, splits = _model_and_splits(config, checkpoint)
    from ean_tf.evaluate import evaluation_graphs

    graph = config.model.inference_graph
    if graph == "all" or model.head_type == "linear":
        graphs = evaluation_graphs(model)
    else:
        graphs = (graph,)
    answers = [] if graphs == evaluation_graphs(model) else ["-".join(graphs)]
    if config.export.served_label_weight >= 0:
        answers.append(f"label_weight-{config.export.served_label_weight:g}")
    out_dir = output or evaluation_dir(config, path, *answers)
    noisy = os.path.join(config.train.run_dir, "noisy_labels.csv")
    report = evaluate.evaluate_model(
        model,
        splits.val,
        model.image_size,
        config.train.batch_size,
        out_dir,
        graphs=graphs,
        checkpoint=path,
        noisy_labels=noisy if os.path.isfile(noisy) else None,
        train_examples=splits.train,
    )
    for g, r in report["graphs"].items():
        print(
            f"{g:>8} graph: accuracy {r['accuracy']:.4f}, mean class accuracy "
            f"{r['mean_class_accuracy']:.4f} on {r['num_samples']} images"
        )
    for layer in (report.get("head_activity") or {}).get("layers", []):
        print(
            f"GCN head {layer['name']}: {layer['dead']} of {layer['units']} hidden "
            f"units never fire on {report['head_activity']['images']} images"
        )
    quality = report.get("graph_quality")
    if quality:
        print(
            f"Batch graph on {quality['images']} images in batches of "
            f"{quality['batch_size']}: {quality['similar_per_node']} similar edges a "
            f"node, {quality['similar_precision']} of them within a class "
            f"(chance {quality['chance']}), {quality['isolated']} of nodes without "
            "edges; within a class, by class: "
            + ", ".join(
                f"{name} {value}"
                for name, value in quality["similar_precision_per_class"].items()
            )
        )
    figures = [os.path.join(out_dir, f"confusion_{g}.png") for g in report["graphs"]]
    print(f"Wrote {os.path.join(out_dir, 'metrics.json')}, {', '.join(figures)}")
    print(f"Next: {_command()} --mode=export --checkpoint={path}")


def run_visualize(config: Config, checkpoint: str = "", output: str = "") -> None:
    import numpy as np

    from ean_tf.data.pipeline import make_dataset
    from ean_tf.files import writable_file
    from ean_tf.runs import load_model
    from ean_tf.visualize import batch_graph_figure

    checkpoint = default_checkpoint(config, checkpoint)
    path = output or os.path.join(evaluation_dir(config, checkpoint), "batch_graph.png")
    writable_file(path, "--output" if output else "--run_dir")
    model = load_model(checkpoint)
    splits = _data(config, model, checkpoint)
    n = min(8, len(splits.val))
    order = np.random.default_rng(config.train.seed).permutation(len(splits.val))[:n]
    images, targets = next(
        iter(
            make_dataset(splits.val.select(order), model.image_size, n, training=False)
        )
    )
    info = batch_graph_figure(
        model, images.numpy(), targets.numpy().argmax(1), splits.class_names, path
    )
    print(
        f"Wrote {path}: {info['nodes']} faces, {info['similar_edges']} similar "
        f"and {info['opposite_edges']} opposite edges"
    )


def run_export(config: Config, checkpoint: str = "", output: str = "") -> None:
    import shlex

    from ean_tf.files import writable_folder
    from ean_tf.runs import load_model
    from ean_tf.served import serving_model
    from export.serving import export_model

    e = config.export
    writable_folder(e.export_dir, "--export_dir")
    path = default_checkpoint(config, checkpoint)
    model = serving_model(load_model(path), e.served_graph, path, e.served_label_weight)
    final = export_model(
        model, e.export_dir, e.export_version, e.max_image_bytes, e.max_image_pixels
    )
    volume = shlex.quote(f"{os.path.abspath(e.export_dir)}:/models/ean")
    graph, weight = model.answers_with()
    labels = f" with label weight {weight:g}" if weight else ""
    print(f"Exported {path} to {final}, serving its {graph} graph{labels}")
    print("Serve it with TensorFlow Serving:")
    lines = [
        f"  docker run -p 8501:8501 -p 8500:8500 -v {volume}",
        "    -e MODEL_NAME=ean tensorflow/serving",
    ]
    if graph != "batch":  # each answer independent of the other images
        lines.append(
            "    --enable_batching "
            "--batching_parameters_file=/models/ean/batching_parameters.txt"
        )
    print(" \\\n".join(lines))
    if graph == "batch":
        print(
            "Its batch graph's answers depend on the other images of a request: "
            "serve it without --enable_batching, so that a request never mixes "
            "two clients' images."
        )


def run_predict(config: Config, checkpoint: str = "", output: str = "") -> None:
    from ean_tf.predict import list_images, predict

    spec = config.predict.images
    if not spec:
        raise ValueError("--mode=predict needs --images=PATH|GLOB|DIR")
    if not list_images(spec):  # before the model loads
        raise ValueError(f"--images={spec}: no images (.jpg, .png, .bmp, ...) there")
    if output and not output.endswith((".csv", ".json")):
        raise ValueError(f"--output={output}: predictions are written as .csv or .json")
    model = default_checkpoint(config, checkpoint)
    # Beside the model when it is in a run folder, else here.
    folder = os.path.dirname(os.path.abspath(model))
    if not os.path.isfile(os.path.join(folder, "config.json")):
        folder = "."
    output = output or os.path.join(folder, "predictions.csv")
    result = predict(
        model,
        config.predict.images,
        output,
        config.predict.annotate_dir,
        config.prepare.no_face,
        served_graph=config.export.served_graph,
        label_weight=config.export.served_label_weight,
        max_pixels=config.export.max_image_pixels,
    )
    print(
        f"{len(result['faces'])} faces classified, {len(result['problems'])} "
        f"problems reported; wrote {output}"
    )
    for problem in result["problems"]:
        print(f"  {problem['file']}: {problem['problem']}")


def run_pretrain_generator(
    config: Config, checkpoint: str = "", output: str = ""
) -> None:
    from ean_tf.pretrain import pretrain

    s = pretrain(config, output)
    final, c = s["final"], s["collapse"]
    collapsed = {True: "yes", False: "no", None: "unknown"}[c["collapsed"]]
    lines = [
        "",
        f"Pre-trained the backbone against D_m for {s['epochs']} epochs in "
        f"{s['seconds']:.0f} s ({s['identities'] or 'no'} identities).",
        f"  D view accuracy {final.get('d_view_accuracy', float('nan')):.3f}, "
        f"expression accuracy {final.get('expression_accuracy', float('nan')):.3f}",
        f"  backbone weights: {s['backbone_weights']}",
        f"  figure 4:         {s.get('figure', '')}",
        "  conv3 cosine frontal/perturbed before -> after: "
        + ", ".join(
            f"{k} {s['feature_similarity']['before'][k]:.3f} -> "
            f"{s['feature_similarity']['after'][k]:.3f}"
            for k in s.get("feature_similarity", {}).get("after", {})
        ),
        f"  conv3 probe on {c['images']} validation images before -> after: "
        "cosine of different images "
        f"{c['before']['conv3_cos_different_images']:.3f} -> "
        f"{c['after']['conv3_cos_different_images']:.3f}, effective rank "
        f"{c['before']['conv3_effective_rank']:.1f} -> "
        f"{c['after']['conv3_effective_rank']:.1f}",
        f"conv3 collapsed: {collapsed} (the cosine of different images changed by "
        f"{c['cos_different_images_rise']:+.3f}; more than +{c['threshold']:g} "
        "is a collapse)",
        "Next: python run.py --mode=train --generator_checkpoint="
        f"{s['backbone_weights']} (with the same --backbone/--stem/--width)",
    ]
    print("\n".join(lines))


def run_robustness(config: Config, checkpoint: str = "", output: str = "") -> None:
    """Accuracy on the validation split and on perturbed copies of it."""
    from ean_tf.evaluate import robustness
    from ean_tf.files import writable_file, write_json

    where = evaluation_dir(config, default_checkpoint(config, checkpoint))
    out = output or os.path.join(where, "robustness.json")
    writable_file(out, "--output" if output else "--run_dir")
    model, path, splits = _model_and_splits(config, checkpoint)
    graph = config.model.inference_graph
    graph = "isolated" if model.head_type == "linear" else graph
    graph = model.inference_graph if graph == "all" else graph  # what it serves
    result = robustness(
        model,
        splits.val,
        model.image_size,
        config.train.batch_size,
        graph,
        config.evaluation.robustness_seed,
    )
    report = {
        "checkpoint": path,
        "graph": graph,
        "seed": config.evaluation.robustness_seed,
        "results": result,
    }
    write_json(out, report)
    for name, r in result.items():
        print(
            f"{name:>13}: accuracy {r['accuracy']:.4f}, mean class accuracy "
            f"{r['mean_class_accuracy']:.4f}"
        )
    print(f"Wrote {out}")


def run_prepare(config: Config, checkpoint: str = "", output: str = "") -> None:
    from ean_tf.data import prepare
    from ean_tf.files import writable_folder

    out = output or os.path.join(config.data.data_dir or ".", "prepared")
    writable_folder(out, "--output")
    manifest = prepare.prepare(config.data, out, config.prepare.no_face)
    print(
        f"Wrote {out}/manifest.json ({manifest['images_per_second']} images/s). "
        f"Train with --dataset=tfrecord --data_dir={out}"
    )


def run_convert_weights(config: Config, checkpoint: str = "", output: str = "") -> None:
    """Converts --backbone_weights (PyTorch, VGGFace .h5) to a Keras weights file."""
    from ean_tf.config import ConfigError
    from ean_tf.files import writable_file
    from ean_tf.models.backbones import build_backbone, load_backbone_weights
    from ean_tf.runs import atomic_save_weights

    m = config.model
    if not m.backbone_weights:
        raise ConfigError("--backbone_weights: expected the file to convert")
    if not output.endswith(".weights.h5"):
        raise ConfigError(
            "--output: expected the converted file's path, ending in .weights.h5. "
            f"Received: {output!r}"
        )
    writable_file(output, "--output")
    backbone = build_backbone(
        m.backbone, config.data.image_size, m.stem, m.width, m.input_norm
    )
    load_backbone_weights(backbone, m.backbone_weights)
    atomic_save_weights(backbone, output)
    print(
        f"Converted {m.backbone_weights} ({len(backbone.weights)} arrays) into "
        f"{output}. Train from it with --backbone={m.backbone} --stem={m.stem} "
        f"--width={m.width} --input_norm={m.input_norm} --backbone_weights={output}"
    )


def describe(path: str) -> dict:
    """What a `.keras` model or an exported SavedModel folder is: its classes,
    input size, the graph it answers in and, for a `.keras` model in a run
    folder, the data it was trained on (that folder's config.json)."""
    import json

    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        weight = float(loaded.nearest_label_weight.numpy())
        return {
            "kind": "SavedModel export",
            "classes": [n.decode() for n in loaded.class_names.numpy()],
            "image_size": int(loaded.input_size.numpy()),
            "graph": loaded.served_graph.numpy().decode(),
            "label_weight": weight,
        }
    from ean_tf.models.ean import FORMAT_VERSION
    from ean_tf.runs import load_model

    model = load_model(path)
    graph, weight = model.answers_with()
    info = {
        "kind": f"ean_tf model, format {FORMAT_VERSION}",
        "classes": list(model.class_names),
        "image_size": model.image_size,
        "graph": graph,
        "label_weight": weight,
        "network": f"{model.backbone_name}, {model.head_type} head",
    }
    if model.memory is not None:
        info["stored_images"] = int(model.memory.valid.numpy().sum())
    run_config = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if os.path.isfile(run_config):
        with open(run_config) as f:
            data = json.load(f).get("data", {})
        fields = ("dataset", "data_dir", "noise_rate")
        info["trained_on"] = " ".join(f"--{k}={data[k]}" for k in fields if data.get(k))
    return info


def run_describe(config: Config, checkpoint: str = "", output: str = "") -> None:
    """Prints what a model is (`describe`): --checkpoint, default the run's."""
    path = default_checkpoint(config, checkpoint)
    info = describe(path)
    answers = f"its {info['graph']} graph"
    if info["graph"] == "nearest":
        answers += f", label weight {info['label_weight']:g}"
        if "stored_images" in info:
            answers += f", {info['stored_images']} stored training images"
    lines = [
        f"{path}: {info['kind']}",
        f"  classes ({len(info['classes'])}): {', '.join(info['classes'])}",
        f"  input:      {info['image_size']} x {info['image_size']} RGB, 0..255",
        f"  answers in: {answers}",
    ]
    if "network" in info:
        lines.append(f"  network:    {info['network']}")
    if info.get("trained_on"):
        lines.append(f"  trained on: {info['trained_on']}")
    print("\n".join(lines))


MODES = {
    "prepare": run_prepare,
    "train": run_train,
    "eval": run_eval,
    "predict": run_predict,
    "export": run_export,
    "pretrain_generator": run_pretrain_generator,
    "robustness": run_robustness,
    "visualize": run_visualize,
    "convert_weights": run_convert_weights,
    "describe": run_describe,
}
