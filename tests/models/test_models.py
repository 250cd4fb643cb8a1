"""The registry-wide smoke test over every model, plus the model contract and family specifics."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import bigmodels
from bigmodels import create_model, list_models
from bigmodels.config import to_dict
from bigmodels.errors import CheckpointError, ConfigError, DataError, ModelNotFoundError
from bigmodels.models._contract import call, example_inputs
from bigmodels.registry import TASKS
from bigmodels.testing import assert_conforms, tiny_model

B, T = 2, 16  # batch and sequence length of the smoke inputs (example_inputs' defaults)


def build(name: str, **overrides) -> torch.nn.Module:
    return tiny_model(name, **overrides)


def make_input(model: torch.nn.Module, task: str, seed: int = 0):
    """A batch the model accepts, from its config (the contract's example_inputs)."""
    return example_inputs(model, B, seq_len=T, seed=seed)


def expected_shape(model: torch.nn.Module, task: str) -> tuple[int, ...]:
    """The shape of the model's output (of its first output, for BERT pretraining's (MLM, NSP) pair)."""
    cfg = model.config
    if task in ("language_modeling", "masked_language_modeling"):
        return (B, T, cfg.vocab_size)
    if task == "translation":
        return (B, T, cfg.tgt_vocab_size)
    if task == "sentence_embedding":  # a vector per text, or per token for a bare encoder
        return (B, T, cfg.hidden_size) if getattr(cfg, "head", None) == "encoder" else (B, cfg.hidden_size)
    if task == "token_classification":
        return (B, T, cfg.num_labels)
    if task == "question_answering":
        return (B, T, 2)  # start and end logits
    return (B, getattr(cfg, "num_labels", None) or cfg.num_classes)


def targets(logits: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, logits.shape[-1], logits.shape[:-1], generator=g)


ALL = list_models()


def test_registry_is_populated_and_tasks_are_known():
    assert len(ALL) >= 12
    assert ALL == sorted(ALL)
    for name in ALL:
        spec = bigmodels.get_spec(name)
        assert spec.name == name and spec.task in TASKS


def test_list_models_pattern_and_task_filters():
    assert list_models("lstm*") == ["lstm_classifier", "lstm_keras"]
    assert list_models("char_*") == ["char_gru", "char_lstm", "char_rnn"]
    assert {"char_gru", "char_lstm", "char_rnn"} <= set(list_models(task="language_modeling"))
    assert list_models("cnn*", task="language_modeling") == []
    by_task = {task: list_models(task=task) for task in TASKS}
    for task, names in by_task.items():
        assert all(bigmodels.get_spec(n).task == task for n in names)
    assert sorted(n for names in by_task.values() for n in names) == ALL


# ------------------------------------------------------------------------------------------ smoke test


def as_tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("name", ALL)
def test_smoke_every_model(name, tmp_path):
    torch.manual_seed(0)
    spec = bigmodels.get_spec(name)
    model = build(name)
    assert (model.info.name, model.info.family, model.info.task) == (name, spec.family, spec.task)
    assert model.info.source == "registry" and model.info.path is None
    assert_conforms(model)  # the written contract (tests/models/test_contract.py checks it in detail)
    x = make_input(model, spec.task)

    # forward + backward in training mode
    model.train()
    outputs = as_tuple(call(model, x))  # BERT pretraining returns (MLM logits, NSP logits)
    assert tuple(outputs[0].shape) == expected_shape(model, spec.task)
    assert all(torch.isfinite(o).all() for o in outputs)
    loss = sum(F.cross_entropy(o.flatten(0, -2), targets(o).flatten()) for o in outputs)
    assert torch.isfinite(loss)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"{name}: parameters unused by forward: {no_grad}"
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradients in {bad}"
    assert any(p.grad.abs().sum() > 0 for _, p in trainable)

    # save / load round trip: same config, same outputs in eval mode
    model.eval()
    with torch.no_grad():
        before = call(model, x)
    bigmodels.save(model, tmp_path / name)
    loaded = bigmodels.load(tmp_path / name)
    assert type(loaded) is type(model)
    assert type(loaded.config) is type(model.config)
    assert to_dict(loaded.config) == to_dict(model.config)
    assert (loaded.info.name, loaded.info.family, loaded.info.task) == (name, spec.family, spec.task)
    assert loaded.info.source == "bigmodels" and loaded.info.path == str(tmp_path / name)
    loaded.eval()
    with torch.no_grad():
        after = call(loaded, x)
    assert all(torch.equal(a, b) for a, b in zip(as_tuple(before), as_tuple(after), strict=True))
    # the state dicts agree key for key (buffers such as batch-norm statistics included)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)


@pytest.mark.parametrize("name", ALL)
def test_create_model_does_not_share_config_with_the_preset(name):
    preset = copy.deepcopy(bigmodels.get_spec(name).config)
    model = build(name)
    assert model.config is not bigmodels.get_spec(name).config
    first = dataclasses.fields(model.config)[0].name
    setattr(model.config, first, "changed")  # mutating a model's config must not reach the registry
    if hasattr(model, "reset_classifier") and model.info.task != "language_modeling":
        model.reset_classifier(3)
    assert bigmodels.get_spec(name).config == preset


def test_overrides_do_not_leak_into_the_preset():
    m = create_model("mlp_small", hidden=(32,), num_classes=3)
    assert m.config.hidden == (32,) and m.config.num_classes == 3
    assert create_model("mlp_small").config.hidden == (256, 256)


# ------------------------------------------------------------------------------------------ the Keras presets


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cnn_keras_parameter_count():
    # Keras: Conv2D(32, 3x3) on 64x64x3: 3*3*3*32 + 32 = 896; valid conv -> 62x62x32, MaxPool(2) -> 31x31x32
    # Flatten: 31*31*32 = 30,752; Dense(64): 30,752*64 + 64 = 1,968,192; Dense(10): 64*10 + 10 = 650
    # total 896 + 1,968,192 + 650 = 1,969,738
    assert n_params(create_model("cnn_keras")) == 1_969_738


def test_lstm_keras_parameter_count():
    # Keras LSTM(50) on 28 features: 4 gates * 50 * (28 inputs + 50 recurrent + 1 bias) = 15,800
    # Dense(10): 50*10 + 10 = 510; total 16,310 (torch's second bias b_hh is dropped: keras_bias=True)
    assert n_params(create_model("lstm_keras")) == 16_310
    # without keras_bias torch adds 4*50 more (b_hh)
    assert n_params(create_model("lstm_keras", keras_bias=False)) == 16_310 + 4 * 50


def test_lstm_keras_has_no_bias_hh_parameters_and_survives_dtype_and_deepcopy():
    torch.manual_seed(0)
    model = create_model("lstm_keras").eval()
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "bias_hh" in n]
    assert [n for n in names if "bias_ih" in n] == ["rnn.bias_ih_l0"]
    x = torch.randn(B, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)

    double = copy.deepcopy(model).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in double.parameters())
    assert double.rnn.bias_hh_l0.dtype == torch.float64 and not double.rnn.bias_hh_l0.any()
    with torch.no_grad():
        out64 = double(x.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), ref, rtol=1e-4, atol=1e-5)

    clone = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(clone(x), ref)
        model.rnn.weight_ih_l0.add_(1.0)  # the copy's recurrence must use its own weights
        assert torch.equal(clone(x), ref)
        assert not torch.equal(model(x), ref)

    # a backward step still trains only the single bias
    clone.train()
    F.cross_entropy(clone(x), torch.tensor([1, 2])).backward()
    assert clone.rnn.bias_ih_l0.grad is not None and torch.isfinite(clone.rnn.bias_ih_l0.grad).all()


