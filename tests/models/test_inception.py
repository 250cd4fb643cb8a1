"""The Inception family: torchvision parity (GoogLeNet, Inception-v3), the vision contract, auxiliary heads,
the small GoogLeNet preset and config/input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision_fixtures import assert_matches_torchvision, load_fixture

import bigmodels
from bigmodels.errors import ConfigError, DataError
from bigmodels.models._inception_specs import GOOGLENET_STAGES
from bigmodels.models.inception import GoogLeNetConfig, InceptionV3Config, _width

pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ torchvision parity


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_matches_torchvision(name):
    # the fixture was built with aux_logits=True, transform_input=True: the aux heads load, eval ignores them
    assert load_fixture(name)["builder_kwargs"] == {"aux_logits": True, "transform_input": True}
    assert_matches_torchvision(bigmodels.create_model(name, transform_input=True), name)


@pytest.mark.parametrize("name, expected", [("googlenet", 6_624_904), ("inception_v3", 23_834_568)])
def test_parameter_counts_without_aux_heads_match_torchvision(name, expected):
    model = bigmodels.create_model(name, aux_logits=False, init_weights=False)
    assert n_params(model) == expected
    assert not [k for k in model.state_dict() if k.startswith(("aux", "AuxLogits"))]


def test_presets_are_torchvision_defaults():
    for name in ("googlenet", "inception_v3"):
        spec = bigmodels.get_spec(name)
        assert spec.config.aux_logits and not spec.config.transform_input and spec.config.init_weights
        assert spec.config.num_classes == 1000 and spec.config.in_chans == 3 and not spec.compare
    assert bigmodels.get_spec("googlenet").config.dropout == 0.2
    assert bigmodels.get_spec("googlenet").config.aux_dropout == 0.7
    assert bigmodels.get_spec("inception_v3").config.dropout == 0.5
    assert bigmodels.get_spec("inception_v3").config.img_size == 299
    assert bigmodels.get_spec("googlenet_mini").compare


def test_init_follows_torchvision():
    torch.manual_seed(0)
    g = bigmodels.create_model("googlenet")
    assert abs(g.inception4e.branch2[1].conv.weight.std().item() - 0.01) < 0.001  # trunc normal, std 0.01
    assert abs(g.fc.weight.std().item() - 0.01) < 0.001
    assert torch.equal(g.conv1.bn.weight, torch.ones(64)) and torch.equal(g.conv1.bn.bias, torch.zeros(64))
    v3 = bigmodels.create_model("inception_v3")
    assert abs(v3.Mixed_6e.branch1x1.conv.weight.std().item() - 0.1) < 0.01  # default stddev 0.1
    assert abs(v3.AuxLogits.fc.weight.std().item() - 0.001) < 0.0001  # the aux fc's own stddev


def test_transform_input_renormalises_imagenet_input_per_channel():
    torch.manual_seed(0)
    # PyTorch's default init: torchvision's std-0.01 init leaves a fresh eval-mode net nearly input-blind
    kw = dict(in_chans=3, img_size=16, init_weights=False)
    plain = bigmodels.create_model("googlenet_mini", **kw).eval()
    model = bigmodels.create_model("googlenet_mini", transform_input=True, **kw).eval()
    model.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain((x * std + mean - 0.5) / 0.5))
        assert not torch.allclose(model(x), plain(x))


# ------------------------------------------------------------------------------------------ the vision contract


def test_googlenet_intermediates_features_and_head():
    model = bigmodels.create_model("googlenet", aux_logits=False, init_weights=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        assert [tuple(m.shape) for m in maps] == [(2, 192, 16, 16), (2, 480, 8, 8), (2, 832, 4, 4), (2, 1024, 2, 2)]
        assert model.num_features == 1024
        feats = model.forward_features(x)
        torch.testing.assert_close(feats, maps[-1])
        torch.testing.assert_close(model.forward_head(feats), model(x))
        assert model(x).shape == (2, 1000)


def test_inception_v3_intermediates_at_its_smallest_input():
    model = bigmodels.create_model("inception_v3", aux_logits=False, img_size=75, init_weights=False).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 75, 75))
    shapes = [tuple(m.shape) for m in maps]
    assert shapes == [(1, 64, 35, 35), (1, 192, 15, 15), (1, 288, 7, 7), (1, 768, 3, 3), (1, 2048, 1, 1)]
    assert model.num_features == 2048


def test_num_classes_zero_returns_pooled_features_from_every_head():
    model = bigmodels.create_model("googlenet_mini", num_classes=0, aux_logits=True)
    assert isinstance(model.fc, nn.Identity) and isinstance(model.aux1.fc2, nn.Identity)
    x = torch.randn(2, 1, 8, 8)
    logits, aux1, aux2 = model.forward_aux(x)
    assert logits.shape == (2, model.num_features)
    assert aux1.shape == aux2.shape == (2, model.aux1.fc1.out_features)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x).mean((2, 3)))


def test_reset_classifier_replaces_main_and_aux_classifiers():
    model = bigmodels.create_model("googlenet_mini", aux_logits=True)
    model.reset_classifier(3)
    assert model.config.num_classes == 3
    assert [o.shape for o in model.forward_aux(torch.randn(2, 1, 8, 8))] == [(2, 3)] * 3
    model.reset_classifier(0)
    assert model.config.num_classes == 0
    assert all(isinstance(m, nn.Identity) for m in (model.fc, model.aux1.fc2, model.aux2.fc2))
    with pytest.raises(ConfigError, match="num_classes=-1"):
        model.reset_classifier(-1)
    v3 = bigmodels.create_model("inception_v3", init_weights=False)
    v3.reset_classifier(7)
    assert v3.fc.out_features == 7 and v3.AuxLogits.fc.out_features == 7 and v3.config.num_classes == 7


# ------------------------------------------------------------------------------------------ auxiliary heads


def test_googlenet_forward_aux_in_training_trains_the_aux_heads():
    torch.manual_seed(0)
    model = bigmodels.create_model("googlenet_mini", aux_logits=True).train()
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 7])
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)  # forward: main logits only
    logits, aux1, aux2 = model.forward_aux(x)
    assert logits.shape == aux1.shape == aux2.shape == (2, 10)
    assert not torch.allclose(aux1, aux2)
    (F.cross_entropy(logits, y) + 0.3 * (F.cross_entropy(aux1, y) + F.cross_entropy(aux2, y))).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.aux1.fc2.weight.grad.abs().sum() > 0 and model.aux2.fc1.weight.grad.abs().sum() > 0


def test_inception_v3_forward_aux_at_299_and_its_size_check():
    model = bigmodels.create_model("inception_v3", init_weights=False).train()
    with torch.no_grad():
        logits, aux = model.forward_aux(torch.randn(2, 3, 299, 299))
        assert logits.shape == aux.shape == (2, 1000)
        assert model(torch.randn(2, 3, 75, 75)).shape == (2, 1000)  # the main path never runs the aux head
    with pytest.raises(DataError, match="298x299.*at least 299x299"):
        model.forward_aux(torch.randn(2, 3, 298, 299))
    with pytest.raises(DataError, match="74x74.*at least 75x75"):
        model(torch.randn(2, 3, 74, 74))


def test_forward_aux_without_aux_heads_says_how_to_get_them():
    model = bigmodels.create_model("googlenet_mini")
    assert not hasattr(model, "aux1")
    with pytest.raises(ConfigError, match="aux_logits=True"):
        model.forward_aux(torch.randn(2, 1, 8, 8))


# ------------------------------------------------------------------------------------------ GoogLeNet variants


def test_googlenet_mini_trains_on_small_digits():
    torch.manual_seed(0)
    model = bigmodels.create_model("googlenet_mini")
    assert n_params(model) < 500_000
    assert isinstance(model.maxpool1, nn.Identity) and isinstance(model.maxpool2, nn.Identity)
    assert model.conv1.conv.stride == (1, 1) and model.conv1.conv.in_channels == 1
    x = torch.randn(2, 1, 8, 8)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 9])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    shapes = [tuple(m.shape[-2:]) for m in model.forward_intermediates(x)]
    assert shapes == [(8, 8), (8, 8), (4, 4), (2, 2)]  # strides 1, 1, 2, 4


def test_small_input_and_width_keep_torchvision_names():
    full = bigmodels.create_model("googlenet", init_weights=False).state_dict()
    small = bigmodels.create_model("googlenet", small_input=True, width_mult=0.25, init_weights=False).state_dict()
    assert list(small) == list(full)
    assert small["conv1.conv.weight"].shape == (16, 3, 7, 7)  # 64 * 0.25
    assert small["inception3a.branch3.0.conv.weight"].shape == (8, 48, 1, 1)  # 16 * 0.25 = 4 -> at least 8


def test_width_rounds_to_multiples_of_eight_and_keeps_width_one():
    widths = {c for _, _, blocks in GOOGLENET_STAGES for row in blocks.values() for c in row} | {64, 128, 192, 1024}
    assert all(_width(c, 1.0) == c for c in widths)
    assert [_width(c, 0.125) for c in (16, 64, 96, 100, 1024)] == [8, 8, 16, 16, 128]


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("cls, kwargs, match", [
    (GoogLeNetConfig, {"in_chans": 1, "transform_input": True}, "in_chans=1"),
    (GoogLeNetConfig, {"dropout": 1.0}, "dropout=1.0"),
    (GoogLeNetConfig, {"aux_dropout": -0.1}, "aux_dropout=-0.1"),
    (GoogLeNetConfig, {"width_mult": 0.0}, "width_mult=0.0"),
    (GoogLeNetConfig, {"num_classes": -1}, "num_classes=-1"),
    (GoogLeNetConfig, {"img_size": 8}, "img_size=8.*at least 15x15"),
    (InceptionV3Config, {"img_size": 224}, "img_size=224.*aux_logits=false"),
    (InceptionV3Config, {"img_size": 64, "aux_logits": False}, "img_size=64.*at least 75x75"),
])
def test_config_errors_name_the_value(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


def test_unknown_override_is_a_config_error():
    with pytest.raises(ConfigError, match="width_mul"):
        bigmodels.create_model("googlenet_mini", width_mul=0.5)


def test_wrong_channels_or_too_small_images_are_data_errors():
    model = bigmodels.create_model("googlenet_mini")
    with pytest.raises(DataError, match="in_chans=3"):
        model(torch.randn(2, 3, 8, 8))
    with pytest.raises(DataError, match="1x1 images"):
        model(torch.randn(2, 1, 1, 1))
    g = bigmodels.create_model("googlenet", aux_logits=False, init_weights=False)
    with pytest.raises(DataError, match="14x14.*at least 15x15"):
        g(torch.randn(2, 3, 14, 14))
