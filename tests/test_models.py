"""Model registry: parameter counts against the papers, shapes, layer order, seeding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunebench.errors import ConfigError
from prunebench.models import MODELS, get_model, model_names, register_model

DIGITS = (1, 8, 8)
MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)

NATURAL_INPUT = {
    "mlp_digits": DIGITS,
    "cnn_digits": DIGITS,
    "cnn_digits_bn": DIGITS,
    "lenet_300_100": MNIST,
    "lenet5": MNIST,
    "conv2": CIFAR,
    "conv4": CIFAR,
    "conv6": CIFAR,
    "vgg11_bn": CIFAR,
    "vgg16_bn": CIFAR,
    "vgg19_bn": CIFAR,
    "resnet20": CIFAR,
    "resnet56": CIFAR,
    "resnet18": CIFAR,
}

# (published count, relative tolerance), for 10 classes on the model's natural input.
PUBLISHED_PARAMS = {
    "lenet_300_100": (266_610, 0.0),
    "conv2": (4.3e6, 0.03),  # Frankle & Carbin 2019
    "conv4": (2.4e6, 0.03),
    "vgg16_bn": (14.7e6, 0.03),  # one-fc CIFAR variant
    "vgg19_bn": (20.0e6, 0.03),
    "resnet20": (0.27e6, 0.03),  # He et al. 2016
    "resnet56": (0.85e6, 0.03),
    "resnet18": (11.17e6, 0.01),
}

# Exact counts of our architectures where no published figure applies.
# conv6: the paper's 1.7M omits the second 256-channel conv (590,080 parameters).
EXACT_PARAMS = {
    "conv6": 2_262_602,
    "vgg11_bn": 9_228_362,
    "lenet5": 61_706,
    "mlp_digits": 17_226,
    "cnn_digits": 47_530,
    "cnn_digits_bn": 47_690,
}


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prunable_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_every_registered_model_has_a_natural_input():
    assert model_names() == sorted(NATURAL_INPUT)
    assert set(MODELS) == set(NATURAL_INPUT)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_paper(name):
    published, tolerance = PUBLISHED_PARAMS[name]
    count = num_params(get_model(name, 10, NATURAL_INPUT[name]))
    assert abs(count - published) <= tolerance * published, count


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_parameter_count_pinned(name):
    assert num_params(get_model(name, 10, NATURAL_INPUT[name])) == EXACT_PARAMS[name]


@pytest.mark.parametrize("name", sorted(NATURAL_INPUT))
def test_forward_shape_and_layer_order(name):
    shape = NATURAL_INPUT[name]
    model = get_model(name, 7, shape)
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)

    layers = prunable_layers(model)
    first, last = layers[0], layers[-1]
    if isinstance(first, nn.Conv2d):
        assert first.in_channels == shape[0]
    else:
        assert first.in_features == shape[0] * shape[1] * shape[2]
    assert isinstance(last, nn.Linear)
    assert last.out_features == 7
    assert sum(isinstance(m, nn.Linear) and m.out_features == 7 for m in layers) == 1


def test_resnet_shortcuts_register_before_classifier():
    names = [n for n, m in get_model("resnet20", 10, CIFAR).named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert names[0] == "conv1"
    assert names[-1] == "fc"
    assert any("shortcut" in n for n in names)


@pytest.mark.parametrize("name", ["resnet20", "conv6", "vgg11_bn", "cnn_digits", "mlp_digits"])
def test_small_inputs_still_work(name):
    model = get_model(name, 3, DIGITS)
    with torch.no_grad():
        assert model(torch.randn(2, *DIGITS)).shape == (2, 3)


@pytest.mark.parametrize("name", ["resnet20", "lenet5", "cnn_digits"])
def test_same_seed_same_weights_different_seed_different(name):
    def state(seed):
        torch.manual_seed(seed)
        return get_model(name, 10, NATURAL_INPUT[name]).state_dict()

    a, b, c = state(0), state(0), state(1)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_batchnorm_initialised_to_identity():
    for module in get_model("resnet20", 10, CIFAR).modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_unknown_model_names_key_and_choices():
    with pytest.raises(ConfigError, match=r"unknown model 'nope' \(key model\.name\).*resnet20"):
        get_model("nope", 10, CIFAR)


def test_impossible_input_shape_raises_config_error():
    with pytest.raises(ConfigError, match=r"'lenet5' \(key model\.name\).*\(1, 8, 8\)"):
        get_model("lenet5", 10, DIGITS)
    with pytest.raises(ConfigError, match=r"model\.name.*\(3, 4, 4\)"):
        get_model("conv6", 10, (3, 4, 4))


@pytest.mark.parametrize("shape", [(28, 28), (1, 0, 8), (1, 8.0, 8)])
def test_malformed_input_shape_raises_config_error(shape):
    with pytest.raises(ConfigError, match="input shape"):
        get_model("mlp_digits", 10, shape)


@pytest.mark.parametrize("num_classes", [0, -1, 2.0, True])
def test_bad_num_classes_raises_config_error(num_classes):
    with pytest.raises(ConfigError, match="classes"):
        get_model("mlp_digits", num_classes, DIGITS)


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("resnet20")(lambda num_classes, input_shape: nn.Identity())