def test_keras_bias_only_for_lstm():
    with pytest.raises(ConfigError, match="keras_bias"):
        create_model("gru_classifier", keras_bias=True)


# ------------------------------------------------------------------------------------------ vision contract

VISION = list_models("mlp*") + list_models("cnn*")
RNN_CLASSIFIERS = [n for n in list_models(task="image_classification") if bigmodels.get_spec(n).family == "rnn"]


@pytest.mark.parametrize("name", VISION + RNN_CLASSIFIERS)
def test_reset_classifier_changes_output_width(name, tmp_path):
    torch.manual_seed(0)
    model = build(name)
    model.reset_classifier(3)
    assert model.config.num_classes == 3
    x = make_input(model, "image_classification")
    out = model(x)
    assert out.shape == (B, 3)
    F.cross_entropy(out, torch.tensor([0, 2])).backward()
    # the new head is saved and rebuilt from the config
    bigmodels.save(model, tmp_path / "m")
    loaded = bigmodels.load(tmp_path / "m").eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("name", ["mlp_small", "cnn_small"])
def test_reset_classifier_zero_round_trips(name, tmp_path):
    model = build(name).eval()
    model.reset_classifier(0)
    x = make_input(model, "image_classification")
    with torch.no_grad():
        feats = model(x)
    assert feats.shape == (B, model.num_features if name.startswith("mlp") else model.head.num_features)
    bigmodels.save(model, tmp_path / "m")
    loaded = bigmodels.load(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), feats)


