"""tf.distribute and resume: each case runs in fresh processes, since logical
devices and TF_CONFIG must be set before TensorFlow starts."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(script, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def _log(run_dir):
    with open(os.path.join(run_dir, "log.csv")) as f:
        return list(csv.DictReader(f))


def test_mirrored_on_two_cpus_local_and_global_graph(tmp_path):
    script = f"""
        import sys, json, logging
        sys.path.insert(0, {ROOT!r})
        logging.basicConfig(level=logging.INFO)
        import ean_tf
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from ean_tf.config import make_config
        from ean_tf.train import train
        for cross in (False, True):
            config = make_config(
                "tiny", data_dir={str(tmp_path / "data")!r},
                run_dir={str(tmp_path)!r} + f"/run_{{cross}}", strategy="mirrored",
                epochs=1, steps_per_epoch=3, adj_warmup_epochs=0,
                cross_replica_graph=cross)
            summary = train(config, verbose=0)
            print("SUMMARY", json.dumps(summary["accuracy"]))
    """
    result = _python(script)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 replicas" in result.stderr
    local, global_ = _log(tmp_path / "run_False"), _log(tmp_path / "run_True")
    batch = 16  # the tiny preset's global batch
    assert float(local[0]["graph_nodes"]) == batch / 2
    assert float(global_[0]["graph_nodes"]) == batch
    for row in local + global_:
        assert all(
            abs(float(row[k])) < 1e6
            for k in ("loss", "ce_isolated", "ce_graph", "adj_loss")
        )
    assert "local batch" in result.stderr and "global batch" in result.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_on_localhost_trains_a_step(tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    script = f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        import ean_tf
        from ean_tf.config import make_config
        from ean_tf.train import train
        config = make_config(
            "tiny", data_dir={str(tmp_path / "data")!r},
            run_dir={str(tmp_path / "run")!r}, strategy="multi_worker",
            epochs=1, steps_per_epoch=2, adj_warmup_epochs=0)
        summary = train(config, verbose=0)
        print("DONE", summary["chief"], summary["run_dir"])
    """
    # Generate the built-in data once so the two workers do not race to write it.
    from ean_tf import data
    from ean_tf.config import make_config

    data.load(make_config("tiny", data_dir=str(tmp_path / "data")).data)
    procs = []
    for index in range(2):
        tf_config = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(script)],
                cwd=ROOT,
                env={**os.environ, "TF_CONFIG": tf_config},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-4000:]
    assert "DONE True" in outputs[0][0] and "DONE False" in outputs[1][0]
    rows = _log(tmp_path / "run")
    assert len(rows) == 1 and abs(float(rows[0]["loss"])) < 1e6
    assert os.path.isfile(tmp_path / "run" / "model.keras")
    assert os.path.isdir(tmp_path / "run" / "worker_worker_1")


def _train_cmd(tmp_path, epochs):
    return [
        sys.executable,
        "run.py",
        "--config=tiny",
        f"--epochs={epochs}",
        "--default_train_size=192",
        f"--data_dir={tmp_path / 'data'}",
        f"--run_dir={tmp_path / 'run'}",
    ]


def test_kill_9_mid_epoch_then_rerun_resumes_from_the_step_checkpoint(tmp_path):
    """A run killed with SIGKILL inside its first epoch, rerun with the same
    command, resumes from its last step checkpoint and ends as if never killed
    (resuming after finished epochs: test_train.py)."""
    epochs, steps = 1, 12  # 192 images / batch 16
    state = tmp_path / "run" / "state.json"
    cmd = _train_cmd(tmp_path, epochs) + [
        "--checkpoint_every_steps=2",
        "--deterministic",
        "--adj_warmup_epochs=0",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if state.exists():
                s = json.loads(state.read_text())
                if 0 < s["steps_done"] < steps:
                    break  # a checkpoint taken inside the first epoch
            if proc.poll() is not None:
                pytest.fail("training ended before it could be killed")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    killed = json.loads(state.read_text())
    assert 0 < killed["steps_done"] < steps
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        f"Resuming {tmp_path / 'run'} inside epoch 1 (step {killed['steps_done']})"
        in result.stderr
    )
    final = json.loads(state.read_text())
    assert final["epochs_done"] == epochs
    assert final["steps_done"] == epochs * steps  # no step lost or repeated
    epochs_logged = [int(r["epoch"]) for r in _log(tmp_path / "run")]
    assert epochs_logged == list(range(1, epochs + 1))
    # The same command without the kill: the same metrics, epoch by epoch (the
    # resumed epoch's averaged over all its steps), and the same final weights.
    other = tmp_path / "uninterrupted"
    cmd = [c.replace(str(tmp_path / "run"), str(other)) for c in cmd]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for resumed, straight in zip(_log(tmp_path / "run"), _log(other), strict=True):
        for key in ("loss", "ce_isolated", "accuracy", "val_accuracy"):
            assert float(resumed[key]) == pytest.approx(float(straight[key]), abs=1e-5)
    from ean_tf.runs import load_model

    a = load_model(str(tmp_path / "run" / "model.keras"))
    b = load_model(str(other / "model.keras"))
    for wa, wb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(wa.numpy(), wb.numpy(), atol=1e-5)


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    from ean_tf.config import make_config
    from ean_tf.runs import TrainingError
    from ean_tf.train import train

    config = make_config(
        "tiny",
        data_dir=str(tmp_path / "data"),
        run_dir=str(tmp_path / "run"),
        learning_rate=1e30,
        epochs=3,
    )
    with pytest.raises(TrainingError, match="NaN") as info:
        train(config, verbose=0)
    assert "--learning_rate" in str(info.value)


def test_mixed_precision_trains_with_finite_losses(tmp_path):
    # In a subprocess: the dtype policy is global to the process.
    result = subprocess.run(
        _train_cmd(tmp_path, 1)
        + ["--mixed_precision", "--adj_warmup_epochs=0", "--steps_per_epoch=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = _log(tmp_path / "run")[0]
    assert all(
        abs(float(row[k])) < 1e6
        for k in ("loss", "ce_isolated", "ce_graph", "adj_loss")
    )
