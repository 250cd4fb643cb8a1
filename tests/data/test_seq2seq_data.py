"""Translation data, task, metrics and commands: parallel-file reading, the joint BPE, teacher-forcing batches,
the Seq2Seq loss, sacreBLEU, `translate_texts` / `evaluate_translation`, the `translate` and `evaluate`
commands, and the real Multi30k splits.

The model side is a stand-in (`CopyModel`) that follows the translation-model interface: ``model(input_ids,
attention_mask, decoder_input_ids) -> (B, T, V)`` logits. It "translates" by copying its source, so on a corpus
whose targets equal their sources every metric has an exact expected value. Decoding goes through a small
greedy stand-in for `bigmodels.infer.seq2seq.translate` with the same signature; the tests at the end use the
real `transformer_mini` and decoder, and skip until they are registered.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
import random
import sys
import types
from pathlib import Path

import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from torch import nn

import bigmodels
from bigmodels import registry
from bigmodels.config import DataConfig, SchedConfig, resolve_run_config
from bigmodels.data import IGNORE_INDEX, ParallelDataset, Tokenizer, build_data, read_parallel, train_joint_bpe
from bigmodels.data.parallel import encode_sources, read_lines, seq2seq_token_ids
from bigmodels.errors import ConfigError, DataError
from bigmodels.evaluate.bleu import corpus_bleu, evaluate_translation, translate_texts
from bigmodels.io import read_config, resolve_checkpoint, saved_tokenizer
from bigmodels.tasks import Seq2Seq, get_task
from bigmodels.train.optim import lr_lambda

pytestmark = pytest.mark.usefixtures("one_thread")

MULTI30K = Path(__file__).resolve().parents[3] / "shared" / "data" / "multi30k"
EN_DE = {"a": "ein", "small": "kleiner", "big": "großer", "dog": "Hund", "cat": "Kater", "runs": "rennt",
         "sleeps": "schläft", "red": "roter", "ball": "Ball", "man": "Mann", "sees": "sieht", "the": "der"}
MODEL_ARGS = {"src_vocab_size", "tgt_vocab_size", "pad_token_id", "bos_token_id", "eos_token_id",
              "decoder_start_token_id"}


def toy_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Word-for-word 'English -> German' sentences of 2..6 words."""
    rng = random.Random(seed)
    words = list(EN_DE)
    pairs = []
    for _ in range(n):
        en = [rng.choice(words) for _ in range(rng.randint(2, 6))]
        pairs.append((" ".join(en).capitalize() + ".", " ".join(EN_DE[w] for w in en).capitalize() + "."))
    return pairs


