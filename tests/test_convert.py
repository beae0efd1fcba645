"""Backbone weights from PyTorch checkpoints and VGGFace .h5 files."""

import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch  # requirements-dev pins torch==2.13.0 for these tests only
from conftest import run_cli

from ean_tf.models import backbones, face_backbones
from ean_tf.models.input_norm import InputNorm

nn = torch.nn
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Block(nn.Module):
    """torchvision's BasicBlock, same attribute names."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TorchResNet18(nn.Module):
    """torchvision.models.resnet18's structure and state_dict keys (torchvision
    itself does not import beside the CPU torch wheel used here)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = 64, []
        for i, cout in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(_Block(cin, cout, stride), _Block(cout, cout, 1))
            )
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
        return torch.flatten(self.avgpool(x), 1)


def _random_resnet(num_classes=1000, seed=0):
    torch.manual_seed(seed)
    net = TorchResNet18(num_classes)
    with torch.no_grad():  # random statistics, so batch norm is not the identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _keras_resnet18():
    return backbones.build_backbone("resnet18", 64, "imagenet", 64, "symmetric")


def _max_feature_diff(net, keras_backbone, seed=1):
    x = np.random.default_rng(seed).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    symmetric = x / 127.5 - 1.0  # what the "symmetric" InputNorm feeds the network
    with torch.no_grad():
        ref = net.features(torch.from_numpy(symmetric.transpose(0, 3, 1, 2))).numpy()
    ours = keras_backbone(x, training=False)[0].numpy()
    return float(np.abs(ours - ref).max()), float(np.abs(ref).max())


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model_state_dict"])
def test_torch_resnet18_gives_torchvision_features(tmp_path, layout):
    net = _random_resnet(num_classes=8631 if layout == "model_state_dict" else 7)
    state = net.state_dict()
    if layout == "bare":
        obj, path = state, tmp_path / "resnet18_msceleb.pth"
    elif layout == "state_dict":  # SCN: DataParallel keys, extra entries and heads
        state = {**state, "feature.weight": torch.zeros(256, 512)}
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
        path = tmp_path / "ijba_res18_naive.pth.tar"
    else:
        obj, path = {"model_state_dict": state, "step": 10}, tmp_path / "ckpt.pt"
    torch.save(obj, path)
    model = _keras_resnet18()
    backbones.load_backbone_weights(model, str(path))
    diff, scale = _max_feature_diff(net, model)
    assert scale > 0.1  # the features are not trivially zero
    assert diff < 1e-4


def test_torch_mismatch_lists_problems_and_loads_nothing(tmp_path):
    state = _random_resnet().state_dict()
    del state["layer3.1.bn2.running_var"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    model = _keras_resnet18()
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError) as info:
        backbones.load_backbone_weights(model, str(path))
    message = str(info.value)
    assert "missing from the checkpoint: ['layer3.1.bn2.running_var']" in message
    assert "layer5.0.conv1.weight" in message
    assert "broken.pth" in message
    for w, b in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(w.numpy(), b)

    torch.save(_random_resnet().state_dict(), path)
    small = backbones.build_backbone("resnet18", 64, "small_s2", 64, "symmetric")
    with pytest.raises(ValueError, match=r"stem_conv \(conv1\).*--stem=imagenet"):
        backbones.load_backbone_weights(small, str(path))


@pytest.mark.parametrize(
    "obj", [{"epoch": 3, "arch": "resnet18"}, [1, 2, 3]], ids=["no_tensors", "list"]
)
def test_torch_unknown_layout_is_a_clear_error(tmp_path, obj):
    path = tmp_path / "odd.pth"
    torch.save(obj, path)
    with pytest.raises(ValueError, match="unknown checkpoint layout"):
        backbones.load_backbone_weights(_keras_resnet18(), str(path))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable PyTorch"):
        backbones.load_backbone_weights(_keras_resnet18(), str(tmp_path / "junk.pth"))


def test_convert_weights_mode_then_train_start(tmp_path):
    net = _random_resnet()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    out = tmp_path / "r18.weights.h5"
    args = [
        "--mode=convert_weights",
        "--backbone=resnet18",
        "--stem=imagenet",
        "--width=64",
        "--image_size=64",
        f"--backbone_weights={tmp_path / 'r18.pth'}",
        f"--output={out}",
    ]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Converted" in result.stdout
    model = _keras_resnet18()
    backbones.load_backbone_weights(model, str(out))  # the plain Keras path now
    diff, _ = _max_feature_diff(net, model)
    assert diff < 1e-4

    bad = run_cli(*args[:-1], f"--output={tmp_path / 'x.h5'}")
    assert bad.returncode != 0 and "--output" in bad.stderr


def _quiet():
    return dict(capture_output=True, text=True, timeout=300)


