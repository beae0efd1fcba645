"""The paper's experiments on real data, one command each.

    python bench/experiments.py --experiment=clean      # linear twin vs EAN
    python bench/experiments.py --experiment=noise      # 0/10/20/30% label noise
    python bench/experiments.py --experiment=memorisation --seed=0  # noise where
                                                        # the twin memorises it
    python bench/experiments.py --experiment=ablations  # EAN's own choices
    python bench/experiments.py --experiment=generator  # table 5: with/without
                                                        # the invariant generator

Each run trains with `--config` (default `ferplus48`, the CPU protocol: FERPlus
majority labels, 48 px, ResNet-18 from scratch; for `memorisation`,
`ferplus48_memorise`: 5,000 of its training images for 30 epochs, so that a plain
network memorises wrong labels) plus the run's overrides (none: the default;
`objective="paper"`: the paper's objective; `gce_q`: generalised cross-entropy;
`lambda_views`, `lambda_adv`: the generator's G loss;
`generator_cotrain_weight`: its adversarial term inside the training),
then writes `<out_dir>/<experiment>/<run>.json` (`memorisation`:
bench/results/memorisation/seed<N>/) (final accuracy and mean class accuracy in
each inference graph, the best validation accuracy, validation accuracy per
epoch, the flipped-label report on noisy runs, time, command, machine, date). A
run whose JSON exists is skipped, so an interrupted experiment continues where it
stopped; commit the JSONs. `<experiment>.json` (the table) and `<experiment>.png`
(validation accuracy over epochs, one panel per noise level) are written beside
them after each call, from every run done so far.

`--extra=flag=value,...` applies to every run, under the run's own overrides (a
list value's items are separated by ':', e.g. `gcn_units=512:256`; `gcn_units=`
for none). A run whose configuration (folders aside) matches a finished run's JSON
anywhere under `--reuse_from` (default bench/results) or `--out_dir` is not trained
again: its JSON is copied, with `same_run_as` naming the original (noise 0% is the
clean runs). What a model answers with (the model's `EVALUATION_FIELDS`: the
served graph, `nearest_k`, `nearest_label_weight`) does not make another run; the
table names the k and label weight each row's nearest graph was evaluated with. A
JSON written by another version of the configuration is never taken for a run
of this one (the call names the fields that differ).

On a GPU, `--config=ferplus48_gpu` runs the full protocol (stride-1 stem, the
paper's 70 epochs, images cached in memory, mixed precision and XLA); its
results go to `bench/results/ferplus48_gpu/`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import time

import common
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "experiment",
    "clean",
    ["clean", "noise", "memorisation", "ablations", "generator"],
    "Which.",
)
flags.DEFINE_string(
    "config",
    "",
    "Preset every run starts from (empty: ferplus48_memorise for "
    "--experiment=memorisation, ferplus48 for the others).",
)
flags.DEFINE_string("data_dir", common.FERPLUS_DIR, "Data set root.")
flags.DEFINE_string(
    "out_dir",
    "",
    "Where result JSONs go (empty: bench/results for the CPU protocol ferplus48, "
    "bench/results/<config> for any other preset, so that runs of another protocol "
    "never count as done by the CPU ones).",
)
flags.DEFINE_string(
    "runs_dir",
    os.path.join(common.ROOT, "runs", "bench"),
    "Where runs' checkpoints go.",
)
flags.DEFINE_list("only", [], "Run only these run names.")
flags.DEFINE_list("extra", [], "field=value overrides for every run.")
flags.DEFINE_integer("seed", 0, "Seed of every run.")
flags.DEFINE_string(
    "baseline_dir",
    "",
    "A results folder whose linear-head runs join this call's table and figure "
    "(e.g. bench/results when --out_dir holds EAN variants run with --extra).",
)
flags.DEFINE_list(
    "reuse_from",
    [common.RESULTS_DIR],
    "Folders searched, with --out_dir, for a finished run of the same configuration "
    "(which is then copied instead of trained).",
)

NOISE_RATES = (0.0, 0.1, 0.2, 0.3)
MEMORISATION_RATES = (0.0, 0.2, 0.4)


def _preset() -> str:
    if FLAGS.config:
        return FLAGS.config
    return "ferplus48_memorise" if FLAGS.experiment == "memorisation" else "ferplus48"


def runs(experiment: str) -> dict[str, dict]:
    """Run name -> config overrides (none: the default)."""
    if experiment == "clean":
        return {"linear": {"head": "linear"}, "ean": {}}
    if experiment == "noise":
        out = {}
        for rate in NOISE_RATES:
            pct = round(rate * 100)
            for head in ("linear", "ean"):
                out[f"{head}_noise{pct}"] = {"head": head, "noise_rate": rate}
            # The paper's objective (eq. 6: CE_graph + alpha Adj_loss, training
            # every variable).
            out[f"ean_paper_noise{pct}"] = {
                "head": "ean",
                "noise_rate": rate,
                "objective": "paper",
            }
        return out
    if experiment == "memorisation":  # label noise where the twin memorises it
        out = {}
        for rate in MEMORISATION_RATES:
            pct = round(rate * 100)
            out[f"linear_noise{pct}"] = {"head": "linear", "noise_rate": rate}
            out[f"ean_noise{pct}"] = {"head": "ean", "noise_rate": rate}
            out[f"ean_paper_noise{pct}"] = {
                "head": "ean",
                "noise_rate": rate,
                "objective": "paper",
            }
            # The peer: the linear twin under generalised cross-entropy (q = 0.7,
            # as Zhang and Sabuncu's), a noise-robust loss.
            out[f"linear_gce_noise{pct}"] = {
                "head": "linear",
                "noise_rate": rate,
                "gce_q": 0.7,
            }
        return out
    if experiment == "generator":  # the paper's table 5: backbone with / without
        return {
            "linear": {"head": "linear"},
            "linear_generator": {"head": "linear", "_pretrain": True},
            # the paper's G loss: the expression loss on the frontal images only
            "linear_generator_paper": {
                "head": "linear",
                "_pretrain": True,
                "lambda_views": 0.0,
            },
            # the pre-training without its adversary: what the extra epochs on
            # the views give alone
            "linear_views": {"head": "linear", "_pretrain": True, "lambda_adv": 0.0},
            # the adversarial term inside the training instead of a pre-training
            "linear_cotrain": {"head": "linear", "generator_cotrain_weight": 0.1},
            "ean": {},
            "ean_generator": {"_pretrain": True},
            "ean_cotrain": {"generator_cotrain_weight": 0.1},
        }
    return {
        "ean_default": {},
        # The paper's objective.
        "paper": {"objective": "paper"},
        "single_threshold": {"tau2": float("-inf")},
        "two_thresholds": {"tau2": -0.3},
        "adj_sum": {"adj_reduction": "sum"},
        "adj_mean": {"adj_reduction": "mean"},
        "adj_off": {"adj_loss_weight": 0.0},
        "no_straight_through": {"straight_through": False},
        "no_embedding_norm": {"embedding_norm": "none"},
        "warmup_0": {"adj_warmup_epochs": 0},
        "warmup_half": {"adj_warmup_epochs": -1},  # half of the epochs
        # The head itself. One GCN layer without dropout (the default) is exactly
        # the linear baseline's head while A = I, so it separates the graph from
        # the head; two layers with dropout were the first head.
        "one_gcn_layer": {"gcn_units": (), "gcn_dropout": 0.0},
        "two_gcn_layers": {"gcn_units": (256,), "gcn_dropout": 0.3},
        "gcn_dropout_0": {"gcn_dropout": 0.0},
        # The graph on each replica's batch or on the global batch, with 2 replicas
        # (2 logical CPU devices where there is no GPU; with one GPU there is one
        # replica and the two are the same run).
        "graph_local": {"strategy": "mirrored", "_replicas": 2},
        "graph_global": {
            "strategy": "mirrored",
            "cross_replica_graph": True,
            "_replicas": 2,
        },
    }


def _parse_extra(items: list[str]) -> dict:
    """`--extra` items, `field=value`, each value cast to its config field's type.

    A list field's items are separated by ':' (`--extra` itself is comma-separated):
    `gcn_units=512:256`, and `gcn_units=` for none.
    """
    from ean_tf.config import field_index

    index = field_index()
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in index:
            raise app.UsageError(
                f"--extra: {item!r} is not field=value with a config field "
                "(the fields are run.py's flags)"
            )
        field = index[key][1]
        default = (
            field.default_factory()
            if field.default is dataclasses.MISSING
            else field.default
        )
        try:
            out[key] = _cast(value, default)
        except ValueError:
            raise app.UsageError(
                f"--extra: {item!r}: expected a value like {default!r}"
            ) from None
    return out


def _cast(value: str, like):
    if isinstance(like, bool):
        if value.lower() not in ("true", "false"):
            raise ValueError(value)
        return value.lower() == "true"
    if isinstance(like, tuple):
        kind = type(like[0]) if like else int
        return tuple(kind(v) for v in value.split(":") if v)
    if isinstance(like, (int, float)):
        return type(like)(value)
    return value


def _config(run_dir: str, **overrides):
    """The preset with this run's folder, data, seed and overrides applied."""
    from ean_tf.config import make_config

    return make_config(
        _preset(),
        data_dir=FLAGS.data_dir,
        run_dir=run_dir,
        seed=FLAGS.seed,
        **overrides,
    )