@pytest.mark.parametrize("name", VISION)
def test_features_and_head_compose_to_forward(name):
    torch.manual_seed(0)
    model = build(name).eval()
    x = make_input(model, "image_classification")
    with torch.no_grad():
        feats = model.forward_features(x)
        assert torch.equal(model.forward_head(feats), model(x))
    assert feats.shape[0] == B


def test_cnn_forward_intermediates_one_map_per_stage():
    torch.manual_seed(0)
    model = create_model("cnn_small", channels=(8, 16, 24)).eval()  # 8x8, same padding, pool 2 per stage
    x = make_input(model, "image_classification")
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        assert [tuple(m.shape) for m in maps] == [(B, 8, 4, 4), (B, 16, 2, 2), (B, 24, 1, 1)]
        assert torch.equal(maps[-1], model.forward_features(x))


def test_cnn_global_pool_head_width():
    model = create_model("cnn_small", global_pool=True, hidden=())
    assert model.head.fc.in_features == 64 == model.num_features
    assert model(make_input(model, "image_classification")).shape == (B, 10)


def test_building_a_cnn_leaves_batchnorm_statistics_fresh():
    model = create_model("cnn_small")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert int(bn.num_batches_tracked) == 0
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


@pytest.mark.parametrize(
    "overrides", [{"img_size": 2}, {"img_size": 3}, {"channels": (8, 8, 8, 8)}], ids=["img2", "img3", "4stages"]
)
def test_cnn_too_small_image_is_a_config_error(overrides):
    base = "cnn_keras" if "img_size" in overrides else "cnn_small"
    with pytest.raises(ConfigError, match="img_size"):
        create_model(base, **overrides)


# ------------------------------------------------------------------------------------------ input checks


def test_wrong_channel_count_names_expected_shape():
    model = create_model("cnn_keras")
    with pytest.raises(DataError) as info:
        model(torch.zeros(1, 1, 64, 64))
    assert "(batch, 3, H, W)" in str(info.value) and "(1, 1, 64, 64)" in str(info.value)
    with pytest.raises(DataError, match=r"\(batch, 1, H, W\)"):
        create_model("mlp_small")(torch.zeros(1, 3, 8, 8))
    with pytest.raises(DataError, match=r"\(batch, 3, H, W\)"):
        model(torch.zeros(3, 64, 64))  # a single image without its batch dimension


