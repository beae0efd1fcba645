"""The benchmark scripts run end to end on tiny settings, so they do not rot."""

import json
import os
import subprocess
import sys

import pytest
from conftest import write_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(script, *args):
    result = subprocess.run(
        [sys.executable, os.path.join("bench", script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_speed_bench(tmp_path):
    _bench(
        "speed.py",
        "--sizes=32",
        "--batches=8",
        "--steps=1",
        "--repeats=1",
        "--width=8",
        f"--out_dir={tmp_path}",
    )
    result = json.load(open(tmp_path / "speed.json"))
    row = result["rows"][0]
    assert row["ean_images_per_s"] > 0 and row["linear_images_per_s"] > 0
    assert 0 < row["graph_head_share"] < 1
    assert result["command"].startswith("bench/speed.py") and result["date"]
    head = subprocess.run(
        ["git", "rev-parse", "--short=7", "HEAD"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    assert result["commit"].split("-")[0] == head  # "-dirty" marks a changed tree


def test_pipeline_bench(tmp_path):
    folder = tmp_path / "ferplus" / "FER2013Train"
    lines = []
    for i in range(8):
        write_png(str(folder / f"fer{i:07d}.png"), 48, seed=i, grey=True)
        lines.append(f'fer{i:07d}.png,"(0, 0, 48, 48)",9,1,0,0,0,0,0,0,0,0')
    (folder / "label.csv").write_text("\n".join(lines) + "\n")
    valid = tmp_path / "ferplus" / "FER2013Valid"
    valid.mkdir()
    write_png(str(valid / "fer0000100.png"), 48, grey=True)
    (valid / "label.csv").write_text(
        'fer0000100.png,"(0, 0, 48, 48)",9,0,0,0,0,0,0,0,0,0\n'
    )
    _bench(
        "pipeline.py",
        f"--data_dir={tmp_path / 'ferplus'}",
        "--sizes=32",
        "--batches=2",
        "--mtcnn_images=1",
        f"--out_dir={tmp_path}",
    )
    result = json.load(open(tmp_path / "pipeline.json"))
    assert result["rows"][0]["pipeline_images_per_s"] > 0
    assert result["mtcnn"]["images"] == 1


def test_serving_bench(tmp_path):
    _bench(
        "serving.py",
        "--config=tiny",
        "--nearest_label_weight=0.25",
        "--calls=3",
        "--batches=1",
        f"--out_dir={tmp_path}",
    )
    result = json.load(open(tmp_path / "serving_tiny.json"))
    for name in ("predict_images", "predict_isolated", "serving_default"):
        assert result["signatures"][name]["p50_ms"] > 0
    assert "served_overhead_batch1_p50" in result
    assert result["served_graph"] == "nearest" and result["memory_images"] == 25045
    assert result["label_weight"] == 0.25  # what the export answers with


def test_serving_bench_times_another_graph(tmp_path):
    _bench(
        "serving.py",
        "--config=tiny",
        "--inference_graph=context",
        "--memory_images=50",
        "--calls=3",
        "--batches=1",
        f"--out_dir={tmp_path}",
    )
    result = json.load(open(tmp_path / "serving_tiny.json"))
    assert result["served_graph"] == "context" and result["memory_images"] == 50
    assert result["signatures"]["predict_images"]["p50_ms"] > 0


def test_experiment_scripts_on_tiny(tmp_path):
    common = [
        "--config=tiny",
        f"--data_dir={tmp_path / 'data'}",
        f"--out_dir={tmp_path / 'results'}",
        f"--runs_dir={tmp_path / 'runs'}",
        "--extra=epochs=1,adj_warmup_epochs=0",
    ]
    _bench("experiments.py", "--experiment=clean", *common)
    table = json.load(open(tmp_path / "results" / "clean" / "clean.json"))["table"]
    assert {row["run"] for row in table} == {"linear", "ean"}
    ean = json.load(open(tmp_path / "results" / "clean" / "ean.json"))
    assert set(ean["per_class_recall"]) == {
        "nearest",
        "context",
        "bank",
        "batch",
        "isolated",
    }
    assert os.path.isfile(tmp_path / "results" / "clean" / "clean.png")
    # A second call finds every run done and trains nothing.
    again = _bench("experiments.py", "--experiment=clean", *common)
    assert again.stdout.count("done before") == 2
    # What a model answers with is not what is trained: a JSON from before the
    # neighbours' labels (answered with weight 0), with another k and served
    # graph, is still the run, and the table names what its nearest graph ran at.
    path = tmp_path / "results" / "clean" / "ean.json"
    old = json.load(open(path))
    del old["config"]["model"]["nearest_label_weight"]
    old["config"]["model"].update(nearest_k=2, inference_graph="context")
    path.write_text(json.dumps(old))
    again = _bench("experiments.py", "--experiment=clean", "--only=ean", *common)
    assert "ean: done before" in again.stdout
    table = json.load(open(tmp_path / "results" / "clean" / "clean.json"))["table"]
    row = {r["run"]: r for r in table}["ean"]
    assert (row["nearest_label_weight"], row["nearest_k"]) == (0.0, 2)
    assert row["inference_graph"] == "context"
    assert "nearest_k" not in {r["run"]: r for r in table}["linear"]
    _bench(
        "experiments.py", "--experiment=noise", "--only=ean_noise0,ean_noise20", *common
    )
    clean = json.load(open(tmp_path / "results" / "clean" / "ean.json"))
    zero = json.load(open(tmp_path / "results" / "noise" / "ean_noise0.json"))
    assert zero["same_run_as"].endswith("ean.json")  # not trained twice
    assert zero["accuracy"] == clean["accuracy"]
    run = json.load(open(tmp_path / "results" / "noise" / "ean_noise20.json"))
    assert run["flipped_labels"]["flipped"] == round(0.2 * 96)
    # The table holds every run done so far: linear 0% is the clean linear run,
    # and the default spelled out (edges_only) is each EAN run again.
    table = json.load(open(tmp_path / "results" / "noise" / "noise.json"))["table"]
    assert [r["run"] for r in table] == [
        "linear_noise0",
        "ean_noise0",
        "ean_edges_only_noise0",
        "ean_noise20",
        "ean_edges_only_noise20",
    ]
    assert table[3]["flipped_predicted_clean"] is not None
    assert os.path.isfile(tmp_path / "results" / "noise" / "noise.png")
    wrong = subprocess.run(
        [sys.executable, "bench/experiments.py", "--experiment=noise", "--only=ean20"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert wrong.returncode != 0 and "--only: no run ean20" in wrong.stderr
    _bench(
        "experiments.py",
        "--experiment=ablations",
        "--only=ean_default,one_gcn_layer,two_gcn_layers,warmup_half,graph_local",
        *common,
    )
    ablations = tmp_path / "results" / "ablations"
    local = json.load(open(ablations / "graph_local.json"))
    assert local["replicas"] == 2
    assert local["graph_nodes"] == 8  # half the tiny preset's batch of 16
    one = json.load(open(ablations / "one_gcn_layer.json"))
    assert one["config"]["model"]["gcn_units"] == []
    assert json.load(open(ablations / "warmup_half.json"))["overrides"] == {
        "epochs": 1,
        "adj_warmup_epochs": 0,  # half of the epochs, fewer than all of them
    }
    default = json.load(open(ablations / "ean_default.json"))
    assert default["same_run_as"].endswith(os.path.join("clean", "ean.json"))
    assert default["accuracy"] == clean["accuracy"]
    # adj_mean is the default configuration, so it is the clean run too.
    assert "clean" in json.load(open(ablations / "adj_mean.json"))["same_run_as"]
    assert not (ablations / "adj_sum.json").exists()
    # A JSON trained otherwise than its run means now (say, before a default
    # changed) is not passed off as the run: the call names the file and field.
    one["config"]["model"]["isolated_ce_weight"] = 0.0
    del one["config"]["model"]["graph_backbone_grad"]  # written before it existed
    (ablations / "one_gcn_layer.json").write_text(json.dumps(one))
    stale = subprocess.run(
        [
            sys.executable,
            "bench/experiments.py",
            "--experiment=ablations",
            "--only=one_gcn_layer",
            *common,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert stale.returncode != 0
    assert "one_gcn_layer.json was trained otherwise" in stale.stderr
    assert "model.isolated_ce_weight: 0.0, now 1.0" in stale.stderr
    assert "model.graph_backbone_grad: True, now False" in stale.stderr
    # `--extra` values take their field's type (a list field's items are split on
    # ':'), and a run with the same overrides elsewhere is found, not trained.
    extra = common[:-1] + [
        f"--out_dir={tmp_path / 'one'}",
        f"--reuse_from={tmp_path / 'results'}",
        "--extra=epochs=1,adj_warmup_epochs=0,gcn_units=256,gcn_dropout=0.3",
    ]
    again = _bench(
        "experiments.py",
        "--experiment=noise",
        "--only=ean_noise0",
        f"--baseline_dir={tmp_path / 'results'}",
        *extra,
    )
    assert "training with" not in again.stdout
    zero = json.load(open(tmp_path / "one" / "noise" / "ean_noise0.json"))
    assert zero["same_run_as"] == str(ablations / "two_gcn_layers.json")
    # The graph's fields do not tell linear runs apart: the linear run with these
    # `--extra` fields is the clean linear run, found, not trained.
    table = json.load(open(tmp_path / "one" / "noise" / "noise.json"))["table"]
    assert [r["run"] for r in table] == [
        "linear_noise0",
        "ean_noise0",
        "ean_edges_only_noise0",
    ]
    linear = json.load(open(tmp_path / "one" / "noise" / "linear_noise0.json"))
    assert linear["same_run_as"] == str(tmp_path / "results" / "clean" / "linear.json")
    bad = subprocess.run(
        [
            sys.executable,
            "bench/experiments.py",
            f"--out_dir={tmp_path / 'bad'}",
            "--extra=gcn_units=a:b",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode != 0 and "--extra: 'gcn_units=a:b'" in bad.stderr
    _bench(
        "experiments.py",
        "--experiment=generator",
        "--only=ean_generator,linear_generator",
        *common,
        "--extra=epochs=1,adj_warmup_epochs=0,generator_epochs=1",
    )
    run = json.load(open(tmp_path / "results" / "generator" / "ean_generator.json"))
    linear = json.load(
        open(tmp_path / "results" / "generator" / "linear_generator.json")
    )
    checkpoint = run["config"]["generator"]["generator_checkpoint"]
    assert checkpoint.endswith("backbone.weights.h5")
    # One pre-training serves both heads.
    assert linear["config"]["generator"]["generator_checkpoint"] == checkpoint
    assert linear["generator"]["seconds"] == run["generator"]["seconds"]
    assert (tmp_path / "results" / "generator" / "feature_maps.png").is_file()
    assert set(run["robustness"]) == {"clean", "occlusion", "illumination", "pose"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished `tiny` run, shared by the benches that re-evaluate a run."""
    from ean_tf.config import make_config
    from ean_tf.train import train

    root = tmp_path_factory.mktemp("tiny_run")
    run = root / "run"
    config = make_config("tiny", data_dir=str(root / "data"), run_dir=str(run))
    train(config, verbose=0)
    return run


def test_context_sets_bench(tmp_path, tiny_run):
    run = tiny_run
    _bench(
        "context_sets.py",
        f"--run_dir={run}",
        "--sets=1,2",
        f"--out_dir={tmp_path / 'results'}",
    )
    result = json.load(open(tmp_path / "results" / "context_sets.json"))
    assert set(result["sets"]) == {"1", "2"}
    own = json.load(open(run / "metrics.json"))["graphs"]["context"]
    # One context drawn with the run's seed is the run's own context.
    assert result["sets"]["1"]["accuracy"] == own["accuracy"]
    assert (run / "context_sets_2" / "confusion_context.png").is_file()


def test_self_weight_bench(tmp_path, tiny_run):
    run = tiny_run
    _bench(
        "self_weight.py",
        f"--run_dir={run}",
        "--alphas=0,0.9",
        "--graphs=context,batch",
        f"--out_dir={tmp_path / 'results'}",
    )
    result = json.load(open(tmp_path / "results" / "self_weight.json"))
    assert result["trained_self_weight"] == 0.0
    rows = result["self_weights"]
    assert set(rows) == {"0", "0.9"} and set(rows["0"]) == {"context", "batch"}
    # alpha = the run's own (0) with its seed is the run's own served result.
    own = json.load(open(run / "metrics.json"))["graphs"]
    assert rows["0"]["context"]["accuracy"] == own["context"]["accuracy"]
    assert (run / "self_weight_0.9" / "confusion_context.png").is_file()


def test_nearest_bench(tmp_path, tiny_run):
    run = tiny_run
    _bench(
        "nearest.py",
        f"--run_dir={run}",
        "--ks=2,4",
        "--label_weights=0,0.5",
        f"--out_dir={tmp_path / 'results'}",
    )
    result = json.load(open(tmp_path / "results" / "nearest.json"))
    rows = result["graphs"]
    assert set(rows) == {"context", "isolated"} | {
        f"nearest_k{k}{w}" for k in (2, 4) for w in ("", "_labels0.5")
    }
    # Rebuilt and refilled, the run's own graphs (k = 4, its default) repeat.
    own = json.load(open(run / "metrics.json"))["graphs"]
    for graph, row in (("context", "context"), ("nearest", "nearest_k4")):
        assert rows[row]["accuracy"] == own[graph]["accuracy"], graph
    images = own["isolated"]["num_samples"]
    assert sum(rows["nearest_k2"]["edges"]) == images
    assert len(rows["nearest_k2"]["edges"]) == 3
    assert result["memory_images"] > 0


def test_label_vote_bench(tmp_path, tiny_run):
    run = tiny_run
    _bench(
        "label_vote.py",
        f"--run_dir={run}",
        "--ks=4",
        "--label_ks=4,16",
        "--label_weights=0.25,0.5",
        f"--out_dir={tmp_path / 'results'}",
    )
    rows = json.load(open(tmp_path / "results" / "label_vote.json"))["accuracy"]
    assert set(rows) == {"k4"} | {
        f"k4_labels{k}_w{w}" for k in (4, 16) for w in ("0.25", "0.5")
    }
    # The graph's own k and the run's label weight are the served nearest graph.
    config = json.load(open(run / "config.json"))["model"]
    assert (config["nearest_k"], config["nearest_label_weight"]) == (4, 0.25)
    own = json.load(open(run / "metrics.json"))["graphs"]["nearest"]["accuracy"]
    assert rows["k4_labels4_w0.25"] == pytest.approx(own, abs=1e-9)


def test_served_figure_pairs_each_ean_run_with_its_linear_twin(tmp_path):
    def run(folder, name, head, noise, accuracy, overrides=None, beta=1.0, **model):
        path = tmp_path / folder / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "run": name,
                    "preset": "tiny",
                    "overrides": {"head": head, **(overrides or {})},
                    "config": {
                        "model": {"head": head, "isolated_ce_weight": beta, **model},
                        "data": {"noise_rate": noise},
                    },
                    "accuracy": accuracy,
                }
            )
        )

    graphs = {"context": 0.8, "bank": 0.7, "batch": 0.79, "isolated": 0.78}
    run("seed0/clean", "linear", "linear", 0.0, {"isolated": 0.81})
    run("seed0/clean", "ean", "ean", 0.0, graphs, {"isolated_ce_weight": 0.0}, 0.0)
    run("seed1/clean", "linear", "linear", 0.0, {"isolated": 0.82})
    nearest = {**graphs, "nearest": 0.83}  # a run of after the nearest graph
    today = dict(graph_backbone_grad=False, graph_head_grad=False)
    run("seed1/clean", "ean", "ean", 0.0, nearest, **today)
    copy = json.loads((tmp_path / "seed0" / "clean" / "ean.json").read_text())
    copy["same_run_as"] = "seed0/clean/ean.json"  # a copy of the same run
    (tmp_path / "seed0" / "ablations").mkdir()
    (tmp_path / "seed0" / "ablations" / "paper_loss.json").write_text(json.dumps(copy))
    run("seed1/noise", "ean_noise20", "ean", 0.2, graphs, {"noise_rate": 0.2})
    run("seed0/noise", "linear_noise20", "linear", 0.2, {"isolated": 0.76})
    aux = {"noise_rate": 0.2, "isolated_ce_weight": 1.0, "group_size": 4}
    run(
        "seed0/noise", "ean_noise20", "ean", 0.2, graphs, aux, graph_backbone_grad=False
    )
    (tmp_path / "seed0" / "clean" / "clean.json").write_text('{"rows": []}')
    out = tmp_path / "fig.png"
    result = _bench("served_figure.py", f"--results_dir={tmp_path}", f"--out={out}")
    # seed 1's 20% run has no linear twin at 20%, so it is not drawn (its panel
    # stays empty in the seeds-by-noise grid); a run's label names its loss and
    # the graph's gradients (from its config; a JSON without a field was
    # trained with its first default, True) and its other overrides.
    assert "3 pair(s)" in result.stdout
    clean = "'0% noise, seed 0\\npaper loss\\ngraph_backbone_grad=True\\n"
    clean += "graph_head_grad=True'"
    assert f"{clean}: linear 0.8100" in result.stdout
    noisy = "isolated_ce_weight=1\\ngraph_backbone_grad=False\\n"
    noisy += "graph_head_grad=True\\ngroup_size=4"
    assert f"'20% noise, seed 0\\n{noisy}': linear 0.7600" in result.stdout
    seed1 = "'0% noise, seed 1\\nisolated_ce_weight=1\\ngraph_backbone_grad=False"
    assert f"{seed1}\\ngraph_head_grad=False'" in result.stdout
    assert "context 0.8000, nearest 0.8300, bank 0.7000" in result.stdout
    assert "linear 0.8100, context 0.8000, bank 0.7000" in result.stdout
    assert out.stat().st_size > 10_000


def test_copies_of_one_run_are_one_curve(tmp_path):
    """The ablations figure draws a run and its copies (`same_run_as`, a path
    relative to the checkout or absolute) as one curve, and other runs apart."""
    here = tmp_path / "ablations"
    results = {
        "isolated_ce": {},
        "ean_default": {"same_run_as": str(here / "isolated_ce.json")},
        "adj_mean": {"same_run_as": os.path.relpath(here / "isolated_ce.json", ROOT)},
        "paper_loss": {},
        "one_gcn_layer": {"same_run_as": str(tmp_path / "clean" / "ean.json")},
    }
    # --out_dir relative to the working directory, which is not the checkout.
    bench = os.path.join(ROOT, "bench")
    code = (
        f"import json, sys; sys.path.insert(0, {bench!r}); import experiments; "
        f"print(json.dumps(experiments.same_runs({results!r}, {list(results)!r}, "
        "'ablations')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [
        ["isolated_ce", "ean_default", "adj_mean"],
        ["paper_loss"],
        ["one_gcn_layer"],
    ]


def test_neighbours_bench(tmp_path, tiny_run):
    run = tiny_run
    _bench(
        "neighbours.py",
        f"--run_dir={run}",
        "--ks=1,3",
        "--chunk=7",
        f"--out_dir={tmp_path / 'results'}",
    )
    result = json.load(open(tmp_path / "results" / "neighbours.json"))
    own = json.load(open(run / "metrics.json"))["graphs"]["isolated"]
    assert result["isolated"] == pytest.approx(own["accuracy"])
    assert set(result["neighbours"]) == {"embedding", "pooled"}
    for rows in result["neighbours"].values():
        assert set(rows) == {"1", "3"}
        for row in rows.values():
            assert all(0 <= row[key] <= 1 for key in ("precision", "vote", "graph"))
    # By hand: each point's nearest key is itself; a neighbourhood of the
    # query's own class votes for it.
    code = (
        "import sys; sys.path.insert(0, 'bench'); import numpy as np; "
        "import neighbours as n; x = np.random.default_rng(0).normal(size=(20, 5)); "
        "top = n.nearest(x, x, 3, 6); assert (top[:, 0] == np.arange(20)).all(); "
        "y = np.arange(20) % 2; z = np.eye(2)[y]; "
        "s = n.scores(top[:, :1], y, z, y, -z, 2); "
        "assert s['precision'] == 1 and s['vote'] == 1 and s['graph'] == 0.5, s; "
        "print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_label_filter_bench(tmp_path, tiny_run):
    run = tiny_run
    _bench(
        "label_filter.py",
        f"--run_dir={run}",
        f"--out_dir={tmp_path / 'results'}",
    )
    result = json.load(open(tmp_path / "results" / "label_filter.json"))
    assert result["flipped"] == 0 and result["left_out_of_flipped"] is None
    assert result["left_out"] == result["left_out_of_clean"]
    assert 0 <= result["left_out"] <= 1
    # The graph's filter leaves out only images the prediction alone disputes.
    alone = result["own_prediction_alone"]
    assert alone["left_out"] >= result["left_out"]
    assert set(alone) == set(result) - {
        "run_dir",
        "images",
        "flipped",
        "command",
        "date",
        "machine",
        "commit",
        "own_prediction_alone",
        "by_confidence",
        "confidence",
        "by_share",
        "share",
    }
    # The sweep repeats the run's own filter at its confidence (0), and a higher
    # confidence leaves out no more.
    sweep = result["by_confidence"]
    assert result["confidence"] == 0
    assert sweep["0"] == {k: result[k] for k in alone}
    left = [sweep[c]["left_out"] for c in ("0", "0.5", "0.7", "0.8", "0.9")]
    assert left == sorted(left, reverse=True)
    # A share of 1 is the run's own filter (no bound); a smaller share leaves out
    # no more, and never more than that share of the images.
    bounded = result["by_share"]
    assert result["share"] == 1 and bounded["1"] == sweep["0"]
    left = [bounded[s]["left_out"] for s in ("1", "0.3", "0.2", "0.1")]
    assert left == sorted(left, reverse=True)
    assert all(bounded[s]["left_out"] <= float(s) for s in bounded)
    # The per-class shares add up to the whole (clean data, labels = classes).
    from ean_tf.config import make_config
    from ean_tf.data import load

    config = make_config("tiny", data_dir=str(run.parent / "data"))
    counts = list(load(config.data).train.class_counts().values())
    shares = list(result["left_out_of_clean_per_class"].values())
    total = sum(c * s for c, s in zip(counts, shares, strict=True))
    assert total / sum(counts) == pytest.approx(result["left_out"], abs=1e-3)
