"""Decoding: token-identical to Hugging Face generate() for greedy search, plus sampling and stop rules."""

from __future__ import annotations

import pytest
import torch

import bigmodels
from bigmodels.errors import ConfigError, DataError
from bigmodels.infer import generate as decoding
from bigmodels.infer.generate import generate, pad_prompts, stream

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

PROMPT = [11, 42, 7, 93, 5]
PROMPTS = [[11, 42, 7, 93, 5, 61, 2], [8, 70], [33, 12, 99, 4]]  # different lengths: left-padded
PAD_ID = 0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(ours, Hugging Face's): the same tiny random GPT-2, ours loaded from transformers' directory.

    Untied, since a random tied model mostly repeats its input token, which would make weak tests.
    """
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64, tie_word_embeddings=False)
    hf = GPT2LMHeadModel(config).eval()
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


def test_compiled_static_decoding_is_one_graph_for_every_step_and_call(models, monkeypatch):
    """On CPU with a counting backend (CUDA uses mode="reduce-overhead"): one whole graph, captured once."""
    ours, _ = models
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    monkeypatch.setitem(decoding._COMPILE_OPTIONS, "cpu", {"backend": backend, "fullgraph": True})
    monkeypatch.setattr(decoding, "_COMPILED", {})
    try:
        expected = generate(ours, PROMPTS, temperature=0, max_new_tokens=24, pad_token_id=PAD_ID)
        T = expected.size(1) - 24
        for n in (24, 10):  # two calls of different lengths share the pooled cache (64 slots) and the graph
            out = generate(ours, PROMPTS, temperature=0, max_new_tokens=n, pad_token_id=PAD_ID, cache="static",
                           compile=True)
            assert torch.equal(out, expected[:, :T + n])
        assert len(graphs) == 1
        # two streams open at once each take a cache of their own, so they do not disturb each other
        a = stream(ours, PROMPTS, temperature=0, max_new_tokens=24, pad_token_id=PAD_ID, cache="static", compile=True)
        b = stream(ours, PROMPTS, temperature=0, max_new_tokens=24, pad_token_id=PAD_ID, cache="static", compile=True)
        pairs = list(zip(a, b, strict=True))
        assert torch.equal(torch.stack([x for x, _ in pairs], 1), expected[:, T:])
        assert torch.equal(torch.stack([y for _, y in pairs], 1), expected[:, T:])
        assert len(decoding._POOL[ours][(3, 64, torch.float32, torch.device("cpu"))]) == 2  # both given back
    finally:
        decoding._POOL.pop(ours, None)
        torch._dynamo.reset()


def test_compile_without_compile_options_for_the_device_decodes_uncompiled_with_a_note(models, caplog, monkeypatch):
    ours, _ = models
    monkeypatch.setattr(decoding, "_COMPILED", {})
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
    # the model's own generate (the predict contract) is the same decoder
    gen = torch.Generator().manual_seed(9)
    assert torch.equal(ours.generate(torch.tensor([PROMPT]), 8, temperature=0.7, generator=gen),
                       generate(ours, PROMPT, max_new_tokens=8, temperature=0.7, seed=9))


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
