"""The command line, in process through ``bigmodels.cli.main`` (and once as ``python -m bigmodels``)."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import torch
from PIL import Image

import bigmodels
from bigmodels.cli import COMMANDS, main, parameters, summary
from bigmodels.data import CharTokenizer
from bigmodels.data.images import load_digits_data

# every training run of these tests: on the CPU, no progress bar, never into the repository
CPU = ["train.device=cpu", "train.progress=false"]


def call(args) -> tuple[int, str, str]:
    """``main(args)`` with stdout/stderr captured, for module-scoped fixtures (capsys is per test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def error_line(code: int, out: str, err: str) -> str:
    """The one ``error:`` line of a clean user error (exit 2, no traceback); returns it."""
    assert code == 2, f"exit code {code}; stderr: {err}"
    assert "Traceback" not in out + err
    assert "internal error" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    return lines[0]


def squash(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------ help


def test_top_level_help(run_cli):
    code, out, _ = run_cli(["--help"])
    assert code == 0
    assert "The `bigmodels` command line" in squash(out)
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help(run_cli, command):
    code, out, _ = run_cli([command, "--help"])
    assert code == 0
    assert f"usage: bigmodels {command}" in out
    description = inspect.getdoc(COMMANDS[command]).splitlines()[0]
    assert squash(description) in squash(out)


def _help_items(command: str) -> list[tuple[str, str | None]]:
    """(how the parameter reads in --help, its help text) for every parameter of a command."""
    items = []
    for param, _, help_ in parameters(COMMANDS[command]):
        shown = "--" + param.name.replace("_", "-") if param.kind is param.KEYWORD_ONLY else param.name
        items.append((shown, help_))
    return items


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_argument_and_option_has_a_help_text(run_cli, command):
    code, out, _ = run_cli([command, "--help"])
    assert code == 0
    items = _help_items(command)
    missing = [shown for shown, help_ in items if not (help_ and help_.strip())]
    assert not missing, f"`bigmodels {command}`: no help text for {missing}; annotate them: Annotated[type, 'help']"
    for shown, help_ in items:  # compared without whitespace: argparse wraps lines, also at hyphens
        assert "".join(help_.split()) in "".join(out.split()), f"`bigmodels {command} --help` lacks {shown}'s help"
        if shown.startswith("--"):
            assert shown in out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_a_one_line_summary(run_cli, command):
    lines = (inspect.getdoc(COMMANDS[command]) or "").splitlines()
    assert lines and lines[0].strip(), f"`bigmodels {command}` has no docstring"
    assert lines[0].endswith("."), f"`bigmodels {command}`: the first docstring line is not a sentence: {lines[0]!r}"
    assert len(lines) == 1 or not lines[1].strip(), f"`bigmodels {command}`: the summary runs onto a second line"
    code, out, _ = run_cli(["--help"])
    assert code == 0 and squash(summary(COMMANDS[command])) in squash(out)


def test_predict_help_describes_inputs(run_cli):
    code, out, _ = run_cli(["predict", "--help"])
    assert code == 0
    assert "dotted config overrides" not in out and "KEY=VALUE" not in out


def test_version(run_cli):
    code, out, _ = run_cli(["--version"])
    assert code == 0 and out.strip() == f"bigmodels {bigmodels.__version__}"


def test_no_command_prints_help_and_exits_2(run_cli):
    code, out, _ = run_cli([])
    assert code == 2 and "usage: bigmodels" in out


def test_unknown_command(run_cli):
    code, out, err = run_cli(["frobnicate"])
    assert code == 2
    assert "invalid choice: 'frobnicate'" in err
    assert "Traceback" not in out + err


# ------------------------------------------------------------------------------------------ models


def _table_rows(out: str) -> dict[str, str]:
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["model", "family", "task", "params"]
    return {line.split()[0]: line for line in lines[2:] if line.strip()}


def test_models_lists_every_model_with_thousands_separators(run_cli):
    code, out, _ = run_cli(["models"])
    assert code == 0
    rows = _table_rows(out)
    assert sorted(rows) == bigmodels.list_models()
    for name, line in rows.items():
        n = sum(p.numel() for p in bigmodels.create_model(name).parameters())
        assert f" {n:,} " in line, f"{name}: {n:,} not in {line!r}"
        assert bigmodels.get_spec(name).task in line
    assert "1,969,738" in rows["cnn_keras"]
    assert "16,310" in rows["lstm_keras"]


def test_models_pattern_filters(run_cli):
    code, out, _ = run_cli(["models", "--pattern", "lstm*"])
    assert code == 0
    assert sorted(_table_rows(out)) == ["lstm_classifier", "lstm_keras"]
    code, out, _ = run_cli(["models", "--task", "language_modeling"])
    assert code == 0
    rows = _table_rows(out)
    assert {"char_gru", "char_lstm", "char_rnn", "gpt2", "gpt_mini"} <= set(rows)
    assert sorted(rows) == bigmodels.list_models(task="language_modeling")


def test_models_pattern_matching_nothing(run_cli):
    line = error_line(*run_cli(["models", "--pattern", "zzz*"]))
    assert "zzz*" in line


def test_python_dash_m_bigmodels(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bigmodels", "models", "--pattern", "cnn*"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cnn_keras" in proc.stdout and "1,969,738" in proc.stdout
    assert "mlp_small" not in proc.stdout
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------ bad input


def test_unknown_model_with_suggestion(run_cli, tmp_path):
    line = error_line(*run_cli(["train", "model=mlp_smal", f"train.out_dir={tmp_path}/run", *CPU]))
    assert "unknown model 'mlp_smal'" in line and "Did you mean 'mlp_small'" in line
    line = error_line(*run_cli(["train", "model=nosuch", f"train.out_dir={tmp_path}/run", *CPU]))
    assert "'nosuch'" in line and "bigmodels models" in line
    assert not (tmp_path / "run").exists()


def test_unknown_config_key_lists_valid_keys(run_cli, tmp_path):
    line = error_line(*run_cli(["train", "--optim.lrr=0.1", f"train.out_dir={tmp_path}/run", *CPU]))
    assert "lrr" in line and "Did you mean 'lr'" in line
    assert "Valid keys: name, lr, weight_decay" in line


def test_mistyped_value(run_cli, tmp_path):
    line = error_line(*run_cli(["train", "train.epochs=abc", f"train.out_dir={tmp_path}/run", *CPU]))
    assert "train.epochs='abc'" in line and "whole number" in line


def test_invalid_value(run_cli, tmp_path):
    line = error_line(*run_cli(["train", "train.precision=fp8", f"train.out_dir={tmp_path}/run", *CPU]))
    assert "train.precision='fp8'" in line and "fp32" in line


def test_missing_data_path(run_cli, tmp_path):
    missing = tmp_path / "nothing"
    line = error_line(*run_cli([
        "train", "model=cnn_mnist", "data.name=mnist", f"data.path={missing}", f"train.out_dir={tmp_path}/run", *CPU,
    ]))
    assert str(missing) in line


def test_missing_recipe(run_cli, tmp_path):
    recipe = tmp_path / "nope.yaml"
    line = error_line(*run_cli(["train", str(recipe), f"train.out_dir={tmp_path}/run", *CPU]))
    assert str(recipe) in line and "does not exist" in line


def test_model_for_another_task(run_cli, tmp_path):
    line = error_line(*run_cli(["train", "model=char_rnn", "data.name=digits", f"train.out_dir={tmp_path}/r", *CPU]))
    assert "char_rnn" in line and "language_modeling" in line and "image_classification" in line


def test_cnn_too_many_stages_is_a_clean_error(run_cli, tmp_path):
    line = error_line(*run_cli([
        "train", "model=cnn_small", "model.channels=[8,8,8,8]", "train.steps=1", f"train.out_dir={tmp_path}/r", *CPU,
    ]))
    assert "img_size" in line


def test_evaluate_missing_directory(run_cli, tmp_path):
    missing = tmp_path / "no_such_run"
    line = error_line(*run_cli(["evaluate", str(missing)]))
    assert str(missing) in line and "does not exist" in line


def test_evaluate_directory_without_model(run_cli, tmp_path):
    line = error_line(*run_cli(["evaluate", str(tmp_path)]))
    assert str(tmp_path) in line and "no model found" in line


def test_evaluate_unreadable_weights(run_cli, tmp_path):
    bigmodels.save(bigmodels.create_model("mlp_small", hidden=(32,)), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(b"\x00garbage, not safetensors" * 8)
    line = error_line(*run_cli(["evaluate", str(tmp_path / "m")]))
    assert str(weights) in line and "unreadable" in line


def test_evaluate_unreadable_config(run_cli, tmp_path):
    bigmodels.save(bigmodels.create_model("mlp_small", hidden=(32,)), tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    config.write_text("{not json")
    line = error_line(*run_cli(["evaluate", str(tmp_path / "m")]))
    assert str(config) in line and "unreadable" in line


def test_evaluate_mismatched_checkpoint(run_cli, tmp_path):
    directory = tmp_path / "m"
    bigmodels.save(bigmodels.create_model("mlp_small", hidden=(32,)), directory)
    record = json.loads((directory / "config.json").read_text())
    record["config"]["hidden"] = [64]
    (directory / "config.json").write_text(json.dumps(record))
    line = error_line(*run_cli(["evaluate", str(directory)]))
    assert "model.safetensors" in line and "does not match" in line


def test_evaluate_on_data_of_another_task(run_cli, tmp_path):
    bigmodels.save(bigmodels.create_model("mlp_small", hidden=(32,)), tmp_path / "m")
    line = error_line(*run_cli(["evaluate", str(tmp_path / "m"), "--data", "pydoc", "--split", "val"]))
    assert "image_classification" in line and "language_modeling" in line


# ------------------------------------------------------------------------------------------ argv plumbing


def echo(first: Annotated[str, "the first argument"], *items: Annotated[str, "the other arguments"],
         count: Annotated[int, "a number"] = 1, flag: Annotated[bool, "a switch"] = False) -> int:
    """Print what the plumbing passed."""
    print(json.dumps({"first": first, "items": list(items), "count": count, "flag": flag}))
    return 0


@pytest.fixture
def with_echo(monkeypatch):
    monkeypatch.setitem(COMMANDS, "echo", echo)


def test_inputs_reach_the_command_in_order_around_options(run_cli, with_echo):
    code, out, err = run_cli(["echo", "a", "b", "--count", "3", "c", "-2", "-0.5", "-", "--flag"])
    assert code == 0, err
    assert json.loads(out) == {"first": "a", "items": ["b", "c", "-2", "-0.5", "-"], "count": 3, "flag": True}
    code, out, err = run_cli(["echo", "a", "--", "--not-an-option", "-x"])  # after --, everything is an input
    assert code == 0, err
    assert json.loads(out)["items"] == ["--not-an-option", "-x"]


@pytest.mark.parametrize("args, named", [
    (["echo", "a", "b", "--cont", "3"], "--cont"),
    (["echo", "a", "--cont=3", "b"], "--cont"),
    (["echo", "a", "b", "--falg"], "--falg"),
])
def test_a_mistyped_option_is_an_error_naming_the_closest_option(run_cli, with_echo, args, named):
    code, out, err = run_cli(args)
    line = error_line(code, out, err)
    assert f"unknown option {named} " in line and "`bigmodels echo`" in line
    assert ("did you mean --count?" if named == "--cont" else "did you mean --flag?") in line
    assert out == ""  # the command never ran


def test_an_unknown_option_far_from_every_option_lists_them(run_cli, with_echo):
    line = error_line(*run_cli(["echo", "a", "--zzzzzz"]))
    assert "unknown option --zzzzzz" in line and "--count" in line and "--flag" in line


def test_predict_never_reads_a_mistyped_option_as_an_image(run_cli, tmp_path):
    image = tmp_path / "a.png"
    Image.new("L", (8, 8)).save(image)
    code, out, err = run_cli(["predict", str(tmp_path / "no_such_run"), str(image), "--topk", "3"])
    line = error_line(code, out, err)
    assert "unknown option --topk" in line and "did you mean --top-k?" in line
    assert "cannot read image" not in err and out == ""


def test_evaluate_suggests_the_option_it_has(run_cli, tmp_path):
    line = error_line(*run_cli(["evaluate", str(tmp_path), "--batchsize", "8"]))
    assert "unknown option --batchsize" in line and "did you mean --batch-size?" in line


def test_train_takes_dashed_overrides_but_not_mistyped_options(run_cli, tmp_path):
    line = error_line(*run_cli(["train", "model=mlp_small", "--quite", f"train.out_dir={tmp_path}/run", *CPU]))
    assert "unknown option --quite" in line and "did you mean --quiet?" in line and "key=value" in line
    line = error_line(*run_cli(["train", "model=mlp_small", "--optim.lr", "0.1", f"train.out_dir={tmp_path}/r", *CPU]))
    assert "unknown option --optim.lr" in line and "--optim.lr=3e-4" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()


def test_train_without_a_recipe_or_a_model_is_an_error(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default run would land: runs/default
    for args in (["train"], ["train", "--quiet"], ["train", "data.name=digits", "train.steps=1", *CPU]):
        line = error_line(*run_cli(args))
        assert "recipe" in line and "model=NAME" in line and "bigmodels models" in line
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ the happy path: images


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits") / "run"
    code, out, err = call([
        "train", "model=mlp_small", "data.name=digits", "train.steps=20", "train.eval_every=10",
        f"train.out_dir={run}", *CPU,
    ])
    assert code == 0, err
    return run, out


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory):
    """Two 8x8 grayscale PNGs from the digits test split, with their labels."""
    folder = tmp_path_factory.mktemp("pngs")
    _, test = load_digits_data()
    paths = []
    for i, name in enumerate(("a.png", "b.png")):
        Image.fromarray(test.images[i, 0].numpy(), mode="L").save(folder / name)
        paths.append(folder / name)
    return paths, [int(y) for y in test.labels[:2]]


def test_train_writes_a_complete_run(digits_run):
    run, out = digits_run
    assert "status: completed at step 20" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 20
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} >= {"train", "val"}
    assert [r["step"] for r in records if r["split"] == "val"] == [10, 20]
    assert all(r["loss"] is not None and r["loss"] > 0 for r in records)
    png = run / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    ckpts = run / "checkpoints"
    for pointer in ("best", "latest"):
        target = ckpts / (ckpts / pointer).read_text().strip()
        assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    assert (ckpts / "latest").read_text().strip() == "step_00000020"
    assert str(ckpts / (ckpts / "best").read_text().strip()) == summary["best_checkpoint"]


def test_evaluate_trained_run(run_cli, digits_run):
    run, _ = digits_run
    code, out, err = run_cli(["evaluate", str(run)])
    assert code == 0, err
    result = json.loads(out)
    assert result["data"] == "digits" and result["split"] == "test"
    assert result["accuracy"] > 0.5
    assert Path(result["checkpoint"]).parent == run / "checkpoints"
    summary = json.loads((run / "summary.json").read_text())
    assert result["accuracy"] == pytest.approx(summary["test"]["accuracy"])


def _parse_predictions(out: str) -> dict[str, list[tuple[str, float]]]:
    result = {}
    for line in out.splitlines():
        path, _, ranked = line.rpartition(": ")
        pairs = [item.split(" ") for item in ranked.split(", ")]
        result[path] = [(label, float(p)) for label, p in pairs]
    return result


def test_predict_images(run_cli, digits_run, digit_pngs):
    run, _ = digits_run
    paths, _ = digit_pngs
    code, out, err = run_cli(["predict", str(run), *map(str, paths)])
    assert code == 0, err
    preds = _parse_predictions(out)
    assert list(preds) == [str(p) for p in paths]
    # the same preprocessing by hand: uint8 -> [0, 1] -> normalised with the run's statistics
    model = bigmodels.load(run).eval()
    mean, std = model.info.meta["mean"][0], model.info.meta["std"][0]
    for path in paths:
        ranked = preds[str(path)]
        assert len(ranked) == 5
        probs = [p for _, p in ranked]
        assert all(0.0 <= p <= 1.0 for p in probs)
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) <= 1.0 + 5e-3
        assert all(label in [str(i) for i in range(10)] for label, _ in ranked)
        x = torch.from_numpy(np.array(Image.open(path))).float().div(255)[None, None]
        with torch.no_grad():
            expected = model((x - mean) / std).softmax(-1)[0]
        assert ranked[0][0] == str(int(expected.argmax()))
        assert ranked[0][1] == pytest.approx(float(expected.max()), abs=1e-3)


def test_predict_top_k(run_cli, digits_run, digit_pngs):
    run, _ = digits_run
    paths, _ = digit_pngs
    code, out, _ = run_cli(["predict", str(run), str(paths[0]), "--top-k", "3"])
    assert code == 0
    assert len(_parse_predictions(out)[str(paths[0])]) == 3


def test_predict_needs_inputs(run_cli, digits_run):
    line = error_line(*run_cli(["predict", str(digits_run[0])]))
    assert "at least one input" in line


def test_predict_on_a_file_that_is_not_an_image(run_cli, digits_run, digit_pngs, tmp_path):
    run, _ = digits_run
    good = digit_pngs[0][0]
    bad = tmp_path / "bad.png"
    bad.write_text("this is not an image")
    missing = tmp_path / "missing.png"
    # an unreadable file is reported with its path (exit 2); the readable ones are still classified
    code, out, err = run_cli(["predict", str(run), str(good), str(bad)])
    line = error_line(code, out, err)
    assert str(bad) in line and "cannot read image" in line
    assert list(_parse_predictions(out)) == [str(good)]
    line = error_line(*run_cli(["predict", str(run), str(missing)]))
    assert str(missing) in line


@pytest.mark.parametrize("k", ["0", "-2"])
def test_predict_top_k_below_one_is_an_error(run_cli, digits_run, digit_pngs, k):
    code, out, err = run_cli(["predict", str(digits_run[0]), str(digit_pngs[0][0]), "--top-k", k])
    assert f"--top-k {k}" in error_line(code, out, err) and out == ""  # never an empty prediction


def test_predict_on_a_translation_model_points_to_translate(run_cli, tmp_path):
    from bigmodels.testing import tiny_model

    bigmodels.save(tiny_model("transformer_mini"), tmp_path / "mt")
    line = error_line(*run_cli(["predict", str(tmp_path / "mt"), "A dog runs."]))
    assert "translation model" in line and "bigmodels translate" in line


def test_predict_on_a_sentence_embedding_model_points_to_embed(run_cli, embedder):
    line = error_line(*run_cli(["predict", str(embedder), "the dog runs"]))
    assert "sentence-embedding model" in line and "bigmodels embed" in line


def test_predict_text_classifier_and_ner(run_cli, tmp_path):
    from bigmodels.data.tokenizers import Tokenizer
    from bigmodels.testing import tiny_overrides

    words = "the a dog cat runs sleeps john lives in berlin".split()
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = Tokenizer.from_vocab(tmp_path / "vocab.txt")
    tiny = tiny_overrides("bert-base") | {"vocab_size": tok.vocab_size}
    torch.manual_seed(0)
    classifier = bigmodels.create_model("bert-base", **tiny, head="sequence_classification", num_labels=2)
    bigmodels.save(classifier, tmp_path / "sst", tokenizer=tok, meta={"class_names": ["negative", "positive"]})
    code, out, err = run_cli(["predict", str(tmp_path / "sst"), "the dog runs", "a cat sleeps", "--top-k", "2"])
    assert code == 0, err
    preds = _parse_predictions(out)
    assert list(preds) == ["the dog runs", "a cat sleeps"]
    assert all(sorted(label for label, _ in ranked) == ["negative", "positive"] for ranked in preds.values())
    assert all(sum(p for _, p in ranked) == pytest.approx(1.0, abs=2e-3) for ranked in preds.values())
    tagger = bigmodels.create_model("bert-base", **tiny, head="token_classification", num_labels=3)
    bigmodels.save(tagger, tmp_path / "ner", tokenizer=tok, meta={"label_list": ["O", "B-PER", "B-LOC"]})
    code, out, err = run_cli(["predict", str(tmp_path / "ner"), "John lives in Berlin"])
    assert code == 0, err
    row = json.loads(out)
    assert row["text"] == "John lives in Berlin"
    for entity in row["entities"]:
        assert set(entity) == {"entity_group", "score", "word", "start", "end"}
        assert row["text"][entity["start"]:entity["end"]] == entity["word"] and entity["entity_group"] in ("PER", "LOC")


# ------------------------------------------------------------------------------------------ the happy path: text


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("lm") / "run"
    code, out, err = call([
        "train", "model=char_gru", "data.name=pydoc", "data.block_size=32", "model.hidden_size=32",
        "model.embed_dim=16", "model.num_layers=1", "train.steps=5", "data.batch_size=16", "data.val_fraction=0.02",
        f"train.out_dir={run}", *CPU,
    ])
    assert code == 0, err
    return run


def test_char_lm_predict_continues_the_prompt(run_cli, lm_run):
    code, out, err = run_cli(["predict", str(lm_run), "The ", "--max-new-tokens", "20", "--seed", "3"])
    assert code == 0, err
    assert out.startswith("The ") and out.endswith("\n")
    text = out[:-1]  # print's newline
    assert len(text) == 4 + 20
    vocab = set(CharTokenizer.load(bigmodels.io.resolve_checkpoint(lm_run) / "tokenizer.json").vocab)
    assert set(text) <= vocab
    # a fixed seed reproduces the sample
    assert run_cli(["predict", str(lm_run), "The ", "--max-new-tokens", "20", "--seed", "3"])[1] == out


def test_char_lm_prompt_outside_vocabulary(run_cli, lm_run):
    line = error_line(*run_cli(["predict", str(lm_run), "日本"]))
    assert "'日'" in line and "'本'" in line and "vocabulary" in line


def test_char_lm_empty_prompt(run_cli, lm_run):
    line = error_line(*run_cli(["predict", str(lm_run), ""]))
    assert "empty" in line


def test_char_lm_evaluate_val(run_cli, lm_run):
    code, out, err = run_cli(["evaluate", str(lm_run), "--split", "val"])
    assert code == 0, err
    result = json.loads(out)
    assert result["data"] == "pydoc" and result["split"] == "val"
    assert result["perplexity"] == pytest.approx(torch.tensor(result["loss"]).exp().item(), rel=1e-6)
    summary = json.loads((lm_run / "summary.json").read_text())
    assert result["loss"] == pytest.approx(summary["val"]["loss"], rel=1e-5)  # the best checkpoint, same split


def test_predict_greedy_is_deterministic_with_dropout(run_cli, tmp_path):
    text = "The quick brown fox jumps over the lazy dog. "
    tok = CharTokenizer.fit(text)
    torch.manual_seed(0)
    model = bigmodels.create_model(
        "char_gru", vocab_size=tok.vocab_size, embed_dim=16, hidden_size=32, num_layers=2, dropout=0.5
    )
    bigmodels.save(model, tmp_path / "lm", tokenizer=tok)
    model.eval()
    from bigmodels.infer.generate import generate

    expected = tok.decode(generate(model, [tok.encode("The ")], max_new_tokens=30, temperature=0)[0].tolist())
    outs = set()
    for seed in range(3):
        code, out, err = run_cli(["predict", str(tmp_path / "lm"), "The ", "--temperature", "0",
                                  "--max-new-tokens", "30", "--seed", str(seed)])
        assert code == 0, err
        outs.add(out[:-1])
    assert outs == {expected}


def test_generate_with_a_recurrent_model_honours_every_option(run_cli, lm_run):
    from bigmodels.infer.generate import generate

    model = bigmodels.load(lm_run)
    tok = bigmodels.load_tokenizer(lm_run)
    prompt = tok.encode("The ")
    expected = tok.decode(generate(model, [prompt], max_new_tokens=20, temperature=0, repetition_penalty=1.5)[0])
    code, out, err = run_cli(["generate", str(lm_run), "The ", "--max-new-tokens", "20", "--temperature", "0",
                              "--repetition-penalty", "1.5"])
    assert code == 0, err
    assert out == expected + "\n"  # the penalty is applied, not ignored
    stop = expected[8:10]
    code, out, err = run_cli(["generate", str(lm_run), "The ", "--max-new-tokens", "20", "--temperature", "0",
                              "--repetition-penalty", "1.5", "--stop", stop])
    assert code == 0, err
    assert out.endswith(stop + "\n") and expected.startswith(out[:-1]) and len(out) - 1 < len(expected)
    for option, value in (("--top-p", "1.5"), ("--top-k", "0"), ("--temperature", "-1")):
        code, out, err = run_cli(["generate", str(lm_run), "The ", option, value])
        assert option.lstrip("-").replace("-", "_") in error_line(code, out, err) and out == ""


# ------------------------------------------------------------------------------------------ real data


def test_train_on_real_mnist(run_cli, shared_data, tmp_path):
    mnist = shared_data / "mnist"
    if not mnist.is_dir():
        pytest.skip(f"MNIST not found at {mnist}: the real data sets live in ../shared/data")
    code, out, err = run_cli([
        "train", "model=mlp_mnist", "data.name=mnist", f"data.path={mnist}", "train.steps=30", "train.eval_every=30",
        "data.batch_size=128", f"train.out_dir={tmp_path}/run", *CPU,
    ])
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.6  # 30 steps of a 2x512 MLP on 28x28 digits
    assert re.search(r"test: loss [\d.]+, accuracy 0\.\d+", out)


# ------------------------------------------------------------------------------------------ compare


@pytest.mark.slow
def test_compare_quick(run_cli, tmp_path):
    out_dir = tmp_path / "cmp"
    code, out, err = run_cli(["compare", "--quick", "--budget", "1", "--models", "mlp_small,char_rnn",
                              "--out", str(out_dir)])
    assert code == 0, err
    for name in ("report.md", "report.html", "results.json"):
        assert (out_dir / name).is_file(), name
    assert str(out_dir / "report.md") in out
    md = (out_dir / "report.md").read_text()
    assert "mlp_small" in md and "char_rnn" in md and "Environment" in md
    results = json.loads((out_dir / "results.json").read_text())
    rows = results if isinstance(results, list) else results.get("results", results.get("rows"))
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {"mlp_small", "char_rnn"}
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows]


# ------------------------------------------------------------------------------------------ issue 11: bad input


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """A tiny MiniLM-shaped sentence-embedding model (64 positions) saved with a word-piece vocabulary."""
    from bigmodels.data.tokenizers import Tokenizer
    from bigmodels.testing import tiny_model

    folder = tmp_path_factory.mktemp("embedder")
    words = "the a dog cat runs sleeps".split()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = Tokenizer.from_vocab(folder / "vocab.txt")
    torch.manual_seed(0)
    bigmodels.save(tiny_model("minilm-l6-h384", vocab_size=tok.vocab_size), folder / "model", tokenizer=tok)
    return folder / "model"


@pytest.mark.parametrize("option, value", [
    ("--batch-size", "0"), ("--batch-size", "-1"), ("--max-length", "0"), ("--max-new-tokens", "0"),
])
def test_evaluate_counts_below_one_are_errors(run_cli, digits_run, option, value):
    code, out, err = run_cli(["evaluate", str(digits_run[0]), option, value])
    assert f"{option} {value} must be >= 1" in error_line(code, out, err) and out == ""  # no result without metrics


def test_embed_defaults_to_the_context_of_a_short_model(run_cli, embedder):
    code, out, err = run_cli(["embed", str(embedder), "the dog runs"])  # 256 tokens would exceed 64 positions
    assert code == 0, err
    assert len(json.loads(out)["embedding"]) == 32


@pytest.mark.parametrize("name, read", [
    ("v.npy", lambda p: np.load(p)),
    ("v.json", lambda p: np.array([r["embedding"] for r in json.loads(p.read_text())])),
    ("v.jsonl", lambda p: np.array([json.loads(line)["embedding"] for line in p.read_text().splitlines()])),
])
def test_embed_out_writes_what_its_suffix_says(run_cli, embedder, tmp_path, name, read):
    code, out, err = run_cli(["embed", str(embedder), "the dog runs", "a cat sleeps", "--out", str(tmp_path / name)])
    assert code == 0, err
    assert str(tmp_path / name) in out and os.listdir(tmp_path) == [name]  # that file and no other
    vectors = read(tmp_path / name)
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)


def test_embed_out_with_an_unknown_suffix_names_the_valid_ones(run_cli, embedder, tmp_path):
    line = error_line(*run_cli(["embed", str(embedder), "the dog", "--out", str(tmp_path / "v.txt")]))
    assert "'.txt'" in line and all(s in line for s in (".npy", ".json", ".jsonl"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("out, says", [
    ("/proc/x.npy", "cannot write in /proc"), ("{tmp}/missing/x.npy", "does not exist"), ("{tmp}", "is a directory"),
])
def test_embed_out_that_cannot_be_written_fails_before_the_model_loads(run_cli, tmp_path, monkeypatch, out, says):
    import bigmodels.infer.commands as commands

    monkeypatch.setattr(commands, "pipeline", lambda *a, **k: pytest.fail("the model loaded before --out was checked"))
    line = error_line(*run_cli(["embed", "no-such-model", "the dog", "--out", out.format(tmp=tmp_path)]))
    assert says in line and "--out" in line


def test_embed_out_keeps_an_earlier_file_whole_when_embedding_fails(run_cli, embedder, tmp_path):
    earlier = tmp_path / "v.npy"
    np.save(earlier, np.ones((1, 3)))
    before = earlier.read_bytes()
    error_line(*run_cli(["embed", str(embedder), "the dog", "--out", str(earlier), "--max-length", "9999"]))
    assert earlier.read_bytes() == before and os.listdir(tmp_path) == ["v.npy"]


def test_translate_out_that_cannot_be_written_fails_before_the_model_loads(run_cli, tmp_path):
    line = error_line(*run_cli(["translate", str(tmp_path / "no-model"), "a dog", "--out", "/proc/t.txt"]))
    assert "--out /proc/t.txt" in line and "cannot write" in line


@pytest.mark.parametrize("target, says", [
    ("{file}", "is not a directory"), ("{file}/sub", "is a file, not a folder"), ("/proc/x", "cannot write in /proc"),
])
def test_convert_to_a_file_or_an_unwritable_path(run_cli, digits_run, tmp_path, target, says):
    (tmp_path / "file").write_text("keep me")
    code, out, err = run_cli(["convert", str(digits_run[0]), target.format(file=tmp_path / "file"),
                              "--format", "bigmodels"])
    assert says in error_line(code, out, err)
    assert (tmp_path / "file").read_text() == "keep me" and os.listdir(tmp_path) == ["file"]


def test_convert_to_a_new_nested_directory(run_cli, digits_run, tmp_path):
    code, _, err = run_cli(["convert", str(digits_run[0]), str(tmp_path / "a" / "b"), "--format", "bigmodels"])
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["config.json", "model.safetensors"]


@pytest.fixture
def no_training(monkeypatch):
    """compare must refuse these arguments before it starts training anything (a child process per model)."""
    import bigmodels.bench.compare as compare

    def refuse(*args, **kwargs):
        raise AssertionError("compare started training instead of refusing its arguments")

    monkeypatch.setattr(compare.concurrent.futures, "ProcessPoolExecutor", refuse)


@pytest.mark.parametrize("args, says", [
    (["--out", "/proc/x"], "cannot write in /proc"),
    (["--models", ""], "--models '' has an empty name"),
    (["--models", "mlp_small,,cnn_small"], "empty name"),
    (["--data", ""], "--data '' has an empty name"),
    (["--budget", "-1"], "--budget -1.0 must be a positive number"),
    (["--budget", "0"], "--budget 0.0 must be a positive number"),
    (["--budget", "nan"], "--budget nan must be a positive number"),
    (["--budget", "inf"], "--budget inf must be a positive number"),
    (["--models", "gpt_mini", "--data", "digits"], "gpt_mini fits none of the data sets digits"),
])
def test_compare_refuses_bad_arguments_before_training(run_cli, tmp_path, no_training, args, says):
    args = args if "--out" in args else [*args, "--out", str(tmp_path / "cmp")]
    code, out, err = run_cli(["compare", "--quick", *args])
    assert says in error_line(code, out, err)
    assert not (tmp_path / "cmp").exists()  # no report of failures


def test_data_block_size_longer_than_the_context_names_both_and_the_fix(run_cli, tmp_path):
    code, out, err = run_cli(["train", "model=gpt_mini", "data.name=pydoc", "data.block_size=200", "train.steps=1",
                              f"train.out_dir={tmp_path}/run", *CPU])
    line = error_line(code, out, err)
    assert "data.block_size=200" in line and "128 positions" in line and "data.block_size=128 or less" in line
    assert "prompt" not in line


@pytest.mark.parametrize("name, fraction", [("digits", "0"), ("pydoc", "0"), ("digits", "1")])
def test_val_fraction_messages_agree_on_the_range(run_cli, tmp_path, name, fraction):
    model = "mlp_small" if name == "digits" else "char_rnn"
    line = error_line(*run_cli(["train", f"model={model}", f"data.name={name}", f"data.val_fraction={fraction}",
                                "train.steps=1", f"train.out_dir={tmp_path}/run", *CPU]))
    assert f"data.val_fraction={fraction}" in line
    assert "[0, 1)" in line if fraction == "1" else "none of its own" in line and "(0, 1)" in line


def test_val_fraction_zero_is_accepted_by_data_with_its_own_validation_split():
    from bigmodels.config import DataConfig
    from bigmodels.data import build_data

    data = build_data(DataConfig(name="numbers", val_fraction=0.0, tokenizer="bpe:300"))
    assert len(data.val) > 0


@pytest.mark.parametrize("args, says", [
    (["--steps", "0"], "--steps 0 must be >= 1"), (["--warmup", "-1"], "--warmup -1 must be >= 0"),
    (["--out", "/proc/x"], "cannot write in /proc"),
])
def test_bench_refuses_bad_arguments_before_timing(run_cli, monkeypatch, args, says):
    import bigmodels.bench.speed as speed

    monkeypatch.setattr(speed, "run_workload", lambda *a, **k: pytest.fail("bench timed a model"))
    assert says in error_line(*run_cli(["bench", "--tiny", "--device", "cpu", *args]))


@pytest.mark.parametrize("command", ["predict", "convert"])
def test_an_empty_architecture_is_an_error(run_cli, tmp_path, command):
    (tmp_path / "weights.pth").write_bytes(b"")
    args = [str(tmp_path / "x.png")] if command == "predict" else [str(tmp_path / "out")]
    line = error_line(*run_cli([command, str(tmp_path / "weights.pth"), *args, "--model", ""]))
    assert "--model is empty" in line


def test_a_usage_error_is_one_line(run_cli):
    code, out, err = run_cli(["predict", "RUN", "x.png", "--top-k", "three"])
    line = error_line(code, out, err)
    assert "invalid int value: 'three'" in line and "bigmodels predict --help" in line
    assert err.strip() == line
