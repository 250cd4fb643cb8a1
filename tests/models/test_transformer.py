"""The encoder-decoder Transformer: Marian parity both ways, decoding against transformers' generate, the
cache, the two norm placements, attention implementations, configs and input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bigmodels
from bigmodels.errors import ConfigError, DataError
from bigmodels.infer.seq2seq import Seq2SeqGenerationConfig, beam_search, greedy_decode, translate
from bigmodels.models.transformer import Transformer, TransformerConfig, shift_right
from bigmodels.registry import model_from_config

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_NEW = 16
# the tiny Marian of the parity tests: pad = decoder start = 63, eos = 0 (OPUS-MT's layout)
MARIAN = dict(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
              decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
              pad_token_id=63, eos_token_id=0, decoder_start_token_id=63)
# ours at the same size, with this project's special ids (pad 0, bos = start 1, eos 2)
TINY = dict(src_vocab_size=64, tgt_vocab_size=64, d_model=32, num_encoder_layers=2, num_decoder_layers=2,
            num_heads=2, d_ff=64, max_position_embeddings=64, dropout=0.0)


def padded_sources(pad: int, lengths=(9, 7, 5, 9, 3, 8), low: int = 3, high: int = 63, seed: int = 1):
    """A right-padded source batch (B, S) and its attention mask (B, S)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, high, (len(lengths), max(lengths)), generator=g)
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad), mask


def hf_outputs(sequences: torch.Tensor, eos: int) -> list[list[int]]:
    """transformers' generate output -> our translate's: the start token and everything from the eos on dropped."""
    return [row[:row.index(eos)] if eos in row else row for row in sequences[:, 1:].tolist()]


