"""The embedded numbers corpus (bigmodels/data/numbers.py) and the encoder-decoder on it: data, train, evaluate,
compare."""

from __future__ import annotations

import json

import pytest

from bigmodels.bench.compare import PLANS
from bigmodels.config import DataConfig
from bigmodels.data import build_data
from bigmodels.data.numbers import MAX_NUMBER, SPLITS, english, german, number_pairs
from bigmodels.errors import ConfigError

# spelled by hand from the Duden rules (units before tens, "eins" only at the end, one word below a million)
GERMAN = {0: "null", 1: "eins", 12: "zwölf", 17: "siebzehn", 21: "einundzwanzig", 30: "dreißig", 99: "neunundneunzig",
          100: "einhundert", 101: "einhunderteins", 116: "einhundertsechzehn", 1_000: "eintausend",
          2_001: "zweitausendeins", 21_000: "einundzwanzigtausend", 101_001: "einhunderteintausendeins",
          999_999: "neunhundertneunundneunzigtausendneunhundertneunundneunzig"}
ENGLISH = {0: "zero", 1: "one", 15: "fifteen", 40: "forty", 42: "forty-two", 100: "one hundred",
           1_001: "one thousand one", 110_042: "one hundred ten thousand forty-two",
           999_999: "nine hundred ninety-nine thousand nine hundred ninety-nine"}


@pytest.mark.parametrize("n", sorted(GERMAN))
def test_german_words(n):
    assert german(n) == GERMAN[n]


@pytest.mark.parametrize("n", sorted(ENGLISH))
def test_english_words(n):
    assert english(n) == ENGLISH[n]


def test_every_number_has_its_own_words():
    # a translation task needs a function: distinct numbers, distinct sentences on both sides
    numbers = range(0, MAX_NUMBER + 1, 997)
    assert len({english(n) for n in numbers}) == len({german(n) for n in numbers}) == len(numbers)


@pytest.mark.parametrize("bad", [-1, MAX_NUMBER + 1, 1.5, True])
def test_out_of_range_numbers_are_config_errors(bad):
    with pytest.raises(ConfigError, match="outside 0"):
        german(bad)


def test_splits_are_disjoint_and_reproducible():
    a = number_pairs({"train": 500, "val": 50, "test": 50}, seed=3)
    assert a == number_pairs({"train": 500, "val": 50, "test": 50}, seed=3)
    sources = [{s for s, _ in a[split]} for split in ("train", "val", "test")]
    assert all(len(s) == n for s, n in zip(sources, (500, 50, 50), strict=True))
    assert not (sources[0] & sources[1]) and not (sources[0] & sources[2]) and not (sources[1] & sources[2])
    with pytest.raises(ConfigError, match="split sizes"):
        number_pairs({"train": 0})


def test_numbers_bundle_is_a_translation_bundle():
    data = build_data(DataConfig(name="numbers", tokenizer="bpe:300", max_length=48))
    assert data.task == "translation" and data.meta["src_lang"] == "en" and data.meta["tgt_lang"] == "de"
    assert (len(data.train), len(data.val), len(data.test)) == tuple(SPLITS.values())
    x, y = data.val[0]
    assert y.numel() > 1 and data.model_args["src_vocab_size"] == 300
    with pytest.raises(ConfigError, match="bpe:N"):
        build_data("numbers")


@pytest.mark.slow
def test_transformer_mini_learns_numbers_and_compare_covers_it(run_cli, tmp_path):
    # trains on the embedded corpus through the CLI, evaluates with beam search, and compare includes the family
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "model=transformer_mini", "data.name=numbers", "data.tokenizer=bpe:300",
                            "data.batch_size=64", "optim.name=adamw", "optim.lr=0.003", "train.steps=60",
                            "train.device=cpu", "train.progress=false", f"train.out_dir={out}", "--quiet"])
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val"]["token_accuracy"] > 0.2  # untrained: ~1/300
    code, stdout, err = run_cli(["evaluate", out, "--split", "val", "--beams", "2", "--max-new-tokens", "24"])
    assert code == 0, err
    scores = json.loads(stdout)
    assert scores["sentences"] == SPLITS["val"] and 0.0 <= scores["exact_match"] <= 1.0 and scores["chrf"] > 10.0
    assert "transformer_mini" in __import__("bigmodels").list_models(task="translation")
    assert PLANS["numbers"].task == "translation"
    cmp_dir = tmp_path / "cmp"
    code, _, err = run_cli(["compare", "--quick", "--budget", "2", "--models", "transformer_mini", "--data", "numbers",
                            "--out", cmp_dir])
    assert code == 0, err
    rows = json.loads((cmp_dir / "results.json").read_text())
    rows = rows if isinstance(rows, list) else rows.get("results", rows.get("rows"))
    assert [r["model"] for r in rows] == ["transformer_mini"] and rows[0]["error"] is None
    assert 0.0 < rows[0]["metrics"]["val_token_accuracy"] <= 1.0