def write_split(directory: Path, split: str, pairs, *, gz: bool = False, langs=("en", "de")) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for side, lang in enumerate(langs):
        text = "".join(p[side] + "\n" for p in pairs)
        path = directory / f"{split}.{lang}{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """train (gz) / valid / test splits of the toy en-de corpus."""
    root = tmp_path_factory.mktemp("toy_en_de")
    write_split(root, "train", toy_pairs(200, seed=0), gz=True)
    write_split(root, "valid", toy_pairs(20, seed=1))
    write_split(root, "test", toy_pairs(12, seed=2))
    return root


@pytest.fixture(scope="module")
def copy_dir(tmp_path_factory) -> Path:
    """A 'translation' corpus whose targets are their sources: what CopyModel solves exactly."""
    root = tmp_path_factory.mktemp("toy_copy")
    for split, n, seed in (("train", 64, 3), ("val", 16, 4), ("test", 10, 5)):
        write_split(root, split, [(en, en) for en, _ in toy_pairs(n, seed)])
    return root


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_joint_bpe(toy_pairs(200), vocab_size=400)  # learns every merge of the toy corpus (357 tokens)


# ---------------------------------------------------------------------------------------------- stand-ins


@dataclasses.dataclass
class CopyConfig:
    src_vocab_size: int = 300
    tgt_vocab_size: int = 300
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int = 3
    decoder_start_token_id: int = 2
    max_position_embeddings: int = 64


class CopyModel(nn.Module):
    """Logits that put decoder position t on source token t while the source lasts, then on eos."""

    task = "translation"

    def __init__(self, config: CopyConfig) -> None:
        super().__init__()
        self.config = config
        self.boost = nn.Parameter(torch.tensor(10.0))
        self.bias = nn.Parameter(torch.zeros(config.tgt_vocab_size))

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None):
        (b, s), t = input_ids.shape, decoder_input_ids.shape[1]
        lengths = attention_mask.sum(1) if attention_mask is not None else torch.full((b,), s)
        source = F.pad(input_ids, (0, max(0, t - s)), value=self.config.pad_token_id)[:, :t]  # (B, T)
        position = torch.arange(t, device=input_ids.device)
        target = torch.where(position[None] < lengths[:, None], source, self.config.eos_token_id)
        return self.bias + self.boost * F.one_hot(target, self.config.tgt_vocab_size).float()  # (B, T, V)


def greedy_translate(model, input_ids, attention_mask=None, *, num_beams=1, max_new_tokens=128, length_penalty=1.0,
                     early_stopping=True) -> list[list[int]]:
    """The `bigmodels.infer.seq2seq.translate` signature, greedily (beams ignored)."""
    cfg = model.config
    decoder = torch.full((input_ids.shape[0], 1), cfg.decoder_start_token_id, dtype=torch.long)
    out: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        nxt = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder)[:, -1].argmax(-1)
        for i, token in enumerate(nxt.tolist()):
            if not done[i] and token != cfg.eos_token_id:
                out[i].append(token)
        done |= nxt == cfg.eos_token_id
        if done.all():
            break
        decoder = torch.cat([decoder, nxt[:, None]], dim=1)
    return out


@pytest.fixture
def stand_in_decoding(monkeypatch):
    """Route `bigmodels.infer.seq2seq.translate` to the greedy stand-in; records each call's batch."""
    calls: list[dict] = []

    def translate(model, input_ids, attention_mask=None, **kw):
        calls.append({"input_ids": input_ids, "attention_mask": attention_mask, **kw})
        return greedy_translate(model, input_ids, attention_mask, **kw)

    module = types.ModuleType("bigmodels.infer.seq2seq")
    module.translate = translate
    monkeypatch.setitem(sys.modules, "bigmodels.infer.seq2seq", module)
    return calls


@pytest.fixture(scope="module")
def copy_family():
    """CopyModel as a registered family, so it saves and loads like any bigmodels model."""
    registry.register_family("test_copy_seq2seq", CopyConfig, CopyModel)
    yield "test_copy_seq2seq"
    registry._FAMILIES.pop("test_copy_seq2seq", None)


def copy_model(family: str, tokenizer: Tokenizer) -> nn.Module:
    ids = seq2seq_token_ids(tokenizer)
    return registry.model_from_config(family, CopyConfig(tokenizer.vocab_size, tokenizer.vocab_size, **ids))


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------------------------------------- reading


def test_read_parallel_plain_and_gz_agree(tmp_path):
    pairs = toy_pairs(30)
    write_split(tmp_path / "plain", "train", pairs)
    write_split(tmp_path / "gz", "train", pairs, gz=True)
    plain = read_parallel(tmp_path / "plain" / "train.en", tmp_path / "plain" / "train.de")
    packed = read_parallel(tmp_path / "gz" / "train.en.gz", tmp_path / "gz" / "train.de.gz")
    assert plain == packed == pairs
    assert any("ß" in de or "ä" in de for _, de in plain)  # UTF-8 decoded, not bytes


