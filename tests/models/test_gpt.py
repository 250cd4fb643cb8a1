"""GPT: parity with Hugging Face GPT-2 both ways, the KV cache, padding, parameter counts, errors, training."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import bigmodels
from bigmodels import create_model
from bigmodels.config import resolve_run_config
from bigmodels.errors import CheckpointError, ConfigError, DataError
from bigmodels.infer.generate import generate
from bigmodels.registry import model_from_config

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model  # noqa: E402

TINY_HF = {"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": 100, "n_positions": 64}
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": 100, "block_size": 64}
PAD = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 10])  # row 0 is left-padded by 3


def hf_positions(mask: torch.Tensor) -> torch.Tensor:
    """Hugging Face generate()'s position ids for a left-padded mask (its forward alone counts 0..T-1)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random GPT2LMHeadModel written by transformers' save_pretrained."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**TINY_HF)).eval()
    path = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(path)
    return path, model


@pytest.fixture
def ids():
    return torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(1))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------------------------ Hugging Face parity


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_loading_a_hf_checkpoint_gives_the_same_logits(hf_dir, ids, impl):
    path, hf = hf_dir
    model = bigmodels.load(path)
    assert type(model).__name__ == "GPT" and model.info.family == "gpt" and model.info.task == "language_modeling"
    assert model.lm_head.weight is model.wte.weight
    if impl != model.config.attn_impl:
        state = model.state_dict()
        model = model_from_config("gpt", dataclasses.replace(model.config, attn_impl=impl)).eval()
        model.load_state_dict(state)
    with torch.no_grad():
        assert max_diff(model(ids), hf(ids).logits) <= 1e-5
        # left padding: the same logits on the real tokens, with Hugging Face's position convention
        ours = model(ids, attention_mask=PAD)
        theirs = hf(ids, attention_mask=PAD, position_ids=hf_positions(PAD)).logits
    real = PAD.bool()
    assert max_diff(ours[real], theirs[real]) <= 1e-5


def test_a_left_padded_row_equals_the_same_prompt_unpadded(hf_dir, ids):
    model = bigmodels.load(hf_dir[0])
    with torch.no_grad():
        padded = model(ids, attention_mask=PAD)[0, 3:]
        alone = model(ids[:1, 3:])[0]
    assert max_diff(padded, alone) <= 1e-5


@pytest.mark.parametrize("overrides", [{}, {"tie_weights": False, "activation": "gelu", "mlp_ratio": 3.0}],
                         ids=["gpt2", "untied_gelu_mlp3"])
def test_saved_in_hf_format_loads_in_transformers_with_the_same_logits(tmp_path, ids, overrides):
    torch.manual_seed(0)
    model = create_model("gpt2", **TINY, **overrides).eval()
    bigmodels.save(model, tmp_path, format="hf")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert max_diff(hf(ids).logits, model(ids)) <= 1e-5
    # and back: the directory round-trips into bigmodels with the same config
    again = bigmodels.load(tmp_path)
    assert again.config == model.config
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))


def test_gpt2model_checkpoint_without_prefix_and_old_mask_buffers_load(tmp_path, ids):
    torch.manual_seed(0)
    base = GPT2Model(GPT2Config(**TINY_HF)).eval()
    base.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    assert not any(k.startswith("transformer.") for k in state)
    causal = torch.ones(1, 1, 64, 64).tril()
    state.update({f"h.{i}.attn.bias": causal.clone() for i in range(2)})  # what pre-4.x checkpoints carry
    state.update({f"h.{i}.attn.masked_bias": torch.tensor(-1e4) for i in range(2)})
    save_file({k: v.contiguous() for k, v in state.items()}, weights)
    model = bigmodels.load(tmp_path)
    with torch.no_grad():
        expected = base(ids).last_hidden_state @ base.wte.weight.T  # tied output layer
        assert max_diff(model(ids), expected) <= 1e-5


UNSUPPORTED = [("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True),
               ("add_cross_attention", True), ("activation_function", "relu"),
               ("architectures", ["GPT2ForQuestionAnswering"])]


@pytest.mark.parametrize("option,value", UNSUPPORTED)
def test_unsupported_hf_options_are_checkpoint_errors(hf_dir, tmp_path, option, value):
    path, _ = hf_dir
    config = json.loads((path / "config.json").read_text())
    config[option] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=option if option != "architectures" else "GPT2ForQuestionAnswering"):
        bigmodels.load(tmp_path)


