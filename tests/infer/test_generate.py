"""Decoding: token-identical to Hugging Face generate() for greedy search, plus sampling and stop rules, the
options (GenerationConfig), recurrent language models, and decoders that share nothing."""

from __future__ import annotations

import threading
from types import MappingProxyType

import pytest
import torch

import bigmodels
from bigmodels.errors import ConfigError, DataError
from bigmodels.infer import generate as decoding
from bigmodels.infer import sampling, seq2seq
from bigmodels.infer.generate import Decoder, GenerationConfig, generate, pad_prompts, stream
from bigmodels.nn import kernels

PROMPT = [11, 42, 7, 93, 5]
PROMPTS = [[11, 42, 7, 93, 5, 61, 2], [8, 70], [33, 12, 99, 4]]  # different lengths: left-padded
PAD_ID = 0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(ours, Hugging Face's): the same tiny random GPT-2, ours loaded from transformers' directory.

    Untied, since a random tied model mostly repeats its input token, which would make weak tests.
    """
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64,
                                     tie_word_embeddings=False)
    hf = transformers.GPT2LMHeadModel(config).eval()
    path = tmp_path_factory.mktemp("hf_gpt2")
    hf.save_pretrained(path)
    return bigmodels.load(path), hf


def hf_generate(hf, prompts, **kwargs) -> torch.Tensor:
    ids, mask = pad_prompts(prompts, PAD_ID)
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=32, pad_token_id=PAD_ID,
                           **kwargs)


@pytest.mark.parametrize("penalty", [1.0, 1.3], ids=["plain", "repetition_penalty"])
@pytest.mark.parametrize("batch", [False, True], ids=["one_prompt", "batch"])
def test_greedy_is_token_identical_to_hugging_face(models, batch, penalty):
    ours, hf = models
    prompts = PROMPTS if batch else [PROMPT]
    kw = {"repetition_penalty": penalty} if penalty != 1.0 else {}
    expected = hf_generate(hf, prompts, **kw)
    out = generate(ours, prompts if batch else PROMPT, temperature=0, max_new_tokens=32, pad_token_id=PAD_ID, **kw)
    assert out.shape == expected.shape == (len(prompts), max(map(len, prompts)) + 32)
    assert torch.equal(out, expected)
    # a padded tensor with its attention_mask is the same request
    ids, mask = pad_prompts(prompts, PAD_ID)
    assert torch.equal(generate(ours, ids, attention_mask=mask, temperature=0, pad_token_id=PAD_ID, **kw), out)


@pytest.mark.parametrize("batch", [False, True], ids=["one_prompt", "batch"])
def test_static_cache_decodes_the_tokens_of_the_dynamic_cache_and_hugging_face(models, batch):
    ours, hf = models
    prompts = PROMPTS if batch else [PROMPT]
    out = generate(ours, prompts, temperature=0, max_new_tokens=32, pad_token_id=PAD_ID, cache="static")
    assert torch.equal(out, hf_generate(hf, prompts))
    # seeded sampling with every filter, the repetition penalty and a stop token: the same draws
    kw = {"max_new_tokens": 20, "temperature": 0.9, "top_k": 30, "top_p": 0.95, "repetition_penalty": 1.2,
          "seed": 11, "pad_token_id": PAD_ID}
    sampled = generate(ours, prompts, **kw)
    assert torch.equal(generate(ours, prompts, cache="static", **kw), sampled)
    stop = sampled[0, -15].item()
    assert torch.equal(generate(ours, prompts, cache="static", stop_tokens=(stop,), **kw),
                       generate(ours, prompts, stop_tokens=(stop,), **kw))
    steps = list(stream(ours, prompts, cache="static", **kw))
    assert torch.equal(torch.stack(steps, 1), sampled[:, -20:])


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_cpu_prepared_model_is_token_identical_to_hugging_face(models, cache):
    """prepare_for_cpu_decoding (weights packed for oneDNN) changes the kernel, not the tokens."""
    import copy

    from bigmodels.compress.layout import PackedLinear, prepare_for_cpu_decoding

    ours, hf = models
    packed = prepare_for_cpu_decoding(copy.deepcopy(ours))
    assert isinstance(packed.lm_head, PackedLinear)
    for prompts in ([PROMPT], PROMPTS):
        out = generate(packed, prompts, temperature=0, max_new_tokens=32, pad_token_id=PAD_ID, cache=cache)
        assert torch.equal(out, hf_generate(hf, prompts))


def test_compiled_static_decoding_is_one_graph_for_every_step_and_call(models, monkeypatch):
    """On CPU with a counting backend (CUDA uses mode="reduce-overhead"): one whole graph, captured once."""
    ours, _ = models
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    decoder = Decoder(ours, compile_options={"backend": backend, "fullgraph": True})
    compiled = GenerationConfig(temperature=0, pad_token_id=PAD_ID, cache="static", compile=True)
    try:
        expected = generate(ours, PROMPTS, temperature=0, max_new_tokens=24, pad_token_id=PAD_ID)
        T = expected.size(1) - 24
        for n in (24, 10):  # two calls of different lengths share the decoder's pooled cache (64 slots) and graph
            out = generate(ours, PROMPTS, compiled, max_new_tokens=n, decoder=decoder)
            assert torch.equal(out, expected[:, :T + n])
        assert len(graphs) == 1
        # two streams open at once each take a cache of their own, so they do not disturb each other
        a = stream(ours, PROMPTS, compiled, max_new_tokens=24, decoder=decoder)
        b = stream(ours, PROMPTS, compiled, max_new_tokens=24, decoder=decoder)
        pairs = list(zip(a, b, strict=True))
        assert torch.equal(torch.stack([x for x, _ in pairs], 1), expected[:, T:])
        assert torch.equal(torch.stack([y for _, y in pairs], 1), expected[:, T:])
        assert len(decoder._free[(3, 64, torch.float32, torch.device("cpu"))]) == 2  # both given back
        assert len(graphs) == 1
    finally:
        torch._dynamo.reset()


def test_compiled_static_caches_take_the_next_power_of_two_slots_within_the_context():
    """Nearby lengths share a shape (few graphs), and a step never attends over more than twice its tokens."""
    lengths = [1, 20, 64, 65, 96, 128, 129, 600, 1000, 1024, 1025, 5000]
    assert [decoding.static_length(n, 1024) for n in lengths] == [
        64, 64, 64, 128, 128, 128, 256, 1024, 1024, 1024, 1024, 1024]
    assert all(n <= decoding.static_length(n) < max(2 * n, 65) for n in range(1, 3000))
    assert decoding.static_length(30, 32) == 32 and decoding.static_length(100, 48) == 48


def test_compile_without_compile_options_for_the_device_decodes_uncompiled_with_a_note(models, caplog):
    ours, _ = models
    expected = generate(ours, PROMPTS, temperature=0, max_new_tokens=8, pad_token_id=PAD_ID)
    with caplog.at_level("WARNING", logger="bigmodels.infer.generate"):
        out = generate(ours, PROMPTS, temperature=0, max_new_tokens=8, pad_token_id=PAD_ID, cache="static",
                       compile=True)
    assert torch.equal(out, expected)
    assert "no compiled decoding for cpu" in caplog.text


def test_bad_cache_options_are_config_errors(models):
    ours, _ = models
    with pytest.raises(ConfigError, match="cache='paged' is not valid; choose one of dynamic, static"):
        generate(ours, PROMPT, cache="paged")
    with pytest.raises(ConfigError, match="pass cache='static'"):
        generate(ours, PROMPT, compile=True)
    with pytest.raises(ConfigError, match="compile='yes'"):
        stream(ours, PROMPT, cache="static", compile="yes")

    class NoStaticCache(torch.nn.Module):
        def new_cache(self):
            return bigmodels.nn.KVCache(1)

    with pytest.raises(ConfigError, match="NoStaticCache has no static cache.*cache='dynamic'"):
        generate(NoStaticCache(), PROMPT, cache="static")


def test_eos_ends_a_row_and_pads_it_like_hugging_face(models):
    ours, hf = models
    free = generate(ours, PROMPTS, temperature=0, max_new_tokens=32, pad_token_id=PAD_ID)
    T = free.size(1) - 32
    eos = free[0, T + 4].item()  # row 0 produces this token at step 5
    expected = hf_generate(hf, PROMPTS, eos_token_id=eos)
    out = generate(ours, PROMPTS, temperature=0, max_new_tokens=32, eos_token_id=eos, pad_token_id=PAD_ID)
    assert torch.equal(out, expected)
    row0 = out[0, T:].tolist()
    first = row0.index(eos)
    assert first <= 4 and set(row0[first + 1:]) <= {PAD_ID}  # the eos is kept, then only padding


def test_stop_tokens_end_rows_and_decoding_stops_when_all_are_done(models):
    ours, _ = models
    free = generate(ours, [PROMPT, PROMPT], temperature=0, max_new_tokens=10)
    stop = free[0, len(PROMPT) + 2].item()
    out = generate(ours, [PROMPT, PROMPT], temperature=0, max_new_tokens=10, stop_tokens=(stop,), pad_token_id=PAD_ID)
    first = free[0, len(PROMPT):].tolist().index(stop)
    assert out.shape == (2, len(PROMPT) + first + 1)  # both rows hit it at once: no steps wasted
    assert torch.equal(out, free[:, : out.size(1)])
    # one row stopping while the other goes on: the stopped row is padded, the other is unchanged
    other = generate(ours, [PROMPT, PROMPTS[1]], temperature=0, max_new_tokens=10)
    mixed = generate(ours, [PROMPT, PROMPTS[1]], temperature=0, max_new_tokens=10, stop_tokens=(stop,),
                     pad_token_id=PAD_ID)
    assert stop not in other[1, len(PROMPT):].tolist()  # (true of this seeded model)
    assert mixed.shape == other.shape and torch.equal(mixed[1], other[1])
    assert set(mixed[0, len(PROMPT) + first + 1:].tolist()) == {PAD_ID}


def test_stop_strings_with_a_decode_function(models):
    ours, _ = models

    def decode(ids: list[int]) -> str:
        return "".join(chr(33 + i) for i in ids)  # one printable character per token

    free = generate(ours, PROMPT, temperature=0, max_new_tokens=12, repetition_penalty=1.5)
    new = free[0, len(PROMPT):].tolist()
    target = decode(new[3:5])  # the text of steps 4-5
    out = generate(ours, PROMPT, temperature=0, max_new_tokens=12, repetition_penalty=1.5, stop_strings=(target,),
                   decode=decode)
    text = decode(out[0, len(PROMPT):].tolist())
    assert text.endswith(target) and target not in text[:-1]
    assert torch.equal(out[0], free[0, : out.size(1)])
    with pytest.raises(ConfigError, match="decode"):
        generate(ours, PROMPT, stop_strings=("x",))


def test_stream_yields_the_tokens_generate_returns(models):
    ours, _ = models
    kw = {"max_new_tokens": 12, "temperature": 0.9, "top_k": 20, "pad_token_id": PAD_ID, "stop_tokens": (3,)}
    steps = list(stream(ours, PROMPTS, seed=7, **kw))
    assert all(s.shape == (len(PROMPTS),) for s in steps)
    out = generate(ours, PROMPTS, seed=7, **kw)
    assert torch.equal(torch.stack(steps, 1), out[:, out.size(1) - len(steps):])


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(models):
    ours, _ = models

    def sample(seed, **kw):
        return generate(ours, PROMPTS, max_new_tokens=20, temperature=1.0, seed=seed, pad_token_id=PAD_ID, **kw)

    a = sample(123)
    assert torch.equal(a, sample(123))
    assert torch.equal(a, sample(torch.Generator().manual_seed(123)))
    assert not torch.equal(a, sample(321))
    greedy = generate(ours, PROMPTS, max_new_tokens=20, temperature=0, pad_token_id=PAD_ID)
    assert torch.equal(sample(5, top_k=1), greedy)
    assert torch.equal(sample(6, top_p=1e-6), greedy)
    # decoding is a function of the model, not a method on it
    assert not hasattr(ours, "generate")


def test_generate_leaves_the_training_mode_as_it_was(models):
    ours, _ = models
    ours.train()
    try:
        a = generate(ours, PROMPT, temperature=0, max_new_tokens=4)
        assert ours.training
    finally:
        ours.eval()
    assert torch.equal(a, generate(ours, PROMPT, temperature=0, max_new_tokens=4))  # dropout was off


def test_pad_prompts_left_pads():
    ids, mask = pad_prompts([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_empty_and_too_long_prompts_are_data_errors(models):
    ours, _ = models
    for empty in (torch.empty(1, 0, dtype=torch.long), [], [[1, 2], []]):
        with pytest.raises(DataError, match="empty"):
            generate(ours, empty)
    with pytest.raises(DataError, match=r"all padding"):
        generate(ours, torch.ones(2, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(DataError, match=r"prompt \(40 tokens\) \+ max_new_tokens=32 = 72 exceeds .* 64 tokens.*"
                                        r"at most 32 tokens.*at most 24"):
        generate(ours, list(range(40)), max_new_tokens=32)
    with pytest.raises(DataError, match=r"= 204 exceeds .* \(block_size\); lower max_new_tokens to at most 60,"):
        generate(ours, PROMPT[:4], max_new_tokens=200)
    with pytest.raises(DataError, match="fewer than 64"):
        stream(ours, list(range(70)), max_new_tokens=1)  # checked at the call, before any token
    with pytest.raises(ConfigError, match="pad_token_id"):
        generate(ours, PROMPTS, stop_tokens=(1,))
    with pytest.raises(ConfigError, match="top_p"):
        generate(ours, PROMPT, top_p=1.5)


# ------------------------------------------------------------------------------------------ options


def test_keywords_build_or_override_the_config(models):
    ours, _ = models
    greedy = GenerationConfig(max_new_tokens=6, temperature=0, pad_token_id=PAD_ID)
    out = generate(ours, PROMPTS, greedy)
    assert torch.equal(out, generate(ours, PROMPTS, max_new_tokens=6, temperature=0, pad_token_id=PAD_ID))
    sampled = GenerationConfig(max_new_tokens=6, temperature=0.9, seed=1, pad_token_id=PAD_ID)
    assert torch.equal(generate(ours, PROMPTS, sampled, temperature=0), out)  # the keyword replaces the field
    assert sampled.temperature == 0.9  # and the caller's config is left as it was
    assert torch.equal(torch.stack(list(stream(ours, PROMPTS, greedy)), 1), out[:, -6:])


def test_unknown_options_and_bad_values_fail_with_the_fix(models):
    ours, _ = models
    with pytest.raises(ConfigError, match=r"generate\(\): unknown option\(s\) max_tokens\. Valid options: "
                                          r"max_new_tokens, temperature, top_k, .*, compile, attention_mask, decode"):
        generate(ours, PROMPT, max_tokens=5)
    with pytest.raises(ConfigError, match=r"stream\(\): unknown option\(s\) generator; seed= takes a torch.Generator"):
        stream(ours, PROMPT, generator=torch.Generator())
    with pytest.raises(ConfigError, match="config must be a GenerationConfig, got int 8; pass options by keyword"):
        generate(ours, PROMPT, 8)
    for bad, message in [({"max_new_tokens": -1}, "max_new_tokens=-1 must be a whole number >= 0"),
                         ({"max_new_tokens": 2.5}, "max_new_tokens=2.5"),
                         ({"temperature": -0.1}, r"temperature=-0.1 must be >= 0 \(0 = greedy\)"),
                         ({"top_k": 0}, "top_k=0 must be >= 1"),
                         ({"repetition_penalty": 0}, "repetition_penalty=0 must be > 0"),
                         ({"stop_strings": "\n"}, r"stop_strings='\\n' must be a list of non-empty strings"),
                         ({"stop_tokens": 3}, r"stop_tokens=3 must be a list of token ids, e.g. stop_tokens=\[2\]"),
                         ({"eos_token_id": [1, -2]}, "eos_token_id=.* must hold token ids"),
                         ({"seed": "0"}, "seed='0' must be a whole number, a torch.Generator or None")]:
        with pytest.raises(ConfigError, match=message):
            GenerationConfig(**bad)
    config = GenerationConfig(stop_tokens=[3, 4], eos_token_id=[2], stop_strings=["\n"])
    assert (config.stop_tokens, config.eos_ids, config.stop_strings) == ((3, 4), (2,), ("\n",))
    with pytest.raises(ConfigError, match="made for another model"):
        generate(ours, PROMPT, decoder=Decoder(bigmodels.create_model("gpt_mini")))
    with pytest.raises(ConfigError, match=r"encoder-decoder: translate with bigmodels.infer.seq2seq.translate"):
        generate(bigmodels.create_model("transformer_mini"), PROMPT)


def test_sampling_lives_in_infer_not_in_nn():
    assert not hasattr(bigmodels.nn, "sample_next_token") and not hasattr(bigmodels.nn, "filter_logits")
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(sampling.filter_logits(logits, top_p=0.6)).tolist() == [[False, True, True, True]]
    assert torch.isinf(sampling.filter_logits(logits, top_k=3)).tolist() == [[False, False, False, True]]


# ------------------------------------------------------------------------------------------ recurrent models


def tiny_lm(cell: str = "gru", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    args = {"vocab_size": 20, "embed_dim": 16, "hidden_size": 32, "num_layers": 2, **kw}
    return bigmodels.create_model(f"char_{cell}", **args).eval()


def reference_greedy(model, ids: torch.Tensor, n: int, penalty: float = 1.0) -> torch.Tensor:
    """Re-run the whole sequence every step (no state carried), with the repetition penalty by hand."""
    seq = ids
    with torch.no_grad():
        for _ in range(n):
            logits = model(seq)[:, -1]
            seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, seq, True)
            logits = torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_greedy_carries_the_state_of_rerunning_the_sequence(cell):
    model = tiny_lm(cell)
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    out = generate(model, ids, max_new_tokens=6, temperature=0)
    assert out.shape == (2, 10) and torch.equal(out[:, :4], ids)
    assert torch.equal(out, reference_greedy(model, ids, 6))
    assert torch.equal(generate(model, ids, max_new_tokens=6, temperature=0, repetition_penalty=1.8),
                       reference_greedy(model, ids, 6, penalty=1.8))
    assert not torch.equal(reference_greedy(model, ids, 6, penalty=1.8), out)  # the penalty changes the tokens


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_left_padded_prompts_decode_as_each_prompt_alone(cell):
    model = tiny_lm(cell)
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    out = generate(model, prompts, max_new_tokens=7, temperature=0, pad_token_id=0)
    for row, prompt in enumerate(prompts):  # the padding never runs through the recurrence
        assert torch.equal(out[row, -7:], generate(model, prompt, max_new_tokens=7, temperature=0)[0, -7:])
    # rows of one batch stop on their own and are padded, as on the Transformer path
    stop = out[1, -4].item()
    stopped = generate(model, prompts, max_new_tokens=7, temperature=0, pad_token_id=0, stop_tokens=(stop,))
    first = out[1, -7:].tolist().index(stop)
    new = stopped[1, 5:].tolist()  # (decoding ends once every row has stopped)
    assert len(new) > first and new == out[1, 5: 5 + first + 1].tolist() + [0] * (len(new) - first - 1)


def test_recurrent_sampling_filters_and_stop_rules_match_the_transformer_path():
    model = tiny_lm()
    ids = torch.tensor([[1, 2, 3]])

    def sample(seed, **kw):
        return generate(model, ids, max_new_tokens=20, temperature=1.0, seed=seed, **kw)

    a = sample(123)
    assert torch.equal(a, sample(123)) and torch.equal(a, sample(torch.Generator().manual_seed(123)))
    assert not torch.equal(a, sample(321))
    assert a.min() >= 0 and a.max() < 20
    greedy = generate(model, ids, max_new_tokens=20, temperature=0)
    assert torch.equal(sample(5, top_k=1), greedy)
    assert torch.equal(sample(6, top_p=1e-6), greedy)  # top_p is honoured: only the argmax is left
    # a stop token ends the row there (kept), a stop string once the new text holds it
    stop = a[0, 3 + 5].item()
    first = a[0, 3:].tolist().index(stop)
    assert torch.equal(sample(123, stop_tokens=(stop,)), a[:, : 3 + first + 1])

    def decode(new: list[int]) -> str:
        return "".join(chr(97 + i) for i in new)

    target = decode(a[0, 3 + 6: 3 + 8].tolist())
    out = sample(123, stop_strings=(target,), decode=decode)
    assert decode(out[0, 3:].tolist()).endswith(target) and torch.equal(out, a[:, : out.size(1)])
    assert torch.equal(torch.stack(list(stream(model, ids, max_new_tokens=20, seed=123)), 1), a[:, 3:])


def test_recurrent_errors_name_the_fix():
    model = tiny_lm()
    with pytest.raises(DataError, match="empty"):
        generate(model, torch.empty(1, 0, dtype=torch.long), max_new_tokens=5)
    with pytest.raises(ConfigError, match="RNNModel is a image_classification model; .* a language model"):
        generate(bigmodels.create_model("lstm_classifier"), [1, 2, 3], max_new_tokens=2)
    with pytest.raises(ConfigError, match=r"RNNModel has no static cache .* use cache='dynamic'"):
        generate(model, [1, 2, 3], cache="static")
    with pytest.raises(ConfigError, match=r"Linear cannot be decoded: .* model\(ids, cache=c\)"):
        generate(torch.nn.Linear(2, 2), [1, 2, 3])
    model.train()
    generate(model, [1, 2, 3], max_new_tokens=2)
    assert model.training  # the mode is restored


# ------------------------------------------------------------------------------------------ greedy screen

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="bigmodels_cpu is not built here (no AVX-512 "
                                   "VNNI or no C++ compiler): greedy steps read the output layer whole")


def _counting_picks(monkeypatch) -> list:
    calls = []
    real = decoding._pick_step
    monkeypatch.setattr(decoding, "_pick_step", lambda *a: calls.append(a[2].shape) or real(*a))
    return calls


@needs_kernels
def test_greedy_screen_picks_hugging_faces_tokens_with_a_dynamic_cache(models, monkeypatch):
    ours, hf = models
    calls = []
    real = torch.ops.bigmodels_cpu.screened_argmax
    monkeypatch.setattr(torch.ops.bigmodels_cpu, "screened_argmax", lambda *a: calls.append(a[0].shape) or real(*a))
    decoder = Decoder(ours, greedy_screen=True)
    for prompts in ([PROMPT], PROMPTS):
        out = generate(ours, prompts, temperature=0, max_new_tokens=32, pad_token_id=PAD_ID, decoder=decoder)
        assert torch.equal(out, hf_generate(hf, prompts))
    assert calls == [(1, 32)] * 31 + [(3, 32)] * 31
    assert torch.equal(generate(ours, PROMPTS, temperature=0, max_new_tokens=32, pad_token_id=PAD_ID),
                       hf_generate(hf, PROMPTS)) and len(calls) == 62  # no decoder: the logits


@needs_kernels
def test_greedy_screen_takes_a_model_built_under_inference_mode():
    torch.manual_seed(0)
    with torch.inference_mode():  # its parameters are inference tensors, which keep no version count
        model = bigmodels.create_model("gpt_mini").eval()
        decoder = Decoder(model, greedy_screen=True)
        screened = generate(model, [5, 6, 7], max_new_tokens=12, temperature=0, cache="static", decoder=decoder)
        assert decoder._screen is not None
        assert torch.equal(screened, generate(model, [5, 6, 7], max_new_tokens=12, temperature=0))


@needs_kernels
@pytest.mark.parametrize("name", ["char_lstm", "char_gru"])
def test_greedy_screen_serves_recurrent_language_models_too(name):
    torch.manual_seed(0)
    model = bigmodels.create_model(name).eval()
    decoder = Decoder(model, greedy_screen=True)
    screened = generate(model, [5, 6, 7], max_new_tokens=20, temperature=0, decoder=decoder)
    assert decoder._screen is not None and decoder._screen.weight is model.fc.weight
    assert torch.equal(screened, generate(model, [5, 6, 7], max_new_tokens=20, temperature=0))


@needs_kernels
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_greedy_screen_picks_hugging_faces_tokens(models, monkeypatch, compiled):
    ours, hf = models
    calls = [] if compiled else _counting_picks(monkeypatch)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    decoder = Decoder(ours, compile_options={"backend": backend, "fullgraph": True}, greedy_screen=True)
    try:
        for prompts in ([PROMPT], PROMPTS):
            out = generate(ours, prompts, temperature=0, max_new_tokens=32, pad_token_id=PAD_ID, cache="static",
                           compile=compiled, decoder=decoder)
            assert torch.equal(out, hf_generate(hf, prompts))
    finally:
        torch._dynamo.reset()
    screen = decoder._screen
    assert screen is not None and screen.weight is ours.lm_head.weight and screen.vocab == 100
    if compiled:  # one graph per batch size, each picking with the kernel
        assert len(graphs) == 2 and all("screened_argmax" in str(g.graph) for g in graphs)
    else:
        assert not graphs and calls == [(1, 1)] * 31 + [(3, 1)] * 31


@needs_kernels
def test_greedy_screen_leaves_sampling_penalties_and_wide_batches_to_the_logits(models, monkeypatch):
    ours, hf = models
    calls = _counting_picks(monkeypatch)
    decoder = Decoder(ours, greedy_screen=True)
    kw = {"max_new_tokens": 12, "pad_token_id": PAD_ID, "cache": "static"}
    sampled = generate(ours, PROMPTS, temperature=0.8, seed=3, **kw)
    assert torch.equal(generate(ours, PROMPTS, temperature=0.8, seed=3, decoder=decoder, **kw), sampled)
    penalised = generate(ours, PROMPTS, temperature=0, repetition_penalty=1.3, **kw)
    assert torch.equal(generate(ours, PROMPTS, temperature=0, repetition_penalty=1.3, decoder=decoder, **kw),
                       penalised)
    wide = PROMPTS + PROMPTS  # 6 rows: more than the kernel takes
    assert torch.equal(generate(ours, wide, temperature=0, decoder=decoder, **kw),
                       hf_generate(hf, wide)[:, :-20])
    assert calls == []


@needs_kernels
def test_greedy_screen_follows_a_changed_weight_or_layer_and_skips_a_non_float_output_layer(models):
    import copy

    from bigmodels.compress.quantize import Int8DynamicConfig, quantize_

    ours, _ = models
    model = copy.deepcopy(ours)
    decoder = Decoder(model, greedy_screen=True)
    kw = {"temperature": 0, "max_new_tokens": 10, "cache": "static"}
    generate(model, PROMPT, decoder=decoder, **kw)
    with torch.no_grad():
        model.lm_head.weight[7] += 5.0  # token 7 now wins most steps
    before = generate(model, PROMPT, temperature=0, max_new_tokens=10)
    assert torch.equal(generate(model, PROMPT, decoder=decoder, **kw), before)
    torch.manual_seed(1)
    model.lm_head = torch.nn.Linear(32, model.lm_head.out_features)  # a new output layer, with a bias
    swapped = generate(model, PROMPT, decoder=decoder, **kw)
    assert torch.equal(swapped, generate(model, PROMPT, temperature=0, max_new_tokens=10))
    assert not torch.equal(swapped, before) and decoder._screen.weight is model.lm_head.weight
    assert decoder._screen.bias is model.lm_head.bias
    # an int8 output layer: its logits are no float32 weight's product. The same decoder sees the layers change
    # and looks again (it finds none: the int8 model's own greedy tokens, not the float32 weight's)
    quantize_(model, Int8DynamicConfig(kernel="fbgemm", output_layer=True))
    assert torch.equal(generate(model, PROMPT, decoder=decoder, **kw), generate(model, PROMPT, **kw))
    assert decoder._screen_for is not None and decoder._screen is None
    with pytest.raises(ConfigError, match=r"Decoder\(greedy_screen='yes'\) must be True or False"):
        Decoder(model, greedy_screen="yes")


# ------------------------------------------------------------------------------------------ no shared state


def test_decoders_in_two_threads_give_the_tokens_of_sequential_runs(models):
    ours, _ = models
    requests = [GenerationConfig(max_new_tokens=16, temperature=0, pad_token_id=PAD_ID, cache="static"),
                GenerationConfig(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=4, pad_token_id=PAD_ID),
                GenerationConfig(max_new_tokens=12, temperature=0.8, top_k=10, seed=5, pad_token_id=PAD_ID,
                                 cache="static", compile=True)]
    def own_decoder() -> Decoder:  # compiled (eager backend) on CPU too, so each thread holds a compiled step
        return Decoder(ours, compile_options={"backend": "eager", "fullgraph": True})

    sequential = [[generate(ours, PROMPTS, c, decoder=own_decoder()) for c in requests] for _ in range(2)]
    results: dict[int, list[torch.Tensor]] = {}
    errors: list[BaseException] = []

    def work(index: int, decoder: Decoder) -> None:
        try:
            results[index] = [generate(ours, PROMPTS, c, decoder=decoder) for c in requests * 3]
        except BaseException as e:  # surfaced below: a thread's exception would otherwise be lost
            errors.append(e)

    decoders = [own_decoder() for _ in range(2)]
    threads = [threading.Thread(target=work, args=(i, decoders[i])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for index in range(2):
        for got, expected in zip(results[index], sequential[index] * 3, strict=True):
            assert torch.equal(got, expected)
    assert decoders[0]._compiled["cpu", False] is not decoders[1]._compiled["cpu", False]  # each compiled its own
    assert decoders[0]._free.keys() == decoders[1]._free.keys() and all(
        not set(map(id, decoders[0]._free[key])) & set(map(id, decoders[1]._free[key])) for key in decoders[0]._free)


def _module_state(*modules) -> dict[str, object]:
    """Every global of ``modules``: its identity, and the contents of containers."""
    state = {}
    for module in modules:
        for name, value in vars(module).items():
            containers = (dict, list, set, MappingProxyType)
            state[f"{module.__name__}.{name}"] = (id(value), repr(value) if isinstance(value, containers) else None)
    return state


def test_nothing_module_level_changes_when_decoding(models, caplog):
    ours, _ = models
    generate(ours, PROMPT, max_new_tokens=2)  # anything lazily imported on a first call is in place
    before = _module_state(decoding, sampling, seq2seq)
    decoder = Decoder(ours)
    kw = {"max_new_tokens": 6, "temperature": 0, "pad_token_id": PAD_ID}
    generate(ours, PROMPTS, cache="static", compile=True, decoder=decoder, **kw)
    generate(ours, PROMPTS, cache="static", compile=True, **kw)
    list(stream(ours, PROMPTS, repetition_penalty=1.2, **kw))
    generate(tiny_lm(), [[1, 2], [3]], **kw)
    seq2seq.translate(bigmodels.create_model("transformer_mini"), [[5, 6, 7]], num_beams=2, max_new_tokens=3)
    assert _module_state(decoding, sampling, seq2seq) == before
    assert decoder._compiled == {("cpu", False): None}  # what compiling kept lives in the caller's decoder


def test_prefill_runs_the_output_layer_on_the_last_position_only(models):
    ours, _ = models
    rows = []
    handle = ours.lm_head.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[1]))
    try:
        for cache in ("dynamic", "static"):
            rows.clear()
            out = generate(ours, PROMPTS, max_new_tokens=4, temperature=0, pad_token_id=PAD_ID, cache=cache)
            assert rows == [1, 1, 1, 1], cache  # the prompt's 7 positions: one row through lm_head, then 1 a step
    finally:
        handle.remove()
    # the same tokens as feeding every position through the output layer, step by step without a cache
    ids, mask = pad_prompts(PROMPTS, PAD_ID)
    with torch.no_grad():
        for _ in range(4):
            logits = ours(ids, attention_mask=mask)[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    assert torch.equal(out, ids)