def test_read_parallel_names_both_files_and_counts_on_mismatch(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.de").write_text("eins\nzwei\n")
    with pytest.raises(DataError) as info:
        read_parallel(tmp_path / "a.en", tmp_path / "a.de")
    message = str(info.value)
    assert "a.en" in message and "a.de" in message and "3 lines" in message and "has 2" in message


def test_read_parallel_skips_pairs_with_an_empty_side(tmp_path, caplog):
    (tmp_path / "s.en").write_text("a dog\n\n  \nthe cat\nred ball\n")
    (tmp_path / "s.de").write_text("ein Hund\nzwei\n  drei  \n\n roter Ball \n")
    with caplog.at_level(logging.WARNING, logger="bigmodels.data.parallel"):
        pairs = read_parallel(tmp_path / "s.en", tmp_path / "s.de")
    assert pairs == [("a dog", "ein Hund"), ("red ball", "roter Ball")]  # stripped; 3 of 5 skipped
    assert "skipped 3 of 5" in caplog.text
    (tmp_path / "e.en").write_text("\n\n")
    (tmp_path / "e.de").write_text("x\n\n")
    with pytest.raises(DataError, match="no pair of non-empty lines"):
        read_parallel(tmp_path / "e.en", tmp_path / "e.de")


def test_read_lines_keeps_alignment_and_reports_bad_files(tmp_path):
    # only \n ends a line: \r\n loses its \r, a U+2028 inside a sentence stays, the final \n adds no line
    (tmp_path / "t.txt").write_bytes("first\r\nsec\u2028ond\nthird\n".encode())
    assert read_lines(tmp_path / "t.txt") == ["first", "sec\u2028ond", "third"]
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"bad.txt:2: not valid UTF-8"):
        read_lines(tmp_path / "bad.txt")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(b"hello\n" * 100)[:30])
    with pytest.raises(DataError, match="damaged gzip"):
        read_lines(tmp_path / "broken.gz")
    with pytest.raises(DataError, match="does not exist"):
        read_lines(tmp_path / "missing.en")


# ---------------------------------------------------------------------------------------------- tokenizer


