import pytest
import timm
import torch
import torch.nn.functional as F

import models
from bench.engine.measure import count_flops, count_params
from models.cifar_resnet import ShortcutA

# Published params / conv+linear MACs at 1x3x32x32, 10 classes (DESIGN.md, Li et al. 2017, DECORE)
LITERATURE = {
    "resnet56": (0.85e6, 125.49e6),
    "resnet110": (1.72e6, 252.89e6),
    "vgg16": (14.98e6, 313.73e6),
    "densenet40": (1.04e6, 282.92e6),
    "googlenet": (6.15e6, 1520e6),
}


def conv_linear_params(model: torch.nn.Module) -> int:
    """Weights and biases of conv and linear layers only (no BatchNorm), as HRank and DECORE count."""
    kinds = (torch.nn.Conv2d, torch.nn.Linear)
    return sum(p.numel() for m in model.modules() if isinstance(m, kinds) for p in m.parameters())


@pytest.mark.parametrize("name", list(LITERATURE))
def test_params_and_flops_equal_literature(name):
    model = models.create(name, num_classes=10)
    params, flops = LITERATURE[name]
    # the published params are conv + linear weights and biases (BatchNorm excluded: on DenseNet-40, whose
    # norms are wide, the 18.7k BN parameters are 1.8%); rounded to 0.01M, so compare at 0.5%; FLOPs within 0.5%
    assert conv_linear_params(model) == pytest.approx(params, rel=0.005)
    assert count_params(model) == pytest.approx(params, rel=0.02)
    assert count_flops(model) == pytest.approx(flops, rel=0.005)


def test_resnet56_exact_counts():
    model = models.create("resnet56")
    assert count_params(model) == 853_018
    assert count_flops(model) == 125_485_696  # conv 125,485,056 + linear 640


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnets_build_through_timm(depth):
    model = timm.create_model(f"cifar_resnet{depth}", num_classes=100)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert n_convs == depth - 1  # stem + 2 per block; the fc is the last layer
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_resolve_data_config_gives_cifar_settings():
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("cifar_resnet56", num_classes=10))
    assert cfg["input_size"] == (3, 32, 32)
    assert cfg["mean"] == pytest.approx((0.4914, 0.4822, 0.4465))
    assert cfg["crop_pct"] == 1.0


def test_vgg_head_and_outputs():
    model = timm.create_model("cifar_vgg16_bn", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 13 and [tuple(l.weight.shape) for l in linears] == [(512, 512), (10, 512)]
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_densenet40_and_googlenet_structure():
    dense = timm.create_model("cifar_densenet40", num_classes=10)
    convs = [m for m in dense.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 12 + 2 and all(c.out_channels == 12 for c in convs[1:13])
    assert [dense.trans1.conv1.out_channels, dense.trans2.conv1.out_channels, dense.fc.in_features] == [168, 312, 456]
    assert count_params(dense) == 1_059_298 and count_flops(dense) == 282_917_328
    goog = timm.create_model("cifar_googlenet", num_classes=100)
    assert all(m.bias is not None for m in goog.modules() if isinstance(m, torch.nn.Conv2d))
    assert goog.b5.b3[3].kernel_size == (3, 3) and goog.linear.in_features == 1024
    assert count_params(goog) == 6_258_500 and goog.pretrained_cfg["classifier"] == "linear"
    assert dense.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_vgg16_bn", "cifar_densenet40", "cifar_googlenet"])
def test_pretrained_raises(name):
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(name, pretrained=True)


def test_aliases_and_passthrough():
    assert models.resolve("resnet110") == "cifar_resnet110"
    assert models.resolve("vgg16") == "cifar_vgg16_bn"
    assert models.resolve("densenet40") == "cifar_densenet40" and models.resolve("googlenet") == "cifar_googlenet"
    assert models.resolve("resnet18") == "resnet18"  # any other name is timm's
    assert models.create("resnet18", num_classes=7).get_classifier().out_features == 7


def test_unknown_model_names_close_matches():
    with pytest.raises(models.UnknownModelError, match="did you mean.*resnet56"):
        models.resolve("resnt56")
    with pytest.raises(models.UnknownModelError, match="unknown model 'zzzz'"):
        models.resolve("zzzz")


@pytest.mark.parametrize("stride", [2])
def test_shortcut_a_equals_zero_padding(stride):
    sc = ShortcutA(16, 32, stride)
    x = torch.randn(3, 16, 8, 8)
    expected = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
    assert torch.equal(sc(x), expected)
    assert torch.equal(sc(x.contiguous(memory_format=torch.channels_last)), expected)