def test_wrong_image_size_names_expected_size():
    with pytest.raises(DataError) as info:
        create_model("cnn_keras")(torch.zeros(1, 3, 32, 32))
    assert "64x64" in str(info.value) and "32x32" in str(info.value)
    with pytest.raises(DataError, match="8x8"):
        create_model("mlp_small")(torch.zeros(1, 1, 28, 28))


def test_rnn_input_checks():
    with pytest.raises(DataError, match=r"\(batch, time, 28\)"):
        create_model("lstm_keras")(torch.zeros(1, 1, 28, 14))
    with pytest.raises(DataError, match="token ids"):
        create_model("char_rnn", hidden_size=8, embed_dim=8)(torch.zeros(1, 4))


# ------------------------------------------------------------------------------------------ registry errors


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        create_model("cnn_keras", bogus=1)
    msg = str(info.value)
    assert "bogus" in msg and "cnn_keras" in msg
    for f in dataclasses.fields(bigmodels.get_spec("cnn_keras").config):
        assert f.name in msg


def test_wrong_config_type_is_config_error():
    with pytest.raises(ConfigError, match="whole number"):
        create_model("mlp_small", num_classes="ten")
    with pytest.raises(ConfigError, match="cell"):
        create_model("char_rnn", cell="transformer")


def test_unknown_model_suggests_close_name():
    with pytest.raises(ModelNotFoundError) as info:
        create_model("cnn_kerass")
    assert "'cnn_keras'" in str(info.value) and "cnn_kerass" in str(info.value)
    assert isinstance(info.value, LookupError)


# ------------------------------------------------------------------------------------------ language models


def tiny_lm(cell: str = "gru", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    args = {"vocab_size": 20, "embed_dim": 16, "hidden_size": 32, "num_layers": 2, **kw}
    return create_model(f"char_{cell}", **args).eval()


def test_language_models_decode_elsewhere_and_classifiers_have_no_lm_head():
    """Decoding (greedy, sampling, stops) is tested in tests/infer/test_generate.py; the cache in the contract test."""
    model = tiny_lm()
    assert not hasattr(model, "generate")  # decoding lives in bigmodels.infer, not in the model
    with pytest.raises(ConfigError, match="language model"):
        model.reset_classifier(3)


def test_tied_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("char_lstm", tie_weights=True, embed_dim=32, hidden_size=32, vocab_size=40).eval()
    assert model.fc.weight is model.embed.weight
    untied = create_model("char_lstm", embed_dim=32, hidden_size=32, vocab_size=40)
    assert n_params(untied) - n_params(model) == 40 * 32  # the shared table counts once
    x = torch.randint(0, 40, (B, T))
    with torch.no_grad():
        ref = model(x)
    bigmodels.save(model, tmp_path / "tied")
    loaded = bigmodels.load(tmp_path / "tied").eval()
    assert loaded.config.tie_weights is True
    assert loaded.fc.weight is loaded.embed.weight
    assert loaded.fc.weight.data_ptr() == loaded.embed.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)
    # the tie survives training: one step moves both views together
    loaded.train()
    opt = torch.optim.SGD(loaded.parameters(), lr=0.1)
    F.cross_entropy(loaded(x).flatten(0, 1), x.flatten()).backward()
    opt.step()
    assert loaded.fc.weight is loaded.embed.weight
    assert not torch.equal(loaded.embed.weight, model.embed.weight)


def test_tie_weights_needs_matching_widths():
    with pytest.raises(ConfigError, match="tie_weights"):
        create_model("char_lstm", tie_weights=True, embed_dim=16, hidden_size=32)
    with pytest.raises(ConfigError, match="tie_weights"):
        create_model("lstm_classifier", tie_weights=True)


def test_load_rejects_weights_of_another_model(tmp_path):
    bigmodels.save(create_model("mlp_small", hidden=(32,)), tmp_path / "a")
    bigmodels.save(create_model("mlp_small", hidden=(64,)), tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not match"):
        bigmodels.load(tmp_path / "a")
