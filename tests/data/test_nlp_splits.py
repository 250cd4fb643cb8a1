"""Every split that is present is read and reaches `bigmodels evaluate --split`: CoNLL-2003 train/valid/test
(under each distribution's file names), SST-2 with a labelled or an unlabelled (GLUE) test.tsv, STS-B's aliases;
and `bigmodels.load_tokenizer` reads the tokenizer of anything `bigmodels.load` reads (a training run too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bigmodels
from bigmodels.config import DataConfig
from bigmodels.data import Tokenizer, build_data, load_tokenizer, read_conll2003, read_sst2, read_stsb
from bigmodels.data.nlp import split_files, sst2_unlabelled
from bigmodels.errors import CheckpointError, ConfigError, DataError
from bigmodels.testing import tiny_model

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data beside the repo
pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["eu", "rejects", "german", "call", "peter", "paris", "london", "lamb"]


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory) -> Tokenizer:
    """A tiny BERT WordPiece tokenizer whose every test word is one token."""
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    return Tokenizer.from_vocab(vocab)


def conll_file(path: Path, sentences: list[list[tuple[str, str]]]) -> None:
    blocks = ["".join(f"{w} NN B-NP {t}\n" for w, t in s) for s in sentences]
    path.write_text("-DOCSTART- -X- -X- O\n\n" + "\n".join(blocks), encoding="utf-8")


def conll_dir(root: Path, *, test: bool = True, names=("train.txt", "valid.txt", "test.txt")) -> Path:
    """train: every tag seen; valid: every word a person; test: every other word a person (so its F1 differs)."""
    root.mkdir(parents=True, exist_ok=True)
    conll_file(root / names[0], [[("eu", "B-ORG"), ("rejects", "O"), ("peter", "B-PER"), ("paris", "B-LOC")]] * 3)
    conll_file(root / names[1], [[(w, "B-PER") for w in WORDS[:4]]] * 2)
    if test:
        conll_file(root / names[2], [[(w, "B-PER" if i % 2 == 0 else "O") for i, w in enumerate(WORDS)]] * 3)
    return root


# ---------------------------------------------------------------------------------------------- readers


def test_conll_reads_each_split_under_every_name_it_goes_by(tmp_path):
    plain = conll_dir(tmp_path / "plain")
    assert list(split_files(plain, "conll2003")) == ["train", "val", "test"]
    for split in ("val", "valid", "dev", "validation"):
        assert read_conll2003(plain, split) == read_conll2003(plain / "valid.txt")
    assert len(read_conll2003(plain, "test")) == 3 and read_conll2003(plain, "test")[0][1][:2] == ["B-PER", "O"]
    original = conll_dir(tmp_path / "original", names=("eng.train", "eng.testa", "eng.testb"))
    assert {s: f.name for s, f in split_files(original, "conll2003").items()} == {
        "train": "eng.train", "val": "eng.testa", "test": "eng.testb"}
    assert read_conll2003(original, "test") == read_conll2003(plain, "test")
    held_back = conll_dir(tmp_path / "held_back", test=False)
    assert list(split_files(held_back, "conll2003")) == ["train", "val"]
    with pytest.raises(DataError, match=r"has no test file: none of test.txt, eng.testb \(files there: train.txt"):
        read_conll2003(held_back, "test")


def test_sst2_test_split_is_read_when_labelled_and_refused_plainly_when_not(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na fine film\t1\ndull\t0\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n", encoding="utf-8")
    (tmp_path / "test.tsv").write_text("index\tsentence\n0\tan unlabelled review\n", encoding="utf-8")  # GLUE's
    assert list(split_files(tmp_path, "sst2")) == ["train", "val", "test"]
    assert read_sst2(tmp_path, "val") == read_sst2(tmp_path, "dev") == [("good", 1)]
    assert sst2_unlabelled(tmp_path, "dev") is None
    assert "no label column" in sst2_unlabelled(tmp_path, "test")
    with pytest.raises(DataError, match=r"test.tsv: test.tsv has no label column \(GLUE keeps the SST-2 test labels "
                                         r"private\), so it cannot be scored; score the labelled dev split"):
        read_sst2(tmp_path, "test")
    (tmp_path / "labelled").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "labelled" / name).write_bytes((tmp_path / name).read_bytes())
    (tmp_path / "labelled" / "test.tsv").write_text("sentence\tlabel\ndull\t0\ngood\t1\n", encoding="utf-8")
    assert read_sst2(tmp_path / "labelled", "test") == [("dull", 0), ("good", 1)]


def test_stsb_split_aliases(tmp_path):
    (tmp_path / "stsb-en-dev.csv").write_text("a,b,1.5\n", encoding="utf-8")
    assert read_stsb(tmp_path, "val") == read_stsb(tmp_path, "dev") == [("a", "b", 1.5)]
    with pytest.raises(DataError, match="stsb-en-test.csv does not exist"):
        read_stsb(tmp_path, "test")


# ---------------------------------------------------------------------------------------------- bundles


def test_conll_bundle_exposes_the_test_split_when_present(tmp_path, word_tokenizer):
    with_test = build_data(DataConfig(name="conll2003", path=str(conll_dir(tmp_path / "a"))), tokenizer=word_tokenizer)
    assert (len(with_test.train), len(with_test.val), len(with_test.test)) == (3, 2, 3)
    assert with_test.meta["splits"] == {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}
    _, labels = with_test.test.get_batch(torch.arange(3))
    assert with_test.test.decode_tags(labels, labels)[0] == ["B-PER", "O"] * 4
    without = build_data(DataConfig(name="conll2003", path=str(conll_dir(tmp_path / "b", test=False))),
                         tokenizer=word_tokenizer)
    assert without.test is None and without.meta["splits"]["test"] is None


def test_sst2_bundle_uses_a_labelled_test_and_names_an_unlabelled_one(tmp_path, word_tokenizer):
    for name, rows in (("train.tsv", "peter\t1\nlamb\t0\n"), ("dev.tsv", "paris\t1\n")):
        (tmp_path / name).write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    assert build_data(DataConfig(name="sst2", path=str(tmp_path)), tokenizer=word_tokenizer).test is None
    (tmp_path / "test.tsv").write_text("index\tsentence\n0\tlondon\n", encoding="utf-8")
    glue = build_data(DataConfig(name="sst2", path=str(tmp_path)), tokenizer=word_tokenizer)
    assert glue.test is None and "no label column" in glue.meta["unlabelled_splits"]["test"]
    (tmp_path / "test.tsv").write_text("sentence\tlabel\nlondon\t0\neu\t1\n", encoding="utf-8")
    labelled = build_data(DataConfig(name="sst2", path=str(tmp_path)), tokenizer=word_tokenizer)
    assert len(labelled.test) == 2 and labelled.test.labels.tolist() == [0, 1]
    assert "unlabelled_splits" not in labelled.meta and labelled.meta["splits"]["test"] == "test.tsv"


def test_real_conll2003_layout_reads_every_split_there(word_tokenizer):
    path = SHARED_DATA / "conll2003"
    if not path.is_dir():
        pytest.skip(f"{path} not found: the real data sets live in ../shared/data beside the repository")
    present = split_files(path, "conll2003")
    assert {"train", "val"} <= present.keys()
    data = build_data(DataConfig(name="conll2003", path=str(path)), tokenizer=word_tokenizer)
    assert (len(data.train), len(data.val)) == (14041, 3250)  # the standard CoNLL-2003 English sentence counts
    if (path / "test.txt").is_file():
        assert data.test is not None and len(data.test) == len(read_conll2003(path, "test")) > 0
    else:  # this copy holds the test split back: say so, never pretend
        assert data.test is None and data.meta["splits"]["test"] is None and "test" not in present


# ---------------------------------------------------------------------------------------------- evaluate


@pytest.fixture
def person_tagger(tmp_path, word_tokenizer) -> Path:
    """A tiny token classifier that tags every token B-PER (its classifier is a constant), saved with its
    tokenizer: valid (all persons) scores F1 1, test (every other word a person) 2/3."""
    labels = ["O", "B-LOC", "B-ORG", "B-PER"]  # conll_label_list of the train file above
    model = tiny_model("minilm-l6-h384", head="token_classification", num_labels=len(labels))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    return bigmodels.save(model, tmp_path / "tagger", tokenizer=word_tokenizer, meta={"label_list": labels})


def test_evaluate_reports_conll_test_f1_apart_from_val(person_tagger, tmp_path, run_cli):
    data = conll_dir(tmp_path / "conll")
    args = ["evaluate", person_tagger, "--data", "conll2003", "--data-path", data]
    scores = {}
    for split in ("val", "test"):
        code, out, err = run_cli([*args, "--split", split])
        assert code == 0, err
        result = json.loads(out)
        assert result["split"] == split and result["data"] == "conll2003"
        scores[split] = result
    assert scores["val"]["f1"] == pytest.approx(1.0)
    assert scores["test"]["f1"] == pytest.approx(2 / 3) and scores["test"]["precision"] == pytest.approx(0.5)
    code, out, err = run_cli(args)  # the test split is the default where there is one
    assert code == 0 and json.loads(out)["split"] == "test" and json.loads(out)["f1"] == pytest.approx(2 / 3), err


def test_evaluate_names_why_a_test_split_cannot_be_scored(person_tagger, tmp_path, run_cli):
    code, _, err = run_cli(["evaluate", person_tagger, "--data", "conll2003", "--data-path",
                            conll_dir(tmp_path / "held_back", test=False), "--split", "test"])
    assert code == 2 and "no test file" in err and "--split with one of train, val" in err and "Traceback" not in err


def test_evaluate_sst2_on_glue_test_says_it_has_no_labels(tmp_path, word_tokenizer, run_cli):
    model = tiny_model("minilm-l6-h384", head="sequence_classification", num_labels=2)
    directory = bigmodels.save(model, tmp_path / "clf", tokenizer=word_tokenizer)
    for name, rows in (("train.tsv", "peter\t1\nlamb\t0\n"), ("dev.tsv", "paris\t1\n")):
        (tmp_path / name).write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    (tmp_path / "test.tsv").write_text("index\tsentence\n0\tlondon\n", encoding="utf-8")
    args = ["evaluate", directory, "--data", "sst2", "--data-path", tmp_path]
    code, _, err = run_cli([*args, "--split", "test"])
    assert code == 2 and "test.tsv has no label column" in err and "Traceback" not in err
    code, out, err = run_cli(args)  # no scorable test split: the default is val
    assert code == 0 and json.loads(out)["split"] == "val", err


# ---------------------------------------------------------------------------------------------- load_tokenizer


def test_load_tokenizer_reads_whatever_load_reads(tmp_path, word_tokenizer):
    model = tiny_model("minilm-l6-h384", head="token_classification", num_labels=3)
    run = tmp_path / "run"
    bigmodels.save(model, run / "checkpoints" / "step_2", tokenizer=word_tokenizer)
    (run / "checkpoints" / "best").write_text("step_2\n")
    text = "peter rejects london"
    for where in (run, run / "checkpoints", run / "checkpoints" / "step_2",
                  run / "checkpoints" / "step_2" / "tokenizer.json", run / "checkpoints" / "step_2" / "config.json"):
        tok = bigmodels.load_tokenizer(where)
        assert tok.encode(text) == word_tokenizer.encode(text), where
    bigmodels.load(run)  # the same paths bigmodels.load reads
    with pytest.raises(DataError, match=r"training run.*bigmodels.load_tokenizer"):
        load_tokenizer(run)  # the data layer reads tokenizer paths only, and says where to go for runs
    bare = bigmodels.save(model, tmp_path / "bare")
    with pytest.raises(DataError, match="holds no tokenizer"):
        bigmodels.load_tokenizer(bare)
    with pytest.raises(CheckpointError, match="does not exist"):
        bigmodels.load_tokenizer(tmp_path / "missing")


def test_encode_returns_ids_for_every_tokenizer_and_skip_is_encode_only(word_tokenizer):
    assert word_tokenizer.encode("peter zzz") == [2, 9, 1, 3]  # [CLS] peter [UNK] [SEP]
    assert word_tokenizer.encode("peter zzz", unknown="skip") == [2, 9, 3]
    with pytest.raises(ConfigError, match="'skip' drops unknown tokens in encode"):
        word_tokenizer.encode_batch(["peter zzz"], unknown="skip")
