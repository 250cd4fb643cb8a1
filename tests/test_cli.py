"""The command line, in process through ``bigmodels.cli.main`` (and once as ``python -m bigmodels``)."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bigmodels
from bigmodels.cli import COMMANDS, main
from bigmodels.data.images import load_digits_data
from bigmodels.data.text import CharTokenizer

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
    mean, std = model.meta["mean"][0], model.meta["std"][0]
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
    expected = tok.decode(model.generate(torch.tensor([tok.encode("The ")]), 30, temperature=0)[0].tolist())
    outs = set()
    for seed in range(3):
        code, out, err = run_cli(["predict", str(tmp_path / "lm"), "The ", "--temperature", "0",
                                  "--max-new-tokens", "30", "--seed", str(seed)])
        assert code == 0, err
        outs.add(out[:-1])
    assert outs == {expected}


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