def test_project_never_imports_torch():
    code = (
        "import sys, ean_tf, ean_tf.train, ean_tf.models.convert, export.serving;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, **_quiet())
    assert result.returncode == 0, result.stderr[-2000:]


# --- VGGFace .h5 (Keras 2 layout) -----------------------------------------------


def _vggface_layer_names(arch):
    """The VGGFace Keras models' weighted layer names, as keras-vggface builds them."""
    if arch == "vgg16_face":
        blocks = [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)]
        return [f"conv{b}_{i}" for b, n in blocks for i in range(1, n + 1)]
    names = ["conv1/7x7_s2", "conv1/7x7_s2/bn"]
    for stage, n in [(2, 3), (3, 4), (4, 6), (5, 3)]:
        for block in range(1, n + 1):
            parts = ["1x1_reduce", "3x3", "1x1_increase"]
            parts += ["1x1_proj"] if block == 1 else []
            for part in parts:
                names += [
                    f"conv{stage}_{block}_{part}",
                    f"conv{stage}_{block}_{part}/bn",
                ]
    return names


def _write_keras2_h5(path, arch, model, rng):
    """A weights file in Keras 2's layout (as `save_weights` wrote the VGGFace
    files), random values, plus top and weightless layers."""
    written = {}
    names = _vggface_layer_names(arch)
    with h5py.File(path, "w") as f:
        all_names = names + ["pool1", "fc6", "fc8"]
        f.attrs["layer_names"] = [n.encode() for n in all_names]
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for name in all_names:
            g = f.require_group(name)
            if name == "pool1":
                g.attrs["weight_names"] = []
                continue
            if name.startswith("fc"):
                shapes, suffixes = [(7, 4), (4,)], ["kernel:0", "bias:0"]
            else:
                layer = model.get_layer(face_backbones.keras_name(name))
                shapes = [tuple(w.shape) for w in layer.weights]
                suffixes = (
                    ["gamma:0", "beta:0", "moving_mean:0", "moving_variance:0"]
                    if name.endswith("/bn")
                    else ["kernel:0", "bias:0"][: len(shapes)]
                )
            weight_names = [f"{name}/{s}" for s in suffixes]
            g.attrs["weight_names"] = [w.encode() for w in weight_names]
            arrays = [rng.uniform(0.5, 1.5, s).astype("float32") for s in shapes]
            for w, a in zip(weight_names, arrays, strict=True):
                g.create_dataset(w, data=a)
            written[name] = arrays
    return written


@pytest.mark.parametrize("arch", ["vgg16_face", "resnet50_face"])
def test_vggface_h5_loads_every_weight(tmp_path, arch):
    model = backbones.build_backbone(arch, 48)
    weighted = {layer.name for layer in model.layers if layer.weights}
    names = _vggface_layer_names(arch)
    assert weighted == {face_backbones.keras_name(n) for n in names}
    path = tmp_path / f"rcmalli_vggface_tf_notop_{arch}.h5"
    written = _write_keras2_h5(path, arch, model, np.random.default_rng(0))
    backbones.load_backbone_weights(model, str(path))
    for name in names:
        layer = model.get_layer(face_backbones.keras_name(name))
        for w, a in zip(layer.weights, written[name], strict=True):
            np.testing.assert_array_equal(w.numpy(), a)
    pooled, _ = model(np.zeros((1, 48, 48, 3), "float32"))
    assert pooled.shape == (1, 512 if arch == "vgg16_face" else 2048)


def test_vggface_h5_mismatch_lists_problems(tmp_path):
    model = backbones.build_backbone("vgg16_face", 48)
    path = tmp_path / "vgg.h5"
    _write_keras2_h5(path, "vgg16_face", model, np.random.default_rng(0))
    other = backbones.build_backbone("resnet50_face", 48)
    before = [w.numpy().copy() for w in other.weights]
    with pytest.raises(ValueError) as info:
        backbones.load_backbone_weights(other, str(path))
    message = str(info.value)
    assert re.search(r"layers missing from the file: \['conv1_7x7_s2'", message)
    assert re.search(r"file layers with no layer here: \['conv1_1'", message)
    assert "--backbone=vgg16_face" in message
    for w, b in zip(other.weights, before, strict=True):
        np.testing.assert_array_equal(w.numpy(), b)


def test_input_norm_modes():
    x = np.array([[[[0.0, 127.5, 255.0]]]], "float32")  # RGB, 0..255
    np.testing.assert_allclose(InputNorm("symmetric")(x).numpy().ravel(), [-1, 0, 1])
    imagenet = InputNorm("imagenet")(x).numpy().ravel()
    expected = (np.array([0.0, 0.5, 1.0]) - [0.485, 0.456, 0.406]) / [
        0.229,
        0.224,
        0.225,
    ]
    np.testing.assert_allclose(imagenet, expected, rtol=1e-5)
    vgg = InputNorm("vggface1")(x).numpy().ravel()  # BGR, 0..255 - mean
    np.testing.assert_allclose(vgg, [255 - 93.5940, 127.5 - 104.7624, -129.1863])
    with pytest.raises(ValueError, match="input_norm"):
        InputNorm("bgr")