@pytest.mark.parametrize("overrides", [{"position": "rotary"}, {"bias": False}])
def test_models_gpt2_cannot_express_refuse_the_hf_format(tmp_path, overrides):
    key = next(iter(overrides))
    with pytest.raises(CheckpointError, match=f"{key}=.*format='bigmodels'"):
        bigmodels.save(create_model("gpt_mini", **overrides), tmp_path, format="hf")


# ------------------------------------------------------------------------------------------ the model itself

GPT2_PARAMS = {  # Hugging Face's counts (tied output layer)
    "gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name", list(GPT2_PARAMS))
def test_gpt2_parameter_counts_match_hugging_face(name):
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == GPT2_PARAMS[name]


def test_gpt_char_is_nanogpts_shakespeare_model():
    with torch.device("meta"):
        model = create_model("gpt_char")
    # nanoGPT reports 10.65M: it leaves the position table (256 x 384) out of its count
    assert sum(p.numel() for p in model.parameters()) - 256 * 384 == 10_646_784
    assert model.config.dropout == 0.2 and not model.config.bias


def test_gpt2_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    model = create_model("gpt2", n_layer=8, n_head=4, n_embd=256, vocab_size=1000, block_size=64)
    assert model.lm_head.weight is model.wte.weight
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for proj in (model.blocks[3].attn.out_proj.weight, model.blocks[3].mlp.proj.weight):
        assert proj.std().item() == pytest.approx(0.02 / 4, rel=0.05)  # 1 / sqrt(2 * 8 layers)
    assert not model.blocks[0].mlp.fc.bias.any()


@pytest.mark.parametrize("static", [False, True], ids=["kv_cache", "static_kv_cache"])
@pytest.mark.parametrize("position", ["learned", "rotary", "sinusoidal"])
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "left_padded"])
def test_kv_cache_decoding_equals_the_full_forward(position, padded, static, ids):
    torch.manual_seed(0)
    model = create_model("gpt_mini", position=position, vocab_size=100).eval()
    mask = PAD if padded else None
    if static:  # the mask covers the whole buffer (16 slots): the prompt's padding 0, every later slot 1
        cache = model.new_cache(batch_size=2, max_length=16, static=True)
        full_mask = None if mask is None else torch.cat([mask, torch.ones(2, 6, dtype=torch.long)], 1)
        prefix = lambda t: full_mask  # noqa: E731
    else:
        cache = model.new_cache()
        prefix = lambda t: None if mask is None else mask[:, :t]  # noqa: E731
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        steps = [model(ids[:, :6], attention_mask=prefix(6), cache=cache)]
        for t in range(6, 10):
            steps.append(model(ids[:, t:t + 1], attention_mask=prefix(t + 1), cache=cache))
    assert len(cache) == 10
    real = PAD.bool() if padded else torch.ones_like(PAD, dtype=torch.bool)
    assert max_diff(torch.cat(steps, 1)[real], full[real]) <= 1e-5


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "left_padded"])
def test_static_cache_on_the_cpu_attends_over_the_written_slots_only(padded, ids, monkeypatch):
    """Eager on the CPU, attention reads the slots written so far (views, no mask for a dense batch) instead of
    the whole buffer under a mask; the logits are those of the whole-buffer path (what compiled steps use)."""
    from bigmodels.nn.attention import StaticKVCache

    torch.manual_seed(0)
    model = create_model("gpt_mini", vocab_size=100).eval()
    mask = None if not padded else torch.cat([PAD, torch.ones(2, 6, dtype=torch.long)], 1)
    seen: list[int] = []
    update = StaticKVCache.update

    def recording(self, layer, k, v):
        keys, values = update(self, layer, k, v)
        seen.append(keys.size(-2))
        return keys, values

    def decode() -> torch.Tensor:
        cache = model.new_cache(batch_size=2, max_length=16, static=True)
        with torch.no_grad():
            steps = [model(ids[:, :6], attention_mask=mask, cache=cache)]
            steps += [model(ids[:, t:t + 1], attention_mask=mask, cache=cache) for t in range(6, 10)]
        return torch.cat(steps, 1)

    monkeypatch.setattr(StaticKVCache, "update", recording)
    narrowed = decode()
    layers = model.config.n_layer
    assert seen == [n for n in (6, 7, 8, 9, 10) for _ in range(layers)]  # the written slots, not all 16
    seen.clear()
    monkeypatch.setattr(StaticKVCache, "narrow", lambda self, q_len: setattr(self, "visible", None))
    whole = decode()
    assert seen == [16] * (5 * layers)
    real = PAD.bool() if padded else slice(None)  # the padded positions' outputs are never read
    assert max_diff(narrowed[real], whole[real]) <= 1e-5