def reversal_batch(g: torch.Generator, batch: int = 32):
    """The toy task the `trained` model learns: the target is the source reversed, then eos (2)."""
    lengths = torch.randint(2, 9, (batch,), generator=g)
    S = int(lengths.max())
    mask = (torch.arange(S)[None] < lengths[:, None]).long()
    src = torch.randint(3, 64, (batch, S), generator=g).masked_fill(mask == 0, 0)
    labels = torch.full((batch, S + 1), -100)
    for i, n in enumerate(lengths.tolist()):
        labels[i, :n] = src[i, :n].flip(0)
        labels[i, n] = 2
    return src, mask, labels


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    """A tiny random transformers MarianMTModel (with a random final_logits_bias), saved with save_pretrained."""
    torch.manual_seed(0)
    hf = transformers.MarianMTModel(transformers.MarianConfig(**MARIAN)).eval()
    with torch.no_grad():
        hf.final_logits_bias.normal_(std=0.1)  # zero by default: make its mapping matter
    hf.generation_config.forced_eos_token_id = None  # Marian forces eos at the limit; translate does not
    directory = tmp_path_factory.mktemp("marian")
    hf.save_pretrained(directory)
    return hf, bigmodels.load(directory), MARIAN["pad_token_id"], MARIAN["eos_token_id"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Ours, briefly trained to reverse sequences (so its outputs end at varied lengths), and its Hugging Face
    export loaded by transformers."""
    torch.manual_seed(0)
    model = model_from_config("transformer", TransformerConfig(**TINY))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        src, mask, labels = reversal_batch(g)
        logits = model(src, mask, shift_right(labels, 1, 0))
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    directory = tmp_path_factory.mktemp("exported")
    bigmodels.save(model, directory, format="hf")
    hf = transformers.MarianMTModel.from_pretrained(directory).eval()
    return hf, model, 0, 2


@pytest.fixture(params=["marian", "trained"])
def pair(request):
    """(transformers model, ours with the same weights, pad id, eos id)."""
    return request.getfixturevalue(request.param)


# ------------------------------------------------------------------------------------------ Marian checkpoints


SEPARATE = {"share_encoder_decoder_embeddings": False, "decoder_vocab_size": 48, "pad_token_id": 47,
            "decoder_start_token_id": 47}


@pytest.mark.parametrize("variant", [
    {},
    {**SEPARATE, "tie_word_embeddings": False, "activation_function": "swish", "scale_embedding": True},
    {**SEPARATE, "activation_function": "relu"},  # the output layer tied to the decoder's own embedding
], ids=["shared_tied", "separate_untied_swish", "separate_tied_relu"])
def test_marian_checkpoint_loads_with_the_same_logits(variant, tmp_path):
    torch.manual_seed(0)
    hf = transformers.MarianMTModel(transformers.MarianConfig(**{**MARIAN, **variant})).eval()
    with torch.no_grad():
        hf.final_logits_bias.normal_(std=0.1)
    hf.save_pretrained(tmp_path)
    model = bigmodels.load(tmp_path)
    assert isinstance(model, Transformer) and model.info.task == "translation" and not model.training
    assert model.config.share_embeddings == variant.get("share_encoder_decoder_embeddings", True)
    pad = hf.config.pad_token_id
    src, mask = padded_sources(pad)
    dec = torch.randint(1, 40, (src.size(0), 6), generator=torch.Generator().manual_seed(2))
    dec[:, 0] = hf.config.decoder_start_token_id
    dec_mask = torch.ones_like(dec)
    dec_mask[1, 4:] = 0  # a padded target row too
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
        ours = model(src, mask, dec, dec_mask)
    assert ours.shape == ref.shape == (src.size(0), 6, hf.config.decoder_vocab_size)
    assert (ours - ref).abs().max() <= 1e-5


def test_a_marian_model_without_its_output_layer_loads_tied(tmp_path):
    torch.manual_seed(0)
    hf = transformers.MarianModel(transformers.MarianConfig(**MARIAN)).eval()  # no lm_head, no final_logits_bias
    hf.save_pretrained(tmp_path)
    model = bigmodels.load(tmp_path)
    assert not model.config.final_logits_bias and model.lm_head.weight is model.shared.weight
    src, mask = padded_sources(63)
    dec = torch.tensor([[63, 5, 6, 7]]).expand(src.size(0), -1)
    with torch.no_grad():
        hidden = hf(input_ids=src, attention_mask=mask, decoder_input_ids=dec).last_hidden_state  # (B, T, D)
        assert (model(src, mask, dec) - hidden @ hf.shared.weight.T).abs().max() <= 1e-5


def test_export_to_transformers_gives_the_same_logits_and_loads_back(trained, tmp_path):
    hf, model, pad, _ = trained  # exported by the fixture with bigmodels.save(format="hf")
    src, mask = padded_sources(pad)
    dec = shift_right(torch.randint(3, 64, (src.size(0), 7), generator=torch.Generator().manual_seed(3)), 1, 0)
    with torch.no_grad():
        assert (hf(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
                - model(src, mask, dec)).abs().max() <= 1e-5
    bigmodels.save(model, tmp_path, format="hf")
    back = bigmodels.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(back(src, mask, dec), model(src, mask, dec))


def test_export_of_separate_untied_vocabularies(tmp_path):
    torch.manual_seed(0)
    model = model_from_config("transformer", TransformerConfig(
        **{**TINY, "tgt_vocab_size": 40, "share_embeddings": False, "tie_output": False, "activation": "gelu",
           "final_logits_bias": True}))
    with torch.no_grad():
        model.final_logits_bias.normal_()
    bigmodels.save(model, tmp_path, format="hf")
    hf = transformers.MarianMTModel.from_pretrained(tmp_path).eval()
    assert not torch.equal(hf.lm_head.weight, hf.model.decoder.embed_tokens.weight)  # untied survives
    src, mask = padded_sources(0)
    dec = torch.randint(1, 40, (src.size(0), 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (hf(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
                - model.eval()(src, mask, dec)).abs().max() <= 1e-5


@pytest.mark.parametrize("change", [{"norm_first": True}, {"layernorm_embedding": True},
                                    {"positions": "interleaved"}])
def test_export_refuses_what_marian_cannot_express_and_writes_nothing(change, tmp_path):
    model = model_from_config("transformer", TransformerConfig(**{**TINY, **change}))
    with pytest.raises(ConfigError, match=f"{next(iter(change))}.*format='bigmodels'"):
        bigmodels.save(model, tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ decoding


def test_greedy_translate_is_token_identical_to_transformers_generate(pair):
    hf, model, pad, eos = pair
    src, mask = padded_sources(pad)
    ours = translate(model, src, attention_mask=mask, max_new_tokens=MAX_NEW)
    ref = hf.generate(input_ids=src, attention_mask=mask, num_beams=1, do_sample=False, max_new_tokens=MAX_NEW)
    assert ours == hf_outputs(ref, eos)
    assert all(len(h) <= MAX_NEW and eos not in h for h in ours)


def test_the_trained_fixture_stops_rows_at_different_steps(trained):
    """Guards the parity tests: their batch must mix finished rows of several lengths (and greedy != beam)."""
    _, model, pad, _ = trained
    src, mask = padded_sources(pad)
    greedy = translate(model, src, attention_mask=mask, max_new_tokens=MAX_NEW)
    beam = translate(model, src, attention_mask=mask, num_beams=4, max_new_tokens=MAX_NEW)
    assert len({len(h) for h in greedy}) >= 3 and min(len(h) for h in greedy) < MAX_NEW
    assert greedy != beam


@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, True), (2.0, False), (0.5, "never"),
                                                            (-1.0, False)])
def test_beam_search_is_identical_to_transformers_generate(pair, length_penalty, early_stopping):
    hf, model, pad, eos = pair
    src, mask = padded_sources(pad)
    config = Seq2SeqGenerationConfig(num_beams=4, max_new_tokens=MAX_NEW, length_penalty=length_penalty,
                                     early_stopping=early_stopping)
    ours, scores = translate(model, src, config, attention_mask=mask, return_scores=True)
    ref = hf.generate(input_ids=src, attention_mask=mask, num_beams=4, do_sample=False, max_new_tokens=MAX_NEW,
                      length_penalty=length_penalty, early_stopping=early_stopping, output_scores=True,
                      return_dict_in_generate=True)
    assert ours == hf_outputs(ref.sequences, eos)
    assert torch.allclose(torch.tensor(scores), ref.sequences_scores, atol=1e-4)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_min_length_is_transformers_min_new_tokens(trained, num_beams):
    hf, model, pad, eos = trained
    src, mask = padded_sources(pad)
    ours = translate(model, src, attention_mask=mask, num_beams=num_beams, max_new_tokens=MAX_NEW, min_length=7)
    ref = hf.generate(input_ids=src, attention_mask=mask, num_beams=num_beams, do_sample=False,
                      max_new_tokens=MAX_NEW, min_new_tokens=7, early_stopping=True)
    assert ours == hf_outputs(ref, eos)
    assert min(len(h) for h in ours) >= 7


def test_translate_with_one_beam_is_greedy_decode_and_takes_lists(trained):
    _, model, pad, _ = trained
    src, mask = padded_sources(pad)
    options = dict(max_new_tokens=MAX_NEW, return_scores=True)
    assert translate(model, src, attention_mask=mask, **options) == greedy_decode(model, src, attention_mask=mask,
                                                                                  **options)
    rows = [r[m.bool()].tolist() for r, m in zip(src, mask, strict=True)]
    assert translate(model, rows, num_beams=2, **options) == beam_search(model, src, attention_mask=mask, num_beams=2,
                                                                         **options)
    # the mask is inferred from the pad id when left out
    assert translate(model, src, max_new_tokens=MAX_NEW) == translate(model, src, attention_mask=mask,
                                                                      max_new_tokens=MAX_NEW)
    # a config and keyword overrides are the same request; keywords replace the config's fields
    config = Seq2SeqGenerationConfig(num_beams=3, max_new_tokens=MAX_NEW)
    assert translate(model, rows, config, num_beams=2, return_scores=True) == translate(model, rows, num_beams=2,
                                                                                        **options)
    assert beam_search(model, rows, max_new_tokens=MAX_NEW) == translate(model, rows, num_beams=4,
                                                                         max_new_tokens=MAX_NEW)  # 4 by default


def test_seq2seq_options_are_checked_with_the_fix(trained):
    _, model, _, _ = trained
    with pytest.raises(ConfigError, match=r"unknown option\(s\) beams\. Valid options: max_new_tokens, min_length, "
                                          r"num_beams, length_penalty, early_stopping, attention_mask, return_scores"):
        translate(model, [[5, 6]], beams=2)
    with pytest.raises(ConfigError, match="config must be a Seq2SeqGenerationConfig, got Tensor"):
        translate(model, torch.tensor([[5, 6]]), torch.ones(1, 2))  # the mask goes by keyword
    with pytest.raises(ConfigError, match="num_beams=0 must be a whole number >= 1"):
        beam_search(model, [[5, 6]], num_beams=0)
    with pytest.raises(ConfigError, match="greedy_decode follows one beam, but num_beams=2; use beam_search"):
        greedy_decode(model, [[5, 6]], num_beams=2)
    with pytest.raises(ConfigError, match="early_stopping='sometimes'"):
        Seq2SeqGenerationConfig(early_stopping="sometimes")
    with pytest.raises(ConfigError, match="min_length=-1"):
        translate(model, [[5, 6]], min_length=-1)


def _teacher_forced_score(model, src, mask, hyps, length_penalty):
    """sum log p(y_t | y_<t, x) over each hypothesis (its eos included when it finished) / length ** lp."""
    c = model.config
    out = []
    with torch.no_grad():
        for i, h in enumerate(hyps):
            target = h + ([c.eos_token_id] if len(h) < MAX_NEW else [])
            dec = torch.tensor([[c.decoder_start_token_id] + target[:-1]])
            logp = model(src[i:i + 1], mask[i:i + 1], dec)[0].log_softmax(-1)  # (T, V)
            out.append(float(logp.gather(1, torch.tensor(target)[:, None]).sum()) / len(target) ** length_penalty)
    return torch.tensor(out)


@pytest.mark.parametrize("num_beams", [2, 4, 8])
def test_beam_search_scores_at_least_greedy_under_the_models_own_normalised_log_prob(trained, num_beams):
    """The scores are the model's own (recomputed by teacher forcing), and beam search finds at least greedy's on
    this batch. Not a theorem: beam search can prune the greedy path, and early_stopping=True returns once
    num_beams hypotheses are finished (on other batches of this model, 2 or 4 beams lose a row to greedy)."""
    _, model, pad, _ = trained
    src, mask = padded_sources(pad, lengths=(9, 7, 5, 9, 3, 8, 6, 4))
    greedy, greedy_scores = greedy_decode(model, src, attention_mask=mask, max_new_tokens=MAX_NEW, return_scores=True)
    beam, beam_scores = beam_search(model, src, attention_mask=mask, num_beams=num_beams, max_new_tokens=MAX_NEW,
                                    return_scores=True)
    assert torch.allclose(torch.tensor(greedy_scores), _teacher_forced_score(model, src, mask, greedy, 1.0), atol=1e-4)
    assert torch.allclose(torch.tensor(beam_scores), _teacher_forced_score(model, src, mask, beam, 1.0), atol=1e-4)
    assert (torch.tensor(beam_scores) >= torch.tensor(greedy_scores) - 1e-5).all()
    assert (torch.tensor(beam_scores) > torch.tensor(greedy_scores) + 1e-3).any()  # and strictly better somewhere


def test_decoding_restores_training_mode(trained):
    _, model, pad, _ = trained
    model.train()
    try:
        translate(model, [[5, 6, 7]], num_beams=2, max_new_tokens=3)
        assert model.training
    finally:
        model.eval()


# ------------------------------------------------------------------------------------------ cache


def test_cached_decoding_equals_full_recomputation_and_projects_the_memory_once(trained):
    _, model, pad, _ = trained
    src, mask = padded_sources(pad)
    dec = shift_right(torch.randint(3, 64, (src.size(0), 8), generator=torch.Generator().manual_seed(5)), 1, 0)
    calls = []
    hooks = [layer.encoder_attn.k_proj.register_forward_hook(lambda *_: calls.append(1))
             for layer in model.decoder.layers]
    try:
        with torch.no_grad():
            memory = model.encode(src, mask)
            full = model.decode(dec, memory, mask)  # (B, 8, V)
            calls.clear()
            cache = model.new_cache()
            steps = [model.decode(dec[:, :3], memory, mask, cache=cache)]  # a prefix, then a token at a time
            steps += [model.decode(dec[:, t:t + 1], memory, mask, cache=cache) for t in range(3, 8)]
    finally:
        for h in hooks:
            h.remove()
    assert len(cache) == 8
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5
    assert len(calls) == len(model.decoder.layers)  # the memory's keys: once per layer, not once per step


def test_reorder_cache_continues_the_selected_rows(trained):
    _, model, pad, _ = trained
    src, mask = padded_sources(pad, lengths=(6, 4))
    src, mask = src.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)  # 2 sources x 2 beams
    dec = shift_right(torch.randint(3, 64, (4, 4), generator=torch.Generator().manual_seed(6)), 1, 0)
    beam_idx = torch.tensor([1, 1, 3, 2])  # each row stays within its source, as beam search keeps it
    with torch.no_grad():
        memory = model.encode(src, mask)
        cache = model.new_cache()
        model.decode(dec[:, :3], memory, mask, cache=cache)
        model.reorder_cache(cache, beam_idx)
        step = model.decode(dec[beam_idx, 3:], memory, mask, cache=cache)
        full = model.decode(dec[beam_idx], memory, mask)[:, 3:]
    assert (step - full).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------ architecture


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
def test_post_norm_and_pre_norm_both_train(norm_first):
    torch.manual_seed(0)
    model = model_from_config("transformer", TransformerConfig(**{**TINY, "norm_first": norm_first, "dropout": 0.1}))
    assert (model.encoder.layer_norm is not None) == norm_first == (model.decoder.layer_norm is not None)
    src, mask, labels = reversal_batch(torch.Generator().manual_seed(0), batch=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        logits = model(src, mask, shift_right(labels, 1, 0))
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grads = {n: p.grad for n, p in model.named_parameters()}
            assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
            assert all(g.abs().sum() > 0 for n, g in grads.items() if "norm" in n or "fc" in n)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_reference_and_sdpa_attention_agree():
    torch.manual_seed(0)
    model = model_from_config("transformer", TransformerConfig(**TINY)).eval()
    reference = model_from_config("transformer", TransformerConfig(**{**TINY, "attn_impl": "reference"})).eval()
    reference.load_state_dict(model.state_dict())
    src, mask = padded_sources(0)
    dec = torch.randint(3, 64, (src.size(0), 6), generator=torch.Generator().manual_seed(8))
    dec_mask = torch.ones_like(dec)
    dec_mask[0, 3:] = 0
    with torch.no_grad():
        a, b = model(src, mask, dec, dec_mask), reference(src, mask, dec, dec_mask)
    assert (a - b).abs().max() <= 1e-5 and a.abs().max() > 0


def test_sinusoid_layouts_are_a_permutation_of_the_papers_formula():
    halves = Transformer(TransformerConfig(**TINY)).encoder.embed_positions.table
    interleaved = Transformer(TransformerConfig(**{**TINY, "positions": "interleaved"})).encoder.embed_positions.table
    pos, i = 5, 3  # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)
    angle = torch.tensor(pos / 10000 ** (2 * i / 32))
    assert torch.isclose(interleaved[pos, 2 * i], angle.sin())
    assert torch.isclose(interleaved[pos, 2 * i + 1], angle.cos())
    assert torch.equal(halves, torch.cat([interleaved[:, 0::2], interleaved[:, 1::2]], 1))
    assert not any(k.endswith("embed_positions.table") for k in Transformer(TransformerConfig(**TINY)).state_dict())


def test_presets_the_trainer_call_and_a_bigmodels_round_trip(tmp_path):
    assert bigmodels.list_models(task="translation") == ["transformer_base", "transformer_mini", "transformer_small"]
    small = bigmodels.get_spec("transformer_small").config
    assert (small.d_model, small.num_encoder_layers, small.num_heads, small.d_ff) == (256, 3, 4, 1024)
    model = bigmodels.create_model("transformer_mini", src_vocab_size=96, tgt_vocab_size=96)
    assert model.info.task == "translation" and model.lm_head.weight is model.shared.weight  # one table, tied
    src, mask = padded_sources(0, high=96)
    x = {"input_ids": src, "attention_mask": mask, "decoder_input_ids": shift_right(src, 1, 0)}
    assert model(**x).shape == (src.size(0), src.size(1), 96)
    bigmodels.save(model, tmp_path)
    loaded = bigmodels.load(tmp_path)
    assert loaded.config == model.config and loaded.info.name == "transformer_mini"
    with torch.no_grad():
        assert torch.equal(loaded(**x), model.eval()(**x))


def test_shift_right_starts_with_the_decoder_start_and_pads_ignored_labels():
    labels = torch.tensor([[7, 8, 2, -100], [5, 2, -100, -100]])
    assert shift_right(labels, 1, 0).tolist() == [[1, 7, 8, 2], [1, 5, 2, 0]]


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("change, message", [
    ({"num_heads": 3}, "divisible"),
    ({"tgt_vocab_size": 50}, "share_embeddings=false"),
    ({"activation": "tanh"}, "activation"),
    ({"dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
    ({"pad_token_id": 64}, "pad_token_id=64"),
    ({"positions": "learned"}, "positions"),
    ({"bos_token_id": None}, "decoder_start_token_id is needed"),
    ({"d_model": 0}, "d_model=0"),
])
def test_config_errors_name_the_bad_value(change, message):
    with pytest.raises(ConfigError, match=message):
        TransformerConfig(**{**TINY, **change})


def test_unknown_override_lists_the_valid_keys():
    with pytest.raises(ConfigError, match="Valid keys: src_vocab_size"):
        bigmodels.create_model("transformer_mini", vocab_size=100)


def test_input_errors_name_the_length_and_the_fix():
    model = model_from_config("transformer", TransformerConfig(**{**TINY, "max_position_embeddings": 16})).eval()
    long = torch.randint(3, 64, (1, 20))
    with pytest.raises(DataError, match=r"20 tokens.*at most 16 \(max_position_embeddings\); truncate the source"):
        model.encode(long)
    with pytest.raises(DataError, match="positions 10..19.*max_position_embeddings>=20"):
        model.decode(long[:, :10], model.encode(long[:, :5]), start_pos=10)
    with pytest.raises(ConfigError, match="max_new_tokens=17.*at most 16"):
        translate(model, long[:, :5], max_new_tokens=17)
    with pytest.raises(DataError, match="decoder_input_ids"):
        model(long[:, :5])
    with pytest.raises(DataError, match=r"decoder_attention_mask must be .*\(1, 4\)"):
        model(long[:, :5], decoder_input_ids=long[:, :4], decoder_attention_mask=torch.ones(1, 3))
