"""Vision Transformer: torchvision weight compatibility, parity with transformers (both directions), preset sizes,
position-embedding resizing, the vision contract and the errors a user can cause."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from torchvision_fixtures import assert_matches_torchvision

import bigmodels
from bigmodels.errors import CheckpointError, ConfigError, DataError
from bigmodels.models.vit import VisionTransformer, ViTConfig, interpolate_pos_embedding, resize_pos_embed
from bigmodels.registry import model_from_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach for the Hub
pytestmark = pytest.mark.usefixtures("one_thread")

# a tiny ViT, in our names and in transformers' (ViTConfig) names
TINY = dict(img_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5)
TINY_HF = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64)
ATOL = 1e-5


def tiny(**overrides) -> VisionTransformer:
    return model_from_config("vit", ViTConfig(**{**TINY, **overrides}))


def randomize(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every parameter N(0, 0.2^2), norms, biases and the zero-initialised head included: a swapped name,
    a transpose or a q/k/v mix-up cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def images(size: int = 32, batch: int = 3, chans: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ torchvision


def test_vit_b_16_matches_torchvision():
    # strict keys and shapes, torchvision's parameter count, logits within 1e-5 x max(1, max |logit|)
    assert_matches_torchvision(bigmodels.create_model("vit_b_16"), "vit_b_16")


PARAMS = {  # torchvision's counts (vit_b_16: the fixture's num_params); vit_s_16: timm's vit_small_patch16_224
    "vit_b_16": 86_567_656, "vit_b_32": 88_224_232, "vit_l_16": 304_326_632, "vit_s_16": 22_050_664,
    # vit_mini: conv 1*2*2*64+64 = 320, class token 64, positions 17*64 = 1,088, 4 blocks x 33,472
    # (2 norms 256, qkv 12,480 + out 4,160, mlp 8,320 + 8,256), final norm 128, head 64*10+10 = 650
    "vit_mini": 136_138,
}


@pytest.mark.parametrize("name", list(PARAMS))
def test_preset_parameter_counts(name):
    with torch.device("meta"):  # sizes only: no memory, no initialisation time
        model = bigmodels.create_model(name)
    assert n_params(model) == PARAMS[name]
    assert model.num_features == model.config.hidden_dim
    assert bigmodels.get_spec(name).compare == (name == "vit_mini")


def test_representation_size_adds_torchvisions_pre_logits():
    model = tiny(representation_size=24)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("heads.")}
    assert shapes == {"heads.pre_logits.weight": (24, 32), "heads.pre_logits.bias": (24,),
                      "heads.head.weight": (5, 24), "heads.head.bias": (5,)}
    model = randomize(model)
    x = images()
    with torch.no_grad():
        pooled = model.forward_features(x)[:, 0]
        expected = model.heads.head(torch.tanh(model.heads.pre_logits(pooled)))
        assert max_diff(model(x), expected) == 0.0


# ------------------------------------------------------------------------------------------ contract


def test_forward_intermediates_features_and_head():
    model = randomize(tiny())
    x = images()
    with torch.no_grad():
        inter = model.forward_intermediates(x)
        feats = model.forward_features(x)
        logits = model(x)
    assert len(inter) == 2 and all(t.shape == (3, 17, 32) for t in inter)  # 4x4 patches + the class token
    assert torch.equal(feats, model.encoder.ln(inter[-1]))
    assert not torch.equal(inter[0], inter[1])
    assert torch.equal(logits, model.heads.head(feats[:, 0]))
    assert logits.shape == (3, 5)


def test_mean_pooling_averages_the_patch_tokens():
    cls_model = randomize(tiny())
    mean_model = tiny(pool="mean")
    mean_model.load_state_dict(cls_model.state_dict())  # the same parameters: pooling adds none
    mean_model.eval()
    x = images()
    with torch.no_grad():
        feats = mean_model.forward_features(x)
        out = mean_model(x)
        assert max_diff(out, mean_model.heads.head(feats[:, 1:].mean(dim=1))) <= 1e-6
        assert max_diff(out, cls_model(x)) > 1e-3  # it is not the class token


def test_sdpa_and_reference_attention_agree():
    model = randomize(tiny())
    ref = tiny(attn_impl="reference")
    ref.load_state_dict(model.state_dict())
    ref.eval()
    assert ref.encoder.layers.encoder_layer_0.self_attention.impl == "reference"
    x = images()
    with torch.no_grad():
        assert max_diff(model.forward_features(x), ref.forward_features(x)) <= 1e-6
        _, weights = ref.encoder.layers.encoder_layer_0.self_attention(torch.randn(2, 17, 32), return_weights=True)
    assert weights.shape == (2, 2, 17, 17)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 17))


def test_reset_classifier(tmp_path):
    model = randomize(tiny())
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("heads.")}
    model.reset_classifier(3)
    assert model.config.num_classes == 3
    x = images()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 3)
    assert not out.any()  # a fresh classifier starts at zero, as torchvision's and timm's do
    assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())
    torch.nn.functional.cross_entropy(model.train()(x), torch.tensor([0, 1, 2])).backward()
    assert model.heads.head.weight.grad.abs().sum() > 0
    bigmodels.save(model, tmp_path / "m")
    loaded = bigmodels.load(tmp_path / "m")
    assert loaded.config.num_classes == 3
    assert torch.equal(loaded.state_dict()["heads.head.weight"], model.state_dict()["heads.head.weight"])

    # with pre_logits: the new head reads the representation
    model = tiny(representation_size=24)
    pre = model.heads.pre_logits
    model.reset_classifier(7)
    assert model.heads.pre_logits is pre and model.heads.head.weight.shape == (7, 24)
    with pytest.raises(ConfigError, match="num_classes"):
        model.reset_classifier(-1)


def test_no_classifier_returns_the_pooled_features(tmp_path):
    model = randomize(bigmodels.create_model("vit_mini", num_classes=0))
    assert not [k for k in model.state_dict() if k.startswith("heads.")]
    x = images(8, chans=1)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 64)
        assert torch.equal(out, model.forward_features(x)[:, 0])
    bigmodels.save(model, tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(bigmodels.load(tmp_path / "m")(x), out)
    # reset_classifier(0) on a classifier gives the same backbone output
    clf = tiny()
    clf.reset_classifier(0)
    assert clf(images()).shape == (3, 32)


# ------------------------------------------------------------------------------------------ resolution


def test_set_img_size_interpolates_the_position_grid(tmp_path):
    model = randomize(tiny())
    pos = model.encoder.pos_embedding.detach().clone()  # (1, 1 + 4*4, D)
    model.set_img_size(48)
    new = model.encoder.pos_embedding
    assert model.config.img_size == 48 and isinstance(new, torch.nn.Parameter) and new.shape == (1, 1 + 6 * 6, 32)
    assert torch.equal(new[:, 0], pos[:, 0])  # the class token's position is kept
    # align_corners=True keeps the corners; a transposed grid would swap top-right and bottom-left
    old_grid, new_grid = pos[0, 1:].reshape(4, 4, 32), new.detach()[0, 1:].reshape(6, 6, 32)
    for (i, j), (k, m) in (((0, 0), (0, 0)), ((0, 3), (0, 5)), ((3, 0), (5, 0)), ((3, 3), (5, 5))):
        torch.testing.assert_close(new_grid[k, m], old_grid[i, j], rtol=0, atol=1e-6)
    assert not torch.allclose(old_grid[0, 3], old_grid[3, 0])
    x = images(48)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    with pytest.raises(DataError, match="48x48"):
        model(images(32))
    # the resized model saves and loads at its new size
    bigmodels.save(model, tmp_path / "m")
    loaded = bigmodels.load(tmp_path / "m")
    assert loaded.config.img_size == 48
    with torch.no_grad():
        assert torch.equal(loaded(x), out)


def test_resizing_to_the_same_size_is_the_identity():
    model = randomize(tiny())
    pos = model.encoder.pos_embedding.detach().clone()
    x = images()
    with torch.no_grad():
        before = model(x)
        model.set_img_size(32)
        assert torch.equal(model.encoder.pos_embedding, pos)
        assert torch.equal(model(x), before)
    # the interpolation itself is exact at the same size (not only short-cut)
    grid = pos[:, 1:].transpose(1, 2).reshape(1, 32, 4, 4)
    same = torch.nn.functional.interpolate(grid, size=4, mode="bicubic", align_corners=True)
    assert torch.equal(same, grid)
    assert torch.equal(interpolate_pos_embedding(pos, 4), pos)


def test_resize_pos_embed_loads_weights_of_another_resolution():
    small = randomize(tiny())
    big = tiny(img_size=48)
    state = small.state_dict()
    with pytest.raises(RuntimeError, match="pos_embedding"):
        big.load_state_dict(state)  # 17 positions vs 37: the grid must be resized first
    resized = resize_pos_embed(state, big.config.img_size)
    assert resized["encoder.pos_embedding"].shape == (1, 37, 32) and state["encoder.pos_embedding"].shape == (1, 17, 32)
    big.load_state_dict(resized, strict=True)
    big.eval()
    assert resize_pos_embed(small, 48) is small  # a model is resized in place
    x = images(48)
    with torch.no_grad():
        assert torch.equal(big(x), small(x))
    with pytest.raises(ConfigError, match="multiple of the patch size 8"):
        resize_pos_embed(state, 50)


# ------------------------------------------------------------------------------------------ errors


def test_wrong_images_are_data_errors():
    model = bigmodels.create_model("vit_mini")
    with pytest.raises(DataError, match=r"8x8 images, got 16x16.*set_img_size\(16\)"):
        model(images(16, chans=1))
    with pytest.raises(DataError, match="8x8 images, got 9x9") as e:
        model(images(9, chans=1))
    assert "set_img_size" not in str(e.value)  # 9 is no multiple of the patch size 2
    with pytest.raises(DataError, match="in_chans=3"):
        model(images(8, chans=3))


@pytest.mark.parametrize("overrides, match", [
    ({"img_size": 30}, r"img_size=30 is not a multiple of vit.patch_size=8; use an img_size of 32"),
    ({"hidden_dim": 30, "num_heads": 4}, r"hidden_dim=30 must be divisible by vit.num_heads=4"),
    ({"attn_impl": "flash"}, r"attn_impl='flash'.*sdpa, reference"),
    ({"pool": "max"}, r"pool='max'.*cls, mean"),
    ({"dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
    ({"num_classes": -1}, r"num_classes=-1 must be >= 0"),
    ({"representation_size": 0}, r"representation_size=0 must be > 0"),
    ({"layer_norm_eps": 0.0}, r"layer_norm_eps=0.0 must be > 0"),
    ({"pooling": "cls"}, r"unknown config key.*'pooling'.*Valid keys: img_size, patch_size"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        bigmodels.create_model("vit_b_16", **{**TINY, **overrides})


def test_set_img_size_rejects_a_size_the_patches_do_not_divide():
    model = tiny()
    with pytest.raises(ConfigError, match="multiple of the patch size 8, e.g. 48"):
        model.set_img_size(50)
    assert model.config.img_size == 32 and model.encoder.pos_embedding.shape == (1, 17, 32)


# ------------------------------------------------------------------------------------------ transformers


@pytest.fixture(scope="module")
def transformers():
    transformers = pytest.importorskip("transformers")
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    return transformers


@pytest.fixture(scope="module")
def hf_dirs(transformers, tmp_path_factory):
    """Tiny random transformers ViTs saved with save_pretrained: a classifier at either LayerNorm eps, and a
    ViTModel with and without its pooler."""
    dirs = {}
    for name, cls, extra in (
        ("clf-1e-12", "ViTForImageClassification", {"num_labels": 5, "layer_norm_eps": 1e-12}),
        ("clf-1e-6", "ViTForImageClassification", {"num_labels": 5, "layer_norm_eps": 1e-6}),
        ("model-pooler", "ViTModel", {"pooler_output_size": 24}),
        ("model-bare", "ViTModel", {}),
    ):
        torch.manual_seed(0)
        kwargs = {"add_pooling_layer": False} if name == "model-bare" else {}
        model = randomize(getattr(transformers, cls)(transformers.ViTConfig(**TINY_HF, **extra), **kwargs))
        dirs[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(dirs[name])
    return dirs


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
@pytest.mark.parametrize("name, eps", [("clf-1e-12", 1e-12), ("clf-1e-6", 1e-6)])
def test_transformers_classifier_loads_and_matches(transformers, hf_dirs, name, eps, impl):
    hf_model = transformers.ViTForImageClassification.from_pretrained(hf_dirs[name]).eval()
    model = bigmodels.load(hf_dirs[name])
    assert isinstance(model, VisionTransformer) and not model.training and model.info.task == "image_classification"
    assert model.config.num_classes == 5 and model.config.layer_norm_eps == eps
    assert model.encoder.layers.encoder_layer_1.ln_2.eps == eps and model.encoder.ln.eps == eps
    assert n_params(model) == n_params(hf_model)
    model = model_from_config("vit", dataclasses.replace(model.config, attn_impl=impl)).eval()
    model.load_state_dict(bigmodels.load(hf_dirs[name]).state_dict())
    x = images()
    with torch.no_grad():
        ours, theirs = model(x), hf_model(pixel_values=x).logits
    assert theirs.abs().max() > 0.1  # random weights give informative logits
    assert max_diff(ours, theirs) <= ATOL


def test_transformers_vit_model_pooler_is_pre_logits(transformers, hf_dirs):
    hf_model = transformers.ViTModel.from_pretrained(hf_dirs["model-pooler"]).eval()
    model = bigmodels.load(hf_dirs["model-pooler"])
    assert model.config.num_classes == 0 and model.config.representation_size == 24
    x = images()
    with torch.no_grad():
        r = hf_model(pixel_values=x)
        assert max_diff(model.forward_features(x), r.last_hidden_state) <= ATOL
        assert max_diff(model(x), r.pooler_output) <= ATOL  # (B, 24): dense + tanh on the class token

    bare = bigmodels.load(hf_dirs["model-bare"])
    assert bare.config.num_classes == 0 and bare.config.representation_size is None
    hf_bare = transformers.ViTModel.from_pretrained(hf_dirs["model-bare"], add_pooling_layer=False).eval()
    with torch.no_grad():
        assert max_diff(bare(x), hf_bare(pixel_values=x).last_hidden_state[:, 0]) <= ATOL


@pytest.mark.parametrize("kind", ["classifier", "pooler"])
def test_saved_hf_directory_loads_in_transformers_and_matches(transformers, tmp_path, kind):
    overrides = {"num_classes": 0, "representation_size": 24} if kind == "pooler" else {}
    model = randomize(tiny(**overrides))
    bigmodels.save(model, tmp_path, format="hf")
    config = json.loads((tmp_path / "config.json").read_text())
    arch = "ViTModel" if kind == "pooler" else "ViTForImageClassification"
    assert config["model_type"] == "vit" and config["architectures"] == [arch]
    assert config["layer_norm_eps"] == 1e-6
    hf_model, info = getattr(transformers, arch).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    x = images()
    with torch.no_grad():
        r = hf_model.eval()(pixel_values=x)
        assert max_diff(model(x), r.pooler_output if kind == "pooler" else r.logits) <= ATOL
    again = bigmodels.load(tmp_path)  # and back: the same model
    assert again.config == model.config
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_models_without_a_hugging_face_form(tmp_path):
    for overrides, match in (({"pool": "mean"}, "pools by 'mean'"), ({"representation_size": 24}, "pre_logits")):
        with pytest.raises(ConfigError, match=match):
            bigmodels.save(tiny(**overrides), tmp_path / "m", format="hf")
        assert not (tmp_path / "m" / "model.safetensors").exists()  # refused before writing anything


def test_unsupported_transformers_checkpoints(transformers, hf_dirs, tmp_path):
    import shutil

    for change, match in (({"architectures": ["ViTForMaskedImageModeling"]}, "ViTForMaskedImageModeling"),
                          ({"hidden_act": "gelu_new"}, "hidden_act='gelu_new'"),
                          ({"qkv_bias": False}, "qkv_bias"),
                          ({"image_size": [32, 48]}, "not square")):
        d = tmp_path / match.replace("'", "")
        shutil.copytree(hf_dirs["clf-1e-6"], d)
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=match):
            bigmodels.load(d)