def test_static_cache_keeps_its_buffers_and_checks_its_inputs():
    model = create_model("gpt_mini", vocab_size=100, block_size=16).eval()
    cache = model.new_cache(batch_size=2, max_length=8, static=True)
    buffers = [t.data_ptr() for t in (*cache.keys, *cache.values)]
    with torch.no_grad():
        model(torch.zeros(2, 3, dtype=torch.long), cache=cache)
        model(torch.zeros(2, 1, dtype=torch.long), cache=cache)
    assert len(cache) == 4 and [t.data_ptr() for t in (*cache.keys, *cache.values)] == buffers
    assert cache.keys[0][:, :, 4:].abs().max() == 0  # slots past the position are untouched
    cache.reorder(torch.tensor([1, 0]))
    assert [t.data_ptr() for t in (*cache.keys, *cache.values)] == buffers
    cache.reset()
    assert len(cache) == 0
    with pytest.raises(DataError, match=r"holds 2 rows but ids have 3.*batch_size=3"):
        model(torch.zeros(3, 1, dtype=torch.long), cache=cache)
    with pytest.raises(DataError, match=r"whole buffer: \(batch, max_length\) = \(2, 8\), got \(2, 3\)"):
        model(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 3), cache=cache)
    with pytest.raises(DataError, match="9 new tokens do not fit the static cache of 8"):
        model(torch.zeros(2, 9, dtype=torch.long), cache=cache)
    with pytest.raises(ConfigError, match=r"max_length=17.*1\.\.16"):
        model.new_cache(batch_size=1, max_length=17, static=True)
    with pytest.raises(ConfigError, match="batch_size"):
        model.new_cache(static=True)
    with pytest.raises(ConfigError, match="static=True"):
        model.new_cache(batch_size=2)
    assert model.new_cache(batch_size=1, static=True, dtype=torch.bfloat16).keys[0].shape == (1, 4, 16, 32)


def test_a_padded_vocabulary_gives_the_unpadded_models_logits_and_never_a_padded_token(ids):
    torch.manual_seed(0)
    plain = create_model("gpt_mini", vocab_size=100, tie_weights=False).eval()
    padded = create_model("gpt_mini", vocab_size=100, tie_weights=False, pad_vocab_multiple=64).eval()
    assert padded.config.padded_vocab_size == 128 and padded.wte.weight.shape == (128, 128)
    state = plain.state_dict()
    for key in ("wte.weight", "lm_head.weight"):  # the same weights, plus rows that would win every argmax
        state[key] = torch.cat([state[key], torch.full((28, 128), 5.0)])
    padded.load_state_dict(state)
    with torch.no_grad():
        assert padded(ids).shape == (2, 10, 100)
        assert max_diff(padded(ids, attention_mask=PAD), plain(ids, attention_mask=PAD)) <= 1e-6
        assert max_diff(padded.lm_head(padded.forward_hidden(ids))[..., :100], plain(ids)) <= 1e-6
    for cache in ("dynamic", "static"):
        out = generate(padded, ids, max_new_tokens=8, temperature=0, cache=cache)
        assert out.max() < 100 and torch.equal(out, generate(plain, ids, max_new_tokens=8, temperature=0))


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_a_padded_vocabulary_round_trips_hugging_face_weights_exactly(tmp_path, ids, tie):
    from bigmodels.interop.hf_gpt2 import state_from_hf

    torch.manual_seed(0)
    model = create_model("gpt2", **TINY, tie_weights=tie, pad_vocab_multiple=64).eval()
    bigmodels.save(model, tmp_path, format="hf")
    state = load_file(tmp_path / "model.safetensors")
    assert state["transformer.wte.weight"].shape == (100, 32)  # the padded rows stay home
    assert torch.equal(state["transformer.wte.weight"], model.wte.weight[:100])
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert max_diff(hf(ids).logits, model(ids)) <= 1e-5
    # and back into a padded model: zero rows appended, the real rows bit for bit
    again = model_from_config("gpt", model.config).eval()
    again.load_state_dict(state_from_hf(state, model.config), strict=True)
    assert torch.equal(again.wte.weight[:100], model.wte.weight[:100]) and again.wte.weight[100:].abs().max() == 0
    assert torch.equal(again.lm_head.weight[:100], model.lm_head.weight[:100])
    assert (again.lm_head.weight is again.wte.weight) == tie
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))
        assert max_diff(bigmodels.load(tmp_path)(ids), again(ids)) <= 1e-6  # Hugging Face's config: unpadded