def _plan(overrides: dict) -> tuple[dict, bool, int]:
    """A run's config overrides (on top of `--extra`: a run's own overrides win),
    whether it starts from a pre-trained generator, and its replica count."""
    overrides = {**_parse_extra(FLAGS.extra), **overrides}
    with_generator = overrides.pop("_pretrain", False)
    replicas = overrides.pop("_replicas", 1)  # devices were split in main()
    if overrides.get("adj_warmup_epochs") == -1:  # half of the epochs
        epochs = _epochs(overrides)
        # at least one epoch, and fewer than all of them
        overrides["adj_warmup_epochs"] = min(max(1, epochs // 2), epochs - 1)
    return overrides, with_generator, replicas


def _epochs(overrides: dict) -> int:
    """The run's epochs, without building its config (its warm-ups are not set)."""
    from ean_tf.config import make_config

    return overrides.get("epochs", make_config(_preset()).train.epochs)


def run_one(name: str, overrides: dict, out_path: str) -> dict:
    from ean_tf.train import train

    overrides, with_generator, _ = _plan(overrides)
    run_dir = os.path.join(FLAGS.runs_dir, FLAGS.experiment, name)
    start = time.time()
    pretrained, start_from = None, {}
    if with_generator:  # pre-train the backbone, then train from it
        pretrained = _pretrained_backbone(out_path, overrides)
        start_from = {"generator_checkpoint": pretrained["backbone_weights"]}
    config = _config(run_dir, **overrides, **start_from)
    summary = train(config)
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(run_dir, "log.csv")) as f:
        log = list(csv.DictReader(f))
    result = {
        "run": name,
        "experiment": FLAGS.experiment,
        "preset": _preset(),
        "overrides": overrides,
        "config": config.to_dict(),
        "accuracy": {g: r["accuracy"] for g, r in metrics["graphs"].items()},
        "mean_class_accuracy": {
            g: r["mean_class_accuracy"] for g, r in metrics["graphs"].items()
        },
        "per_class_recall": {
            g: r["per_class_recall"] for g, r in metrics["graphs"].items()
        },
        "best_val_accuracy": summary["best_val_accuracy"],
        "replicas": summary["replicas"],
        "graph_nodes": float(log[-1]["graph_nodes"]) if log else None,
        "val_accuracy_per_epoch": [float(r["val_accuracy"]) for r in log],
        "flipped_labels": metrics.get("flipped_labels"),
        "head_activity": metrics.get("head_activity"),
        "graph_quality": metrics.get("graph_quality"),
        "seconds": round(time.time() - start, 1),
    }
    if FLAGS.experiment == "generator":
        result["generator"] = pretrained
        result["robustness"] = _robustness(config, run_dir)
    common.write_result(
        os.path.basename(out_path)[:-5], result, os.path.dirname(out_path)
    )
    return result


def _pretrained_backbone(out_path: str, overrides: dict) -> dict:
    """The generator pre-training a run starts from, shared by the runs that
    differ only in what it does not read (`linear_generator` and `ean_generator`
    start from the same backbone): it runs once (and resumes after a kill) in
    `<runs_dir>/<experiment>/pretrained_<hash of its configuration>`, and its
    figure 4 is copied next to the run's JSON as `<run>_feature_maps.png`.
    """
    import hashlib
    import shutil

    from ean_tf.config import GRAPH_FIELDS
    from ean_tf.pretrain import generator_dir, pretrain

    # what G's pre-training does not read: the head and what trains it afterwards
    unread = {"head", "generator_cotrain_weight", *GRAPH_FIELDS}
    kept = {k: v for k, v in overrides.items() if k not in unread}
    key = _comparable(_config(FLAGS.runs_dir, **kept).to_dict())
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    run_dir = os.path.join(FLAGS.runs_dir, FLAGS.experiment, f"pretrained_{digest}")
    config = _config(run_dir, **kept)
    summary_path = os.path.join(generator_dir(config), "summary.json")
    if os.path.isfile(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    else:
        summary = pretrain(config)
    figure = out_path[: -len(".json")] + "_feature_maps.png"
    shutil.copyfile(summary["figure"], figure)
    return {**summary, "figure": os.path.relpath(figure, common.ROOT)}


def _robustness(config, run_dir: str) -> dict:
    """Clean and perturbed validation accuracy of the run's final model."""
    from ean_tf import data as data_lib
    from ean_tf.evaluate import robustness
    from ean_tf.runs import load_model

    model = load_model(os.path.join(run_dir, "model.keras"))
    splits = data_lib.load(config.data, seed=config.train.seed)
    graph, _ = model.answers_with()
    return robustness(
        model,
        splits.val,
        config.data.image_size,
        config.train.batch_size,
        graph,
        config.evaluation.robustness_seed,
    )


def same_runs(results: dict[str, dict], names, out_dir: str) -> list[list[str]]:
    """`names` grouped by the run they are (one curve each): a copy joins the run
    its `same_run_as` names (a JSON path, relative to the checkout or absolute),
    whether that run is here under its own name or another copy of it. `out_dir`
    is as given on the command line (relative to the working directory)."""

    def original(name):
        copied = results[name].get("same_run_as")
        if copied:
            return os.path.realpath(os.path.join(common.ROOT, copied))
        return os.path.realpath(os.path.join(out_dir, f"{name}.json"))  # cwd's

    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(original(name), []).append(name)
    return list(groups.values())


def _noise_columns(result: dict) -> dict:
    """A run's noise rate and seed, its served graph's accuracy (the network alone
    for a linear head), and where its flipped training images ended (None on
    clean data)."""
    config = result["config"]
    flipped = result.get("flipped_labels") or {}
    fraction = lambda key: (
        round(flipped[key] / flipped["flipped"], 4) if flipped.get("flipped") else None
    )
    return {
        "noise_rate": config["data"]["noise_rate"],
        "seed": config["train"]["seed"],
        "acc_served": round(next(iter(result["accuracy"].values())), 4),
        "flipped_memorised": fraction("predicted_noisy"),
        "flipped_predicted_clean": fraction("predicted_clean"),
    }


def _collapse_columns(result: dict) -> dict:
    """For a run from a pre-trained G: the cosine of different images' conv3 maps
    before and after the pre-training (the collapse probe), else nothing."""
    collapse = (result.get("generator") or {}).get("collapse")
    if not collapse:
        return {}
    key = "conv3_cos_different_images"
    return {
        "conv3_cos_before": round(collapse["before"][key], 4),
        "conv3_cos_after": round(collapse["after"][key], 4),
        "collapsed": collapse["collapsed"],
    }


def summarise(results: dict[str, dict], out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ean_tf.config import EVALUATION_FIELDS

    table = []
    for name, r in results.items():
        model = r["config"]["model"]
        nearest = "nearest" in r["accuracy"]  # at the k and label weight it ran
        table.append(
            {
                "run": name,
                **{f"acc_{g}": round(a, 4) for g, a in r["accuracy"].items()},
                **(
                    {f: model.get(f) for f in sorted(EVALUATION_FIELDS)}
                    if nearest
                    else {}
                ),
                **{
                    f"mca_{g}": round(a, 4) for g, a in r["mean_class_accuracy"].items()
                },
                "best_val_accuracy": r["best_val_accuracy"],
                **({"from": r["from"]} if "from" in r else {}),
                **_noise_columns(r),
                **{
                    f"robust_{k}": round(v["accuracy"], 4)
                    for k, v in (r.get("robustness") or {}).items()
                },
                **_collapse_columns(r),
            }
        )
    common.write_result(FLAGS.experiment, {"table": table}, out_dir)
    # One panel per noise level (baseline against EAN), one panel otherwise.
    panels: dict[str, list[str]] = {}
    for name in results:
        by_rate = FLAGS.experiment in ("noise", "memorisation")
        key = name.rsplit("_", 1)[1] if by_rate else ""
        panels.setdefault(key, []).append(name)
    single = len(panels) == 1
    fig, axes = plt.subplots(
        1,
        len(panels),
        # A single panel's legend takes the width to its right.
        figsize=(4.2 * len(panels) + 2.8 + (4.5 if single else 0), 4.5),
        squeeze=False,
        sharey=True,
    )
    for ax, (key, names) in zip(axes[0], panels.items(), strict=True):
        for group in same_runs(results, names, out_dir):
            curve = results[group[0]]["val_accuracy_per_epoch"]
            ax.plot(
                range(1, len(curve) + 1),
                curve,
                marker="o",
                ms=3,
                label=" = ".join(group),
                ls="--" if group[0].startswith("linear") else "-",
            )
        ax.set_xlabel("epoch")
        level = f"{key[len('noise') :]}% label noise" if key else FLAGS.experiment
        title = f"{level}: {_preset()}"
        if FLAGS.extra:
            title += f"\n--extra={','.join(FLAGS.extra)}"
            title += " (linear: --baseline_dir)" if FLAGS.baseline_dir else ""
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if single:  # beside the axes, where no curve runs
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        else:  # one panel per noise level: a few curves each
            ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("validation accuracy (batch graph for EAN)")
    fig.tight_layout()
    fig.savefig(
        os.path.join(out_dir, f"{FLAGS.experiment}.png"), dpi=110, bbox_inches="tight"
    )
    plt.close(fig)


def _out_root() -> str:
    if FLAGS.out_dir:
        return FLAGS.out_dir
    if _preset() == "ferplus48":
        return common.RESULTS_DIR
    return os.path.join(common.RESULTS_DIR, _preset())


def _out_dir() -> str:
    """Where this call's JSONs go: `<out root>/<experiment>`; the memorisation
    regime's default is bench/results/memorisation/seed<N>."""
    if FLAGS.experiment == "memorisation" and not FLAGS.out_dir:
        if _preset() == "ferplus48_memorise":
            return os.path.join(common.RESULTS_DIR, "memorisation", f"seed{FLAGS.seed}")
    return os.path.join(_out_root(), FLAGS.experiment)


def _comparable(config: dict) -> dict:
    """A config as JSON holds it, without the field that names the run's folder."""
    config = json.loads(json.dumps(config))
    config["train"].pop("run_dir", None)
    config["data"]["data_dir"] = os.path.realpath(config["data"]["data_dir"] or ".")
    return config


def _reusable(result: dict) -> bool:
    """Whether another run may copy this JSON: a trained run, not itself a copy,
    not a table, not trained from a pre-trained G."""
    return (
        isinstance(result.get("config"), dict)
        and "accuracy" in result  # not a table, nor another bench
        and "same_run_as" not in result
        and not result.get("generator")
    )


def _finished_runs() -> list[tuple[str, dict]]:
    """(path, JSON) of every reusable run under `--out_dir` and `--reuse_from`."""
    found = []
    roots = {os.path.abspath(p) for p in [_out_root(), *FLAGS.reuse_from]}
    for root in sorted(roots):
        for folder, _, files in sorted(os.walk(root)):
            for file in sorted(f for f in files if f.endswith(".json")):
                path = os.path.join(folder, file)
                with open(path) as f:
                    result = json.load(f)
                if _reusable(result):
                    found.append((path, result))
    return found


@functools.cache
def _expected(name: str) -> tuple[dict, dict]:
    """What run `name` means now, computed once (the flags are fixed for the
    process): its config as JSON holds it, and the fields that do not tell its
    runs apart (for a run from a pre-trained G, the checkpoint's path; for any
    other, the fields only the pre-training reads)."""
    overrides, with_generator, _ = _plan(runs(FLAGS.experiment)[name])
    from ean_tf.config import LINEAR_IGNORED, PRETRAIN_FIELDS

    want = _comparable(_config(FLAGS.runs_dir, **overrides).to_dict())
    ignored = dict(LINEAR_IGNORED) if want["model"]["head"] == "linear" else {}
    # with a pre-trained G its config names a checkpoint made by this experiment
    unread = frozenset({"generator_checkpoint"}) if with_generator else PRETRAIN_FIELDS
    ignored["generator"] = ignored.get("generator", frozenset()) | unread
    return want, ignored


def _differences(name: str, result: dict) -> list[str]:
    """Where a finished run's JSON was trained otherwise than the run `name` means
    now (folders, the data's location and the model's `EVALUATION_FIELDS`
    aside), as `section.field: JSON value, now value`; empty when it is the same
    run. A JSON written by another version of the configuration (a field that
    is not one now, or a field it lacks that the run reads) is never this run:
    it names those fields."""
    from ean_tf.config import EVALUATION_FIELDS

    want, ignored = _expected(name)
    got = _comparable(result["config"])
    got["data"]["data_dir"] = want["data"]["data_dir"]
    out = []
    for section, fields in want.items():
        theirs = got.get(section, {})
        skip = (EVALUATION_FIELDS if section == "model" else frozenset()) | (
            ignored.get(section, frozenset())
        )
        retired = theirs.keys() - fields.keys()
        missing = fields.keys() - theirs.keys() - skip
        out += [f"{section}.{k}: not a field now" for k in sorted(retired)]
        out += [f"{section}.{k}: missing" for k in sorted(missing)]
        for key, value in fields.items():
            if key not in skip and key in theirs and theirs[key] != value:
                out.append(f"{section}.{key}: {theirs[key]!r}, now {value!r}")
    return out


def _same_run_elsewhere(name: str, finished: list[tuple[str, dict]]) -> str | None:
    """A finished run's JSON, under the results folders, whose configuration is
    this run's (folders aside): noise 0% is the clean runs, the ablations' default
    EAN (and `adj_mean`, `single_threshold`, the defaults) the clean EAN, and runs
    with `--extra` find the runs made with the same overrides."""
    overrides, with_generator, replicas = _plan(runs(FLAGS.experiment)[name])
    if with_generator:  # its config names a checkpoint made by this experiment
        return None
    own = os.path.abspath(os.path.join(_out_dir(), name + ".json"))
    data_dir = os.path.realpath(FLAGS.data_dir or ".")
    for path, result in finished:
        if (
            path == own
            or result.get("replicas", 1) != replicas
            # the generator experiment's runs carry robustness too
            or (FLAGS.experiment == "generator" and "robustness" not in result)
            or _comparable(result["config"])["data"]["data_dir"] != data_dir
        ):
            continue
        if not _differences(name, result):
            inside = path.startswith(common.ROOT + os.sep)
            return os.path.relpath(path, common.ROOT) if inside else path
    return None


def _split_cpu(replicas: int) -> None:
    """Without a GPU, `replicas` logical CPU devices, so that mirrored training
    has that many replicas (must run before TensorFlow starts its runtime)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
    )


def main(argv):
    del argv
    _parse_extra(FLAGS.extra)  # a wrong --extra fails before any work
    unknown = sorted(set(FLAGS.only) - set(runs(FLAGS.experiment)))
    if unknown:
        raise app.UsageError(
            f"--only: no run {', '.join(unknown)} in --experiment={FLAGS.experiment}; "
            f"its runs: {', '.join(runs(FLAGS.experiment))}"
        )
    selected = {
        name: overrides
        for name, overrides in runs(FLAGS.experiment).items()
        if not FLAGS.only or name in FLAGS.only
    }
    replicas = max([o.get("_replicas", 1) for o in selected.values()] + [1])
    if replicas > 1:
        _split_cpu(replicas)
    out_dir = _out_dir()
    os.makedirs(out_dir, exist_ok=True)
    results = {}
    finished = _finished_runs()  # read once; runs trained below join it
    for name, overrides in runs(FLAGS.experiment).items():
        path = os.path.join(out_dir, f"{name}.json")
        same = None if os.path.isfile(path) else _same_run_elsewhere(name, finished)
        if same:  # e.g. noise 0% is the clean experiment's run
            with open(os.path.join(common.ROOT, same)) as f:
                result = {**json.load(f), "run": name, "same_run_as": same}
            with open(path, "w") as f:
                json.dump(result, f, indent=2)
        if os.path.isfile(path):
            changed = []  # a copy made just above was found to be this run
            if not same:
                with open(path) as f:
                    result = json.load(f)
                changed = _differences(name, result) if "config" in result else []
            if changed and name in selected:
                raise app.UsageError(
                    f"{path} was trained otherwise than run {name} means now "
                    f"({'; '.join(changed)}): move it aside to train the run anew."
                )
            if changed:  # e.g. a default changed since: not this run any more
                print(f"{name}: left out, {path} differs ({'; '.join(changed)})")
                continue
            if name in selected:
                print(f"{name}: done before ({path})")
            results[name] = result
        elif name in selected:
            print(f"{name}: training with {overrides}", flush=True)
            results[name] = run_one(name, overrides, path)
            if _reusable(results[name]):
                finished.append((os.path.abspath(path), results[name]))
    if FLAGS.baseline_dir:  # the linear runs of another folder, for comparison
        for name in runs(FLAGS.experiment):
            path = os.path.join(FLAGS.baseline_dir, FLAGS.experiment, f"{name}.json")
            if name.startswith("linear") and name not in results:
                if os.path.isfile(path):
                    with open(path) as f:
                        origin = os.path.relpath(os.path.abspath(path), common.ROOT)
                        results[name] = {**json.load(f), "from": origin}
        order = list(runs(FLAGS.experiment))
        results = dict(sorted(results.items(), key=lambda kv: order.index(kv[0])))
    if results:  # the table and the figure: every run done so far, selected or not
        summarise(results, out_dir)


if __name__ == "__main__":
    app.run(main)