def test_joint_bpe_special_ids_round_trip_and_save(tok, tmp_path):
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert seq2seq_token_ids(tok) == {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3,
                                      "decoder_start_token_id": 2}
    for text in ("A big dog sees the red ball.", "Ein großer Hund sieht der roter Ball.", "Ünïcödé ✓ 日本"):
        ids = tok.encode(text)
        assert tok.decode(ids) == text and min(ids) > 3  # exact, and no special token added around a text
    # both languages took part in the merges: frequent German and English words are single tokens
    for word in (" schläft", " großer", " sleeps", " small"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert (again.pad_id, again.bos_id, again.eos_id) == (0, 2, 3)
    assert again.encode("Der Hund rennt.") == tok.encode("Der Hund rennt.")


def test_seq2seq_token_ids_rejects_a_tokenizer_without_bos_eos():
    chars = Tokenizer.train_chars("abc", special_tokens=("<pad>",))
    with pytest.raises(ConfigError, match=r"\['bos', 'eos'\]"):
        seq2seq_token_ids(chars)


# ---------------------------------------------------------------------------------------------- dataset


def test_batches_shift_decoder_inputs_and_pad_labels_with_ignore_index(tok):
    pairs = [("A dog.", "Ein Hund."), ("The big red dog runs.", "Der großer roter Hund rennt.")]
    ds = ParallelDataset(pairs, tok, max_length=64)
    x, y = ds.get_batch(torch.tensor([0, 1]))
    src = [tok.encode(s) for s, _ in pairs]
    tgt = [tok.encode(t) for _, t in pairs]
    assert set(x) == {"input_ids", "attention_mask", "decoder_input_ids"}
    assert x["input_ids"].shape == (2, max(map(len, src))) and x["input_ids"].dtype == torch.int64
    assert x["attention_mask"].sum(1).tolist() == [len(s) for s in src]
    assert x["input_ids"][0, len(src[0]):].eq(tok.pad_id).all()
    assert y.shape == x["decoder_input_ids"].shape == (2, max(map(len, tgt)) + 1)
    for row, target in enumerate(tgt):
        n = len(target) + 1
        assert y[row, :n].tolist() == [*target, tok.eos_id]  # labels: target + eos ...
        assert y[row, n:].eq(IGNORE_INDEX).all()  # ... then -100
        assert x["decoder_input_ids"][row, :n].tolist() == [tok.bos_id, *target]  # shifted right behind bos
        assert x["decoder_input_ids"][row, n:].eq(tok.pad_id).all()
    item_x, item_y = ds[1]
    assert item_x["input_ids"].tolist() == src[1] and item_y.tolist() == [*tgt[1], tok.eos_id]
    assert ds.lengths == [max(len(s), len(t) + 1) for s, t in zip(src, tgt, strict=True)]
    assert ds.sources[1] == pairs[1][0] and ds.targets[1] == pairs[1][1]


def test_truncation_keeps_max_length_source_tokens_and_max_length_minus_one_target_tokens(tok):
    long_en = "the big red dog sees the small cat " * 4
    long_de = "der großer roter Hund sieht der kleiner Kater " * 4
    assert len(tok.encode(long_en)) > 10 and len(tok.encode(long_de)) > 10
    ds = ParallelDataset([(long_en, long_de)], tok, max_length=6)
    x, y = ds.get_batch(torch.tensor([0]))
    assert x["input_ids"][0].tolist() == tok.encode(long_en)[:6]
    assert y[0].tolist() == [*tok.encode(long_de)[:5], tok.eos_id]
    assert x["decoder_input_ids"][0].tolist() == [tok.bos_id, *tok.encode(long_de)[:5]]
    assert ds.targets[0] == long_de  # the reference text stays whole
    assert encode_sources(tok, [long_en], 6) == [x["input_ids"][0].tolist()]  # one encoding path for translate
    with pytest.raises(ConfigError, match="max_length=1"):
        ParallelDataset([("a", "b")], tok, max_length=1)


# ---------------------------------------------------------------------------------------------- bundle


def test_build_data_translation_splits_model_args_and_meta(corpus_dir):
    data = build_data(DataConfig(name="translation", path=str(corpus_dir), tokenizer="bpe:300", max_length=32,
                                 src_lang="en", tgt_lang="de"))
    assert data.task == "translation"
    assert (len(data.train), len(data.val), len(data.test)) == (200, 20, 12)
    assert set(data.model_args) == MODEL_ARGS
    v = data.tokenizer.vocab_size
    assert data.model_args == {"src_vocab_size": v, "tgt_vocab_size": v, "pad_token_id": 0, "bos_token_id": 2,
                               "eos_token_id": 3, "decoder_start_token_id": 2}
    meta = data.meta
    assert meta["splits"] == {"train": "train", "val": "valid", "test": "test"}
    assert (meta["src_lang"], meta["tgt_lang"], meta["max_length"]) == ("en", "de", 32)
    assert meta["tokenizer"]["vocab_size"] == v and meta["tokenizer"]["special_tokens"]["eos"] == "<eos>"
    json.dumps(meta)  # saved with every checkpoint
    assert data.test.sources[0] == toy_pairs(12, seed=2)[0][0] and data.test.targets[0] == toy_pairs(12, seed=2)[0][1]
    # the reverse direction swaps the sides
    back = build_data(DataConfig(name="translation", path=str(corpus_dir), src_lang="de", tgt_lang="en"),
                      tokenizer=data.tokenizer)
    assert back.val.sources == data.val.targets and back.tokenizer is data.tokenizer


def test_build_data_translation_errors(corpus_dir, tmp_path, tok):
    base = {"tokenizer": "bpe:300", "src_lang": "en", "tgt_lang": "de"}
    with pytest.raises(ConfigError, match="data.src_lang"):
        build_data(DataConfig(name="translation", path=str(corpus_dir), tokenizer="bpe:300", src_lang="en"))
    with pytest.raises(ConfigError, match="bpe:N"):
        build_data(DataConfig(name="translation", path=str(corpus_dir), src_lang="en", tgt_lang="de"))
    with pytest.raises(ConfigError, match="bpe:N with N >= 260"):
        build_data(DataConfig(name="translation", path=str(corpus_dir), **{**base, "tokenizer": "bpe:10"}))
    with pytest.raises(ConfigError, match="not of 'digits'"):
        build_data(DataConfig(name="digits", src_lang="en"))
    with pytest.raises(DataError, match="needs path"):
        build_data(DataConfig(name="translation", **base))
    write_split(tmp_path / "noval", "train", toy_pairs(10))
    with pytest.raises(DataError, match=r"no val split \(val.en\[.gz\] or valid.en.*files there: train.de, train.en"):
        build_data(DataConfig(name="translation", path=str(tmp_path / "noval"), **base))
    write_split(tmp_path / "oneside", "train", toy_pairs(10))
    (tmp_path / "oneside" / "val.en").write_text("a dog\n")
    with pytest.raises(DataError, match=r"val.en but no val.de"):
        build_data(DataConfig(name="translation", path=str(tmp_path / "oneside"), **base))
    with pytest.raises(DataError, match="not a directory"):
        build_data(DataConfig(name="translation", path=str(tmp_path / "nowhere"), **base))


# ---------------------------------------------------------------------------------------------- task


def test_seq2seq_loss_is_cross_entropy_with_ignore_index_and_label_smoothing():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    y = torch.randint(0, 11, (3, 5))
    y[0, 3:] = IGNORE_INDEX
    y[2, 1:] = IGNORE_INDEX
    model = lambda **x: logits  # noqa: E731  (a model is anything called with the batch's keyword inputs)
    x = {"input_ids": torch.ones(3, 4, dtype=torch.long)}
    smooth = get_task("translation", label_smoothing=0.1)
    assert isinstance(smooth, Seq2Seq) and smooth.label_smoothing == 0.1
    loss, out = smooth.loss(model, x, y)
    expected = F.cross_entropy(logits.reshape(-1, 11), y.reshape(-1), ignore_index=-100, label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    assert out is logits
    plain, _ = get_task("translation").loss(model, x, y)
    torch.testing.assert_close(plain, F.cross_entropy(logits.reshape(-1, 11), y.reshape(-1), ignore_index=-100))
    assert not torch.isclose(plain, loss)
    # metrics: per real target token, summed over batches
    task, sums = get_task("translation"), {}
    keep = y != IGNORE_INDEX
    for rows in (slice(0, 2), slice(2, 3)):
        batch_loss = F.cross_entropy(logits[rows].reshape(-1, 11), y[rows].reshape(-1), ignore_index=-100)
        task.update(sums, batch_loss, logits[rows], y[rows])
    metrics = task.finalize(sums)
    assert task.count(x, y) == int(keep.sum()) == 9
    assert metrics["loss"] == pytest.approx(float(plain), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(float(plain)), rel=1e-5)
    assert metrics["token_accuracy"] == pytest.approx(float((logits.argmax(-1)[keep] == y[keep]).float().mean()))
    assert task.metric_names == ("loss", "perplexity", "token_accuracy") and task.unit == "tokens"
    with pytest.raises(ConfigError, match="label_smoothing.*classification"):
        get_task("language_modeling", label_smoothing=0.1)


def test_inverse_sqrt_schedule():
    f = lr_lambda(SchedConfig(name="inverse_sqrt", warmup_steps=100), total_steps=10_000)
    assert [f(0), f(49), f(99)] == [pytest.approx(0.01), pytest.approx(0.5), 1.0]  # linear warmup to the peak
    assert f(399) == pytest.approx(0.5) and f(9999) == pytest.approx(0.1)  # then sqrt(warmup / step)
    noam = [min((s + 1) ** -0.5, (s + 1) * 100 ** -1.5) for s in range(0, 1000, 37)]  # Vaswani et al., eq. 3
    torch.testing.assert_close(torch.tensor([f(s) for s in range(0, 1000, 37)]), torch.tensor(noam) * 100 ** 0.5)
    assert lr_lambda(SchedConfig(name="inverse_sqrt"), 100)(3) == pytest.approx(0.5)  # no warmup: 1/sqrt(step)


# ---------------------------------------------------------------------------------------------- BLEU


def test_corpus_bleu_is_sacrebleu():
    hyps = ["Ein Hund rennt über das Gras.", "Zwei Männer sitzen auf einer Bank.", "Eine Frau singt ."]
    refs = ["Ein Hund läuft über das Gras.", "Zwei Männer sitzen auf einer Bank.", "Eine Frau singt ein Lied."]
    ours = corpus_bleu(hyps, refs)
    theirs = sacrebleu.corpus_bleu(hyps, [refs])
    assert ours["bleu"] == pytest.approx(theirs.score) and 0 < ours["bleu"] < 100
    assert ours["precisions"] == pytest.approx(theirs.precisions)
    assert ours["brevity_penalty"] == pytest.approx(theirs.bp)
    assert ours["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert corpus_bleu(refs, refs)["bleu"] == pytest.approx(100.0)
    with pytest.raises(DataError, match="2 hypotheses and 3 references"):
        corpus_bleu(hyps[:2], refs)
    with pytest.raises(DataError, match="lists of sentences"):
        corpus_bleu("Ein Hund.", "Ein Hund.")


def test_translate_texts_batches_by_length_and_keeps_the_order(tok, stand_in_decoding):
    model = CopyModel(CopyConfig(tok.vocab_size, tok.vocab_size, **seq2seq_token_ids(tok)))
    texts = ["A dog.", "  ", "The big red dog sees a small cat.", "A cat runs.", "", "Ball."]
    out = translate_texts(model, tok, texts, num_beams=3, batch_size=2, max_new_tokens=40)
    assert out == ["A dog.", "", "The big red dog sees a small cat.", "A cat runs.", "", "Ball."]
    assert len(stand_in_decoding) == 2  # 4 non-empty texts in batches of 2; the empty ones never reach the model
    first, second = (c["attention_mask"].sum(1).tolist() for c in stand_in_decoding)
    assert first[0] >= first[1] >= second[0] >= second[1]  # longest first
    assert all(c["num_beams"] == 3 and c["max_new_tokens"] == 40 for c in stand_in_decoding)
    # sources keep at most max_position_embeddings tokens, as in training
    short = CopyModel(CopyConfig(tok.vocab_size, tok.vocab_size, **seq2seq_token_ids(tok), max_position_embeddings=3))
    cut = translate_texts(short, tok, ["The big red dog sees a small cat."], num_beams=1)
    assert cut == [tok.decode(tok.encode("The big red dog sees a small cat.")[:3])]


def test_evaluate_translation_scores_a_perfect_copy_at_100(tok, stand_in_decoding):
    model = CopyModel(CopyConfig(tok.vocab_size, tok.vocab_size, **seq2seq_token_ids(tok)))
    sentences = [en for en, _ in toy_pairs(15, seed=7)]
    result = evaluate_translation(model, tok, sentences, sentences, num_beams=2, batch_size=4)
    assert result["bleu"] == pytest.approx(100.0) and result["hypotheses"] == sentences
    assert (result["num_beams"], result["sentences"]) == (2, 15) and "tok:13a" in result["signature"]
    german = [de for _, de in toy_pairs(15, seed=7)]
    wrong = evaluate_translation(model, tok, sentences, german, num_beams=1)
    assert wrong["bleu"] == pytest.approx(sacrebleu.corpus_bleu(sentences, [german]).score) and wrong["bleu"] < 50
    with pytest.raises(DataError, match="15 source sentences and 2 references"):
        evaluate_translation(model, tok, sentences, german[:2])


# ---------------------------------------------------------------------------------------------- training + CLI


@pytest.fixture(scope="module")
def copy_run(copy_dir, copy_family, tmp_path_factory):
    """A 3-step training run of CopyModel on the copy corpus (label smoothing, length-grouped batches)."""
    out = tmp_path_factory.mktemp("copy_run")
    cfg = resolve_run_config(None, [
        "data.name=translation", f"data.path={copy_dir}", "data.src_lang=en", "data.tgt_lang=de",
        "data.tokenizer=bpe:300", "data.max_length=32", "data.batch_size=8", "data.group_by_length=true",
        "train.steps=3", "train.label_smoothing=0.1", "train.device=cpu", "train.progress=false",
        "sched.name=inverse_sqrt", "sched.warmup_steps=2", f"train.out_dir={out}"])
    data = build_data(DataConfig(name="translation", path=str(copy_dir), tokenizer="bpe:300", max_length=32,
                                 src_lang="en", tgt_lang="de"))
    with bigmodels.Trainer(cfg, model=copy_model(copy_family, data.tokenizer), data=data) as trainer:
        summary = trainer.fit()
    return out, summary


def test_training_reports_seq2seq_metrics_and_saves_the_tokenizer(copy_run):
    out, summary = copy_run
    assert summary["status"] == "completed" and summary["unit"] == "tokens"
    val = summary["val"]
    assert val["token_accuracy"] == 1.0 and val["perplexity"] == pytest.approx(math.exp(val["loss"]), rel=1e-5)
    checkpoint = resolve_checkpoint(out)
    assert (checkpoint / "tokenizer.json").is_file()
    meta = read_config(checkpoint)["meta"]
    assert (meta["task"], meta["src_lang"], meta["tgt_lang"]) == ("translation", "en", "de")


def test_evaluate_command_reports_sacrebleu(copy_run, copy_dir, stand_in_decoding, run_cli):
    out, _ = copy_run
    code, stdout, err = run_cli(["evaluate", out, "--beams", "2"])  # the data it was trained on: test split
    assert code == 0, err
    report = json.loads(stdout)
    assert report["data"] == "translation" and report["split"] == "test" and report["split_name"] == "test"
    assert report["bleu"] == pytest.approx(100.0) and report["sentences"] == 10 and report["num_beams"] == 2
    assert report["token_accuracy"] == 1.0 and report["signature"].startswith("nrefs:1|case:mixed")
    assert report["languages"] == "en-de" and "hypotheses" not in report
    code, stdout, err = run_cli(["evaluate", out, "--data", "translation", "--data-path", copy_dir, "--split", "val"])
    assert code == 0, err
    assert json.loads(stdout)["sentences"] == 16 and json.loads(stdout)["num_beams"] == 4
    code, _, err = run_cli(["evaluate", out, "--split", "dev"])
    assert code == 2 and len(error_lines(err)) == 1 and "train, val, test" in err
    only_test = copy_dir.parent / "only_test"  # evaluation reads just the split it scores
    write_split(only_test, "test", [(en, en) for en, _ in toy_pairs(5, seed=9)])
    code, stdout, err = run_cli(["evaluate", out, "--data-path", only_test])
    assert code == 0, err
    assert json.loads(stdout)["sentences"] == 5 and json.loads(stdout)["bleu"] == pytest.approx(100.0)
    code, stdout, err = run_cli(["evaluate", out, "--data-path", only_test, "--split", "val"])
    assert code == 2 and len(error_lines(err)) == 1 and "has no val split" in err


def test_translate_command_prints_one_line_per_input(copy_run, stand_in_decoding, run_cli, tmp_path):
    out, _ = copy_run
    code, stdout, err = run_cli(["translate", out, "A small dog runs.", "", "The cat."])
    assert code == 0, err
    assert stdout == "A small dog runs.\n\nThe cat.\n"  # the copy model's 'translations'; empty in, empty out
    (tmp_path / "in.txt.gz").write_bytes(gzip.compress(b"A red ball.\n\nA man sees the dog.\n"))
    code, stdout, err = run_cli(["translate", out, "--file", tmp_path / "in.txt.gz", "--out", tmp_path / "hyp.txt",
                                 "--beams", "1"])
    assert code == 0, err
    assert (tmp_path / "hyp.txt").read_text() == "A red ball.\n\nA man sees the dog.\n"
    assert "3 translations" in stdout


def test_translate_command_errors_are_one_line(copy_run, run_cli, tmp_path):
    out, _ = copy_run
    (tmp_path / "in.txt").write_text("A dog.\n")
    cases = [
        (["translate", out, "--file", tmp_path / "missing.txt"], "missing.txt does not exist"),
        (["translate", out, "A dog.", "--file", tmp_path / "in.txt"], "not both"),
        (["translate", out], "give sentences"),
        (["translate", out, "A dog.", "--beams", "0"], "--beams 0"),
        (["translate", out, "A dog.", "--out", tmp_path], "is a directory"),
        (["translate", tmp_path / "no_model", "A dog."], "does not exist"),
    ]
    for args, message in cases:
        code, stdout, err = run_cli(args)
        assert code == 2 and stdout == "", args
        assert len(error_lines(err)) == 1 and message in error_lines(err)[0], (args, err)
        assert "Traceback" not in err


def test_translate_and_evaluate_refuse_other_models(tmp_path, run_cli, corpus_dir):
    bigmodels.save(bigmodels.create_model("mlp_small"), tmp_path / "mlp")
    code, _, err = run_cli(["translate", tmp_path / "mlp", "A dog."])
    assert code == 2 and "image_classification model; `translate` needs a translation model" in err
    code, _, err = run_cli(["evaluate", tmp_path / "mlp", "--data", "translation", "--data-path", corpus_dir])
    assert code == 2 and len(error_lines(err)) == 1 and "needs a translation model" in err
    code, _, err = run_cli(["evaluate", tmp_path / "mlp", "--data", "digits", "--beams", "2"])
    assert code == 2 and "--beams" in error_lines(err)[0]


# ---------------------------------------------------------------------------------------------- real data


def test_multi30k_bundle_counts():
    if not MULTI30K.is_dir():
        pytest.skip(f"{MULTI30K} not found: the real data sets live in ../shared/data beside the repository")
    data = build_data(DataConfig(name="translation", path=str(MULTI30K), tokenizer="bpe:1000", max_length=64,
                                 src_lang="en", tgt_lang="de"))
    assert (len(data.train), len(data.val), len(data.test)) == (29000, 1014, 1000)
    assert data.meta["splits"] == {"train": "train", "val": "val", "test": "test_2016_flickr"}
    assert data.tokenizer.vocab_size == 1000 and data.model_args["tgt_vocab_size"] == 1000
    assert data.test.sources[0] == "A man in an orange hat starring at something."
    assert data.test.targets[0] == "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt."
    assert data.tokenizer.decode(data.tokenizer.encode(data.test.targets[0])) == data.test.targets[0]
    assert max(data.train.lengths) <= 64
    x, y = data.val.get_batch(torch.arange(8))
    assert y.shape == x["decoder_input_ids"].shape and (y[:, 0] != IGNORE_INDEX).all()


# ---------------------------------------------------------------------------------------------- real model


def _real_transformer():
    if "transformer_mini" not in bigmodels.list_models():
        pytest.skip("transformer_mini is not registered yet (bigmodels/models/transformer.py)")
    return pytest.importorskip("bigmodels.infer.seq2seq")


def test_transformer_mini_trains_and_translates(corpus_dir, tmp_path, run_cli):
    _real_transformer()
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "model=transformer_mini", "data.name=translation", f"data.path={corpus_dir}",
                            "data.src_lang=en", "data.tgt_lang=de", "data.tokenizer=bpe:300", "data.max_length=32",
                            "data.batch_size=16", "train.steps=4", "train.label_smoothing=0.1", "train.device=cpu",
                            "train.progress=false", f"train.out_dir={out}", "--quiet"])
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert math.isfinite(summary["val"]["loss"]) and 0.0 <= summary["test"]["token_accuracy"] <= 1.0
    model, tok = bigmodels.load(out), saved_tokenizer(out)
    sources = ["A dog runs.", "", "The big red ball."]
    hyps = translate_texts(model, tok, sources, num_beams=2, max_new_tokens=8)
    assert len(hyps) == 3 and hyps[1] == "" and all(isinstance(h, str) for h in hyps)
    result = evaluate_translation(model, tok, sources[::2], ["Ein Hund rennt.", "Der großer roter Ball."],
                                  num_beams=1, max_new_tokens=8)
    assert 0.0 <= result["bleu"] <= 100.0
    code, stdout, err = run_cli(["translate", out, *sources, "--beams", "2", "--max-new-tokens", "8"])
    assert code == 0, err
    assert stdout.count("\n") == 3 and stdout.splitlines()[1] == ""