def test_too_long_input_is_a_data_error_naming_both_lengths():
    model = create_model("gpt_mini", vocab_size=100, block_size=16)
    with pytest.raises(DataError, match=r"17 tokens.*block_size\) is 16.*truncate the prompt"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = model.new_cache()
    model(torch.zeros(1, 16, dtype=torch.long), cache=cache)
    with pytest.raises(DataError, match="16 cached"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    with pytest.raises(DataError, match="token ids"):
        model(torch.zeros(1, 4))
    with pytest.raises(DataError, match="attention_mask"):
        model(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 3))


BAD_CONFIGS = [({"n_embd": 30, "n_head": 4}, "n_head"), ({"position": "alibi"}, "position"),
               ({"activation": "relu"}, "activation"), ({"attn_impl": "flash"}, "attn_impl"),
               ({"n_layer": 0}, "n_layer"), ({"mlp_ratio": 0.3}, "mlp_ratio"),
               ({"pad_vocab_multiple": 0}, "pad_vocab_multiple")]


@pytest.mark.parametrize("overrides,key", BAD_CONFIGS)
def test_invalid_configs_are_config_errors(overrides, key):
    with pytest.raises(ConfigError, match=key):
        create_model("gpt_mini", **overrides)


def test_training_a_tiny_gpt_lowers_the_loss(tmp_path):
    cfg = resolve_run_config(None, [
        "model=gpt_mini", "model.n_layer=2", "model.n_head=2", "model.n_embd=64", "data.name=pydoc",
        "data.block_size=64", "data.batch_size=16", "data.val_fraction=0.01", "optim.lr=3e-3",
        "sched.name=constant", "train.steps=40", "train.log_every=1", "train.device=cpu", "train.progress=false",
        f"train.out_dir={tmp_path}",
    ])
    from bigmodels.train import Trainer

    with Trainer(cfg) as trainer:
        summary = trainer.fit()
    assert summary["status"] == "completed"
    losses = [r["loss"] for r in trainer.history if r["split"] == "train"]
    assert len(losses) == 40
    uniform = math.log(trainer.model.config.vocab_size)  # an untrained model's loss (about 4.6)
    assert losses[0] > uniform - 0.3
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # measured: 4.1 -> 3.2
    assert summary["val"]["loss"] < uniform - 1.0  # measured: 3.19
    model = bigmodels.load(tmp_path)
    assert type(model).__name__ == "GPT" and model.config.vocab_size == trainer.model.config.vocab_size


def test_logits_to_keep_gives_the_last_positions_logits(ids):
    model = create_model("gpt2", **TINY).eval()
    with torch.no_grad():
        full = model(ids)
        assert torch.allclose(model(ids, logits_to_keep=1), full[:, -1:], atol=1e-6)
        assert model(ids, logits_to_keep=3).shape == (2, 3, 100)
        cache = model.new_cache()
        model(ids[:, :6], cache=cache)
        assert torch.allclose(model(ids[:, 6:], cache=cache, logits_to_keep=1), full[:, -1:], atol=1e-5)
    for bad in (-1, 1.5):
        with pytest.raises(ConfigError, match=f"logits_to_keep={bad!r} must be a whole number >= 0"):
            model(ids, logits_to_keep=bad)
