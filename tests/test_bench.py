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
        "--memory_images=50",
        "--calls=3",
        "--batches=1",
        f"--out_dir={tmp_path}",
    )
    result = json.load(open(tmp_path / "serving_tiny.json"))
    for name in ("predict_images", "predict_isolated", "serving_default"):
        assert result["signatures"][name]["p50_ms"] > 0
    assert "served_overhead_batch1_p50" in result
    assert result["served_graph"] == "nearest" and result["memory_images"] == 50
    assert result["label_weight"] == 0.25  # what the export answers with


def _experiment_flags(tmp_path):
    return [
        "--config=tiny",
        f"--data_dir={tmp_path / 'data'}",
        f"--out_dir={tmp_path / 'results'}",
        f"--runs_dir={tmp_path / 'runs'}",
        "--extra=epochs=1,adj_warmup_epochs=0",
    ]


def test_experiment_scripts_on_tiny(tmp_path):
    common = _experiment_flags(tmp_path)
    _bench("experiments.py", "--experiment=clean", *common)
    table = json.load(open(tmp_path / "results" / "clean" / "clean.json"))["table"]
    assert {row["run"] for row in table} == {"linear", "ean"}
    ean = json.load(open(tmp_path / "results" / "clean" / "ean.json"))
    assert set(ean["per_class_recall"]) == {"nearest", "batch", "isolated"}
    assert os.path.isfile(tmp_path / "results" / "clean" / "clean.png")
    # A second call finds every run done and trains nothing. What a model answers
    # with is not what is trained: a JSON evaluated with another label weight, k
    # and served graph is still the run, and the table names what its nearest
    # graph ran at.
    path = tmp_path / "results" / "clean" / "ean.json"
    old = json.load(open(path))
    old["config"]["model"].update(
        nearest_label_weight=0.0, nearest_k=2, inference_graph="batch"
    )
    # nor is a JSON without a field only G's pre-training reads
    del old["config"]["generator"]["lambda_views"]
    path.write_text(json.dumps(old))
    again = _bench("experiments.py", "--experiment=clean", *common)
    assert again.stdout.count("done before") == 2
    table = json.load(open(tmp_path / "results" / "clean" / "clean.json"))["table"]
    row = {r["run"]: r for r in table}["ean"]
    assert (row["nearest_label_weight"], row["nearest_k"]) == (0.0, 2)
    assert row["inference_graph"] == "batch"
    assert "nearest_k" not in {r["run"]: r for r in table}["linear"]
    _bench(
        "experiments.py", "--experiment=noise", "--only=ean_noise0,ean_noise20", *common
    )
    clean = json.load(open(tmp_path / "results" / "clean" / "ean.json"))
    zero = json.load(open(tmp_path / "results" / "noise" / "ean_noise0.json"))
    assert zero["same_run_as"].endswith("ean.json")  # not trained twice
    assert zero["accuracy"] == clean["accuracy"]
    run = json.load(open(tmp_path / "results" / "noise" / "ean_noise20.json"))
    flipped = run["flipped_labels"]
    assert flipped["flipped"] == round(0.2 * 96)
    # The table holds every run done so far: linear 0% is the clean linear run;
    # the paper's objective is another run, not trained unless asked for. A row
    # says where the flipped training images ended.
    table = json.load(open(tmp_path / "results" / "noise" / "noise.json"))["table"]
    assert [r["run"] for r in table] == ["linear_noise0", "ean_noise0", "ean_noise20"]
    noisy = table[2]
    assert (noisy["noise_rate"], noisy["seed"]) == (0.2, 0)
    assert noisy["acc_served"] == noisy["acc_nearest"]
    share = lambda key: round(flipped[key] / flipped["flipped"], 4)
    assert noisy["flipped_memorised"] == share("predicted_noisy")
    assert noisy["flipped_predicted_clean"] == share("predicted_clean")
    assert table[0]["flipped_memorised"] is None  # clean labels
    assert table[0]["acc_served"] == table[0]["acc_isolated"]  # the network alone
    assert os.path.isfile(tmp_path / "results" / "noise" / "noise.png")
    wrong = subprocess.run(
        [
            sys.executable,
            "bench/experiments.py",
            "--experiment=memorisation",
            "--only=ean40",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert wrong.returncode != 0 and "--only: no run ean40" in wrong.stderr
    assert (
        "its runs: linear_noise0, ean_noise0, ean_paper_noise0, "
        "linear_gce_noise0, linear_noise20" in wrong.stderr
    )
    _bench(
        "experiments.py",
        "--experiment=ablations",
        "--only=ean_default,two_gcn_layers,graph_local",
        *common,
    )
    ablations = tmp_path / "results" / "ablations"
    local = json.load(open(ablations / "graph_local.json"))
    assert local["replicas"] == 2
    assert local["graph_nodes"] == 8  # half the tiny preset's batch of 16
    two = json.load(open(ablations / "two_gcn_layers.json"))
    assert two["config"]["model"]["gcn_units"] == [256]
    default = json.load(open(ablations / "ean_default.json"))
    assert default["same_run_as"].endswith(os.path.join("clean", "ean.json"))
    assert default["accuracy"] == clean["accuracy"]
    # adj_mean is the default configuration, so it is the clean run too.
    assert "clean" in json.load(open(ablations / "adj_mean.json"))["same_run_as"]
    assert not (ablations / "adj_sum.json").exists()
    assert not (ablations / "paper.json").exists()
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
    assert [r["run"] for r in table] == ["linear_noise0", "ean_noise0"]
    linear = json.load(open(tmp_path / "one" / "noise" / "linear_noise0.json"))
    assert linear["same_run_as"] == str(tmp_path / "results" / "clean" / "linear.json")
    # A JSON trained otherwise than its run means now, or written by another
    # version of the configuration (a field that is not one now), is not passed
    # off as the run: the call names the file and the fields.
    two["config"]["model"]["objective"] = "paper"
    two["config"]["model"]["retired_field"] = 1.0
    del two["config"]["train"]["epochs"]
    (ablations / "two_gcn_layers.json").write_text(json.dumps(two))
    stale = subprocess.run(
        [
            sys.executable,
            "bench/experiments.py",
            "--experiment=ablations",
            "--only=two_gcn_layers",
            *common,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert stale.returncode != 0
    assert "two_gcn_layers.json was trained otherwise" in stale.stderr
    assert "model.objective: 'paper', now 'split'" in stale.stderr
    assert "model.retired_field: not a field now" in stale.stderr
    assert "train.epochs: missing" in stale.stderr
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


def test_generator_experiment_on_tiny(tmp_path):
    _bench(
        "experiments.py",
        "--experiment=generator",
        "--only=ean_generator,linear_generator,linear_views",
        *_experiment_flags(tmp_path),
        "--extra=epochs=1,adj_warmup_epochs=0,generator_epochs=1,steps_per_epoch=2",
    )
    out = tmp_path / "results" / "generator"
    run, linear, views_only = (
        json.load(open(out / f"{name}.json"))
        for name in ("ean_generator", "linear_generator", "linear_views")
    )
    checkpoint = run["config"]["generator"]["generator_checkpoint"]
    assert checkpoint.endswith("backbone.weights.h5")
    # One pre-training serves both heads; another pre-training is another one.
    assert linear["config"]["generator"]["generator_checkpoint"] == checkpoint
    assert linear["generator"]["seconds"] == run["generator"]["seconds"]
    assert views_only["config"]["generator"]["generator_checkpoint"] != checkpoint
    assert views_only["config"]["generator"]["lambda_adv"] == 0.0
    for name in ("ean_generator", "linear_views"):
        assert (out / f"{name}_feature_maps.png").is_file()
    assert set(run["robustness"]) == {"clean", "occlusion", "illumination", "pose"}
    table = {r["run"]: r for r in json.load(open(out / "generator.json"))["table"]}
    collapse = run["generator"]["collapse"]
    key = "conv3_cos_different_images"
    assert table["ean_generator"]["conv3_cos_after"] == round(collapse["after"][key], 4)
    assert table["linear_views"]["collapsed"] in (True, False)


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


def test_nearest_bench(tmp_path, tiny_run):
    run = tiny_run
    _bench(
        "nearest.py",
        f"--run_dir={run}",
        "--ks=2,4",
        "--label_weights=0,0.25",
        f"--out_dir={tmp_path / 'results'}",
    )
    result = json.load(open(tmp_path / "results" / "nearest.json"))
    rows = result["graphs"]
    assert set(rows) == {"isolated"} | {
        f"nearest_k{k}{w}" for k in (2, 4) for w in ("", "_labels0.25")
    }
    # The run's own k and label weight repeat its own evaluation.
    config = json.load(open(run / "config.json"))["model"]
    assert (config["nearest_k"], config["nearest_label_weight"]) == (4, 0.25)
    own = json.load(open(run / "metrics.json"))["graphs"]
    for graph, row in (("isolated", "isolated"), ("nearest", "nearest_k4_labels0.25")):
        assert rows[row]["accuracy"] == own[graph]["accuracy"], graph
    images = own["isolated"]["num_samples"]
    assert sum(rows["nearest_k2"]["edges"]) == images
    assert len(rows["nearest_k2"]["edges"]) == 3
    assert result["memory_images"] > 0
    # A run written by another version of the configuration stops in one line.
    old = tmp_path / "old_run"
    old.mkdir()
    saved = json.load(open(run / "config.json"))
    saved["model"]["retired_field"] = 0
    (old / "config.json").write_text(json.dumps(saved))
    refused = subprocess.run(
        [sys.executable, "bench/nearest.py", f"--run_dir={old}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert refused.returncode != 0
    assert f"--run_dir={old}:" in refused.stderr and "retired_field" in refused.stderr


def test_served_figure_pairs_each_ean_run_with_its_linear_twin(tmp_path):
    def run(folder, name, head, noise, accuracy, graph="nearest", **extra):
        path = tmp_path / folder / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        model = {"head": head, "inference_graph": graph}
        config = {"model": model, "data": {"noise_rate": noise, "dataset": "ferplus"}}
        result = {"run": name, "preset": "tiny", "config": config, **extra}
        path.write_text(json.dumps({**result, "accuracy": accuracy}))

    graphs = {"nearest": 0.83, "batch": 0.79, "isolated": 0.81}
    run("seed0/clean", "linear", "linear", 0.0, {"isolated": 0.81})
    run("seed0/clean", "ean", "ean", 0.0, graphs)
    # A run that served another graph: its served bar is that graph's.
    run("seed0/clean", "ean_batch", "ean", 0.0, graphs, graph="batch")
    # No twin of seed 1: not drawn.
    run("seed1/clean", "ean", "ean", 0.0, graphs)
    run("seed0/noise", "linear_noise20", "linear", 0.2, {"isolated": 0.76})
    run("seed0/noise", "ean_noise20", "ean", 0.2, {**graphs, "nearest": 0.77})
    # A copy of a run is drawn once, as its original.
    run("seed0/noise", "ean_noise0", "ean", 0.0, graphs, same_run_as="x.json")
    (tmp_path / "seed0" / "clean" / "clean.json").write_text('{"table": []}')
    out = tmp_path / "fig.png"
    result = _bench("served_figure.py", f"--results_dir={tmp_path}", f"--out={out}")
    assert "3 pair(s)" in result.stdout
    lines = result.stdout.splitlines()[1:]
    assert lines == [
        "  clean labels, seed0, ean: linear 0.8100, served 0.8300, batch 0.7900, "
        "isolated 0.8100",
        "  clean labels, seed0, ean_batch: linear 0.8100, served 0.7900, "
        "batch 0.7900, isolated 0.8100",
        "  20% label noise, seed0, ean_noise20: linear 0.7600, served 0.7700, "
        "batch 0.7900, isolated 0.8100",
    ]
    assert out.stat().st_size > 10_000


def test_copies_of_one_run_are_one_curve(tmp_path):
    """The ablations figure draws a run and its copies (`same_run_as`, a path
    relative to the checkout or absolute) as one curve, and other runs apart."""
    here = tmp_path / "ablations"
    results = {
        "ean_default": {},
        "single_threshold": {"same_run_as": str(here / "ean_default.json")},
        "adj_mean": {"same_run_as": os.path.relpath(here / "ean_default.json", ROOT)},
        "paper": {},
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
        ["ean_default", "single_threshold", "adj_mean"],
        ["paper"],
        ["one_gcn_layer"],
    ]


def test_warmup_half_is_half_of_the_runs_epochs_and_fewer_than_all():
    bench = os.path.join(ROOT, "bench")
    code = (
        f"import sys; sys.path.insert(0, {bench!r}); import experiments as e; "
        "run = e.runs('ablations')['warmup_half']\n"
        "for epochs in (1, 2, 7):\n"
        "    e.FLAGS(['x', '--config=tiny', f'--extra=epochs={epochs}'])\n"
        "    print(e._plan(run)[0]['adj_warmup_epochs'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # 1 epoch: none of warm-up (fewer than all); else half, at least one.
    assert out.stdout.split()[-3:] == ["0", "1", "3"]


def test_neighbour_shares_on_constructed_similarities():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import numpy as np
    from noise_graph import neighbour_shares

    # images 0-3: clean class 0, 4-7: class 1; image 0 flipped to 1. The two
    # classes are two clusters: each image's nearest others are its class.
    clean = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    given = clean.copy()
    given[0] = 1
    wrong = np.where(clean != given, given, -1)
    cos = np.where(clean[:, None] == clean[None, :], 0.9, 0.1)
    shares = neighbour_shares(cos, np.array([0]), 3, clean, given, wrong)
    assert shares["images"] == 1 and shares["k"] == 3
    assert shares["given_is_clean_class"] == 1.0  # images 1-3 say 0
    assert shares["given_is_wrong_label"] == 0.0
    # image 4's neighbours: 5, 6, 7 (all class 1), never image 0 (cos 0.1)
    shares = neighbour_shares(cos, np.array([4]), 3, clean, given, wrong)
    assert shares["clean_is_clean_class"] == 1.0
    assert "given_is_wrong_label" not in shares  # image 4 kept its label
    # image 1 has the flipped image 0 among its neighbours (given label 1)
    shares = neighbour_shares(cos, np.array([1]), 3, clean, given, wrong)
    assert shares["given_is_clean_class"] == pytest.approx(2 / 3, abs=1e-4)


def test_noise_graph_bench_on_a_noisy_tiny_run(tmp_path, tiny_run):
    from ean_tf.config import make_config
    from ean_tf.train import train

    run = tmp_path / "run"
    config = make_config(
        "tiny",
        data_dir=str(tmp_path / "data"),
        run_dir=str(run),
        noise_rate=0.4,
        epochs=2,
        adj_warmup_epochs=1,
        steps_per_epoch=3,
    )
    train(config, verbose=0)
    _bench(
        "noise_graph.py",
        f"--run_dir={run}",
        f"--out_dir={tmp_path / 'results'}",
    )
    result = json.load(open(tmp_path / "results" / "noise_graph.json"))
    assert set(result["models"]) == {"best", "model"}
    for report in result["models"].values():
        flipped = report["flipped_neighbours"]
        assert flipped["images"] > 0 and flipped["k"] == 4
        for part in ("flipped_neighbours", "kept_neighbours", "training_edges"):
            for key, value in report[part].items():
                if key not in ("images", "k", "edges_per_node"):
                    assert 0.0 <= value <= 1.0, (part, key)
        served = report["served_neighbours"]
        assert 0.0 <= served["isolated_accuracy"] <= 1.0
        assert 0.0 <= served["edges_per_image"] <= 4
    refused = subprocess.run(
        [sys.executable, "bench/noise_graph.py", f"--run_dir={tiny_run}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert refused.returncode != 0 and "not a run with label noise" in refused.stderr
