"""ResNet: torchvision parity (weights, logits, parameter counts), the vision contract, small stems, errors."""

from __future__ import annotations

import pytest
import torch
from torchvision_fixtures import assert_matches_torchvision, load_fixture

import bigmodels
from bigmodels.errors import ConfigError, DataError
from bigmodels.models.resnet import BasicBlock, Bottleneck, ResNet, ResNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny(**overrides) -> ResNet:
    """A ResNet small enough for every contract test: 8x8 inputs, widths 8-64."""
    cfg = dict(stem="small", layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), num_classes=5)
    return ResNet(ResNetConfig(**{**cfg, **overrides}))


# ------------------------------------------------------------------------------------------ torchvision parity


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_matches_torchvision_weights_and_logits(name):
    # strict state-dict keys and shapes, logits within 1e-5 x max(1, max|logit|), parameter count
    assert_matches_torchvision(bigmodels.create_model(name), name)


def test_state_dict_keys_follow_torchvision_order():
    # same keys in the same order as torchvision's manifest (order matters to tools that zip state dicts)
    with torch.device("meta"):
        model = bigmodels.create_model("resnet50")
    assert list(model.state_dict()) == [k for k, _, _ in load_fixture("resnet50")["manifest"]]


TORCHVISION_PARAMS = {  # torchvision's published numbers (its weights' meta["num_params"])
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_counts_equal_torchvision(name):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = bigmodels.create_model(name)
    assert n_params(model) == TORCHVISION_PARAMS[name]
    assert bigmodels.get_spec(name).compare is False  # ImageNet-sized: kept out of `bigmodels compare`


def test_small_presets_are_small():
    assert n_params(bigmodels.create_model("resnet_mini")) == 308_538
    assert n_params(bigmodels.create_model("resnet_mnist")) == 701_178  # small enough for the CPU MNIST recipe
    assert bigmodels.get_spec("resnet_mini").compare and not bigmodels.get_spec("resnet_mnist").compare


# ------------------------------------------------------------------------------------------ the vision contract


def test_forward_intermediates_shapes_per_stage():
    model = tiny().eval()
    maps = model.forward_intermediates(torch.randn(2, 3, 16, 16))
    assert [tuple(m.shape) for m in maps] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]


def test_forward_features_is_last_intermediate_and_head_gives_logits():
    torch.manual_seed(0)
    model = tiny(block="bottleneck").eval()
    x = torch.randn(2, 3, 16, 16)
    feats = model.forward_features(x)
    assert torch.equal(feats, model.forward_intermediates(x)[-1])
    assert model.num_features == 64 * 4 == feats.shape[1]  # bottleneck expansion
    assert tuple(model.forward_head(feats).shape) == (2, 5)
    assert torch.equal(model(x), model.forward_head(feats))


def test_imagenet_stem_downsamples_by_32():
    model = tiny(stem="imagenet").eval()
    assert isinstance(model.maxpool, torch.nn.MaxPool2d) and model.conv1.kernel_size == (7, 7)
    maps = model.forward_intermediates(torch.randn(1, 3, 64, 64))
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]


def test_num_classes_zero_returns_pooled_features():
    model = tiny(num_classes=0).eval()
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    assert tuple(out.shape) == (2, model.num_features)
    assert torch.allclose(out, model.forward_features(x).mean(dim=(2, 3)))


def test_reset_classifier():
    model = tiny().eval()
    model.reset_classifier(7)
    assert model.config.num_classes == 7 and tuple(model(torch.randn(1, 3, 8, 8)).shape) == (1, 7)
    model.reset_classifier(0)
    assert model.config.num_classes == 0 and isinstance(model.fc, torch.nn.Identity)
    assert tuple(model(torch.randn(1, 3, 8, 8)).shape) == (1, 64)
    with pytest.raises(ConfigError, match="num_classes=-1"):
        model.reset_classifier(-1)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_zero_init_residual_zeroes_the_last_bn_of_each_block(block):
    last_bn = "bn2" if block == "basic" else "bn3"
    blocks = [m for m in tiny(block=block, layers=(2, 1, 1, 1), zero_init_residual=True).modules()
              if isinstance(m, (BasicBlock, Bottleneck))]
    assert len(blocks) == 5
    assert all(not getattr(b, last_bn).weight.any() for b in blocks)
    assert all((b.bn1.weight == 1).all() for b in blocks)  # only the last BN is zeroed
    default = [m for m in tiny(block=block).modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert all((getattr(b, last_bn).weight == 1).all() for b in default)


def test_zero_init_residual_makes_a_block_the_identity_after_relu():
    block = tiny(zero_init_residual=True).eval().layer1[0]  # no downsample: in and out are (B, 8, H, W)
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(block(x), torch.relu(x))


# ------------------------------------------------------------------------------------------ small images


@pytest.mark.parametrize(("size", "sides"), [(8, [8, 4, 2, 1]), (28, [28, 14, 7, 4])])
def test_small_stem_on_small_images(size, sides):
    model = bigmodels.create_model("resnet_mini")
    assert isinstance(model.maxpool, torch.nn.Identity) and model.conv1.stride == (1, 1)
    x = torch.randn(2, 1, size, size)
    maps = model.forward_intermediates(x)
    assert [m.shape[-1] for m in maps] == sides
    model.train()
    logits = model(x)  # batch 2: batch norm trains fine on the 1x1 maps of 8x8 inputs
    assert tuple(logits.shape) == (2, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resnet_mnist_on_28x28():
    model = bigmodels.create_model("resnet_mnist").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 28, 28))
    assert tuple(out.shape) == (1, 10) and model.conv1.kernel_size == (3, 3)


def test_dropout_before_fc_only_in_training():
    torch.manual_seed(0)
    model = tiny(drop_rate=0.5, num_classes=0)
    feats = torch.rand(2, 64, 1, 1) + 1
    model.eval()
    assert torch.equal(model.forward_head(feats), feats.flatten(1))
    model.train()
    assert (model.forward_head(feats) == 0).any()


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(block="wide"), r"resnet\.block='wide' is not valid; choose one of basic, bottleneck"),
        (dict(block="basic", groups=2), r"groups=2.*use block='bottleneck'"),
        (dict(block="basic", width_per_group=128), r"width_per_group=128.*use block='bottleneck'"),
        (dict(stem="cifar"), r"resnet\.stem='cifar'.*imagenet, small"),
        (dict(layers=(2, 2, 2)), r"resnet\.layers=\(2, 2, 2\) must be 4 positive integers"),
        (dict(widths=(8, 16, 0, 32)), r"resnet\.widths=.*must be 4 positive integers"),
        (dict(num_classes=-1), r"num_classes=-1 must be >= 0"),
        (dict(drop_rate=1.0), r"drop_rate=1\.0 must be in \[0, 1\)"),
    ],
)
def test_config_errors_name_the_value_and_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ResNetConfig(**overrides)


def test_create_model_overrides_are_checked():
    with pytest.raises(ConfigError, match="groups=2"):
        bigmodels.create_model("resnet18", groups=2)
    model = bigmodels.create_model("resnet_mini", num_classes=3, layers=[1, 2, 1, 1])
    assert model.config.layers == (1, 2, 1, 1) and len(model.layer2) == 2


def test_wrong_channel_count_raises_data_error():
    model = bigmodels.create_model("resnet_mini").eval()
    with pytest.raises(DataError, match=r"expected images of shape \(batch, 1, H, W\), got \(1, 3, 8, 8\)"):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(DataError):
        model(torch.randn(1, 8, 8))  # no batch dimension
