"""Tests for sparsetrain.experiments.models: shapes, parameter counts, init, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsetrain.experiments.models import MODELS, build_model, init_weights, model_context, model_names

ALL = [n for n in MODELS if model_context(n) is None]  # image models (language models: test_gpt.py)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: one intra-op thread is faster and immune to CPU contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def n_weights(model: nn.Module) -> int:
    """Parameters of conv/linear weight matrices only (no biases, no BatchNorm)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_registry_lists_every_required_name():
    required = {"mlp", "lenet300-100", "lenet5", "lenet5-caffe", "vgg11", "vgg16", "vgg19",
                "resnet20", "resnet32", "resnet56", "resnet18", "resnet34", "resnet50", "wrn-22-2"}
    assert required <= set(MODELS)
    assert model_names() == list(MODELS)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("in_channels,num_classes,image_size", [(1, 10, 28), (3, 100, 32)])
def test_output_shape(name, in_channels, num_classes, image_size):
    torch.manual_seed(0)
    model = build_model(name, in_channels, num_classes, image_size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, image_size, image_size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet20", "wrn-22-2", "vgg11", "mlp"])
def test_tiny_8x8_images_work(name):
    model = build_model(name, 1, 10, 8).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize("name", ["lenet5", "lenet5-caffe"])
def test_too_small_images_are_rejected(name):
    with pytest.raises(ValueError, match="image_size"):
        build_model(name, 1, 10, 8)


def test_lenet300_100_param_count():
    model = build_model("lenet300-100", 1, 10, 28)
    assert n_params(model) == 266_610  # 784*300+300 + 300*100+100 + 100*10+10
    assert n_params(build_model("mlp", 1, 10, 28)) == 266_610
    # Input size is in_channels * image_size**2.
    assert model.net[1].in_features == 784
    assert build_model("mlp", 3, 10, 32).net[1].in_features == 3 * 32 * 32


def test_lenet5_caffe_param_count():
    model = build_model("lenet5-caffe", 1, 10, 28)
    # 430,500 weights (20*25 + 50*20*25 + 800*500 + 500*10) plus 580 biases.
    assert n_weights(model) == 430_500
    assert n_params(model) == 431_080
    assert model.classifier[1].in_features == 800
    # The flatten size follows the image size: 32x32 -> 50*5*5.
    assert build_model("lenet5-caffe", 3, 10, 32).classifier[1].in_features == 1250


def test_lenet5_param_count():
    model = build_model("lenet5", 1, 10, 28)
    # conv 6*25+6, conv 16*6*25+16, fc 400*120+120, 120*84+84, 84*10+10
    assert n_params(model) == 156 + 2416 + 48120 + 10164 + 850


@pytest.mark.parametrize("name,expected", [
    # Literature values for 3x32x32 / 10 classes.
    ("resnet18", 11_173_962),  # CIFAR ResNet-18 (3x3 stem, projection shortcuts)
    ("resnet50", 23_520_842),
])
def test_known_param_counts(name, expected):
    assert n_params(build_model(name, 3, 10, 32)) == expected


@pytest.mark.parametrize("name,low,high", [
    ("resnet20", 0.26e6, 0.29e6), ("resnet32", 0.45e6, 0.48e6), ("resnet56", 0.84e6, 0.87e6),
    ("resnet34", 21.2e6, 21.4e6), ("vgg16", 14.6e6, 14.8e6), ("vgg11", 9.1e6, 9.3e6),
    ("vgg19", 19.9e6, 20.1e6), ("wrn-22-2", 1.05e6, 1.12e6),
])
def test_param_counts_in_expected_range(name, low, high):
    assert low <= n_params(build_model(name, 3, 10, 32)) <= high


def test_resnet_depths():
    def convs(m):
        return sum(1 for x in m.modules() if isinstance(x, nn.Conv2d) and x.kernel_size == (3, 3))
    # depth = 3x3 convs + final fc
    assert convs(build_model("resnet20", 3, 10, 32)) + 1 == 20
    assert convs(build_model("resnet32", 3, 10, 32)) + 1 == 32
    assert convs(build_model("resnet56", 3, 10, 32)) + 1 == 56
    # WRN-d-k: depth 6n+4 with n blocks per stage -> 6n+1 3x3 convs; n = 3 for d = 22.
    wrn = build_model("wrn-22-2", 3, 10, 32)
    assert convs(wrn) == 6 * 3 + 1
    assert [len(stage) for stage in wrn.layers] == [3, 3, 3]


def test_cifar_resnet_has_no_maxpool_and_3x3_stem():
    for name in ("resnet18", "resnet20"):
        model = build_model(name, 3, 10, 32)
        assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)


def test_wrn_widths_and_no_dropout():
    model = build_model("wrn-22-2", 3, 10, 32)
    assert model.fc.in_features == 128
    assert all(block.dropout == 0.0 for stage in model.layers for block in stage)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_model("resnet9000", 3, 10, 32)
    msg = str(err.value)
    assert "resnet9000" in msg
    for name in ("lenet5-caffe", "resnet20", "wrn-22-2", "vgg16"):
        assert name in msg


def test_name_normalisation():
    assert n_params(build_model("LeNet300_100", 1, 10, 28)) == 266_610
    assert isinstance(build_model("WRN_22_2", 3, 10, 32), nn.Module)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_dimensions_rejected(bad):
    with pytest.raises(ValueError):
        build_model("mlp", bad, 10, 28)


@pytest.mark.parametrize("name", ["resnet20", "lenet5-caffe", "vgg11", "wrn-22-2"])
def test_deterministic_given_seed(name):
    torch.manual_seed(123)
    a = build_model(name, 3, 10, 32).state_dict()
    torch.manual_seed(123)
    b = build_model(name, 3, 10, 32).state_dict()
    torch.manual_seed(124)
    c = build_model(name, 3, 10, 32).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_kaiming_init_for_convs():
    torch.manual_seed(0)
    model = build_model("vgg16", 3, 10, 32)
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][5]
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    expected = math.sqrt(2.0 / fan_out)
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert init_weights(model) is model


def test_models_train_one_step():
    torch.manual_seed(0)
    for name in ("lenet5", "resnet20", "wrn-22-2"):
        model = build_model(name, 1, 10, 12)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        opt.step()
