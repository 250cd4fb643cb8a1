"""`bigmodels compare`'s ONNX Runtime latency and attribution-faithfulness sections."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from bigmodels.bench import compare, environment_info, write_report
from bigmodels.bench.compare import attribution_faithfulness, compression_tradeoffs, onnx_latency
from bigmodels.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime", "captum")),
    reason="needs the export and explain extras (onnx, onnxscript, onnxruntime, captum)")


@needs_onnx
def test_compare_run_reports_onnx_latency_and_faithfulness(run_cli, tmp_path):
    """A real (tiny) compare: one CNN trained for 1 s, exported, timed in ONNX Runtime, its attributions scored."""
    out_dir = tmp_path / "cmp"
    code, out, err = run_cli(["compare", "--quick", "--budget", "1", "--models", "cnn_small", "--data", "digits",
                              "--out", str(out_dir)])
    assert code == 0, err
    row = json.loads((out_dir / "results.json").read_text())["results"][0]
    assert row["error"] is None, row["error"]
    onnx = row["onnx"]
    assert onnx["latency_ms"] > 0 and onnx["batch_latency_ms"] > 0 and onnx["parity"] <= 1e-4
    methods = {m["method"]: m for m in row["faithfulness"]}
    assert set(methods) == {"saliency", "ig", "gradcam", "occlusion"}  # the gradient methods plus occlusion
    for m in methods.values():
        assert m["error"] is None and m["examples"] >= 1
        assert 0 <= m["deletion_auc"] <= 1 and 0 <= m["random_insertion_auc"] <= 1
        assert m["deletion_margin"] == pytest.approx(m["random_deletion_auc"] - m["deletion_auc"])
    md = (out_dir / "report.md").read_text()
    html = (out_dir / "report.html").read_text()
    for text in (md, html):
        assert "ONNX Runtime latency" in text and "Faithfulness of the attributions" in text
        assert "Deletion AUC (random)" in text and "gradcam" in text
    onnx_line = next(line for line in md.splitlines() if line.startswith("| cnn_small") and "parity" in line)
    assert onnx["torch_latency_ms"] > 0 and onnx["torch_batch_latency_ms"] > 0  # timed beside ONNX Runtime
    assert f"{onnx['torch_latency_ms']:.2f}" in onnx_line and f"{onnx['latency_ms']:.2f}" in onnx_line
    assert row["onnx_seconds"] > 0 and row["faithfulness_seconds"] > 0
    compressed = {m["method"]: m for m in row["compression"]}
    assert set(compressed) == {"int8", "structured 0.5"} and all(m["error"] is None for m in compressed.values())
    assert compressed["structured 0.5"]["params_ratio"] < 0.6 and compressed["structured 0.5"]["flops_ratio"] < 0.6
    assert "accuracy" in compressed["int8"]["metric_delta"] and "Compression" in md


@needs_onnx
def test_onnx_latency_of_an_export_that_fixes_the_length():
    """nn.RNN is unrolled by the exporter, which fixes the traced length: both sides are timed at that length."""
    model = tiny_model("char_rnn").eval()
    ids = torch.randint(0, 30, (4, 40))
    o = onnx_latency(model, ids[:1], ids)
    assert "error" not in o, o
    assert o["length"] == 16 and o["torch_latency_ms"] > 0 and o["torch_batch_latency_ms"] > 0
    assert o["latency_ms"] > 0 and o["batch_latency_ms"] > 0


@needs_onnx
def test_onnx_latency_reports_an_export_failure(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("this exporter cannot take the model\nsecond line")

    monkeypatch.setattr("bigmodels.export.export_onnx", fail)
    model = tiny_model("mlp_small").eval()
    assert onnx_latency(model, torch.randn(1, 8, 8), torch.randn(4, 8, 8)) == {
        "error": "RuntimeError: this exporter cannot take the model"}


def test_onnx_latency_without_onnxruntime_is_a_note(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name))
    note = onnx_latency(tiny_model("mlp_small").eval(), torch.randn(1, 8, 8), torch.randn(4, 8, 8))
    assert set(note) == {"note"} and "onnxruntime" in note["note"] and "bigmodels[export]" in note["note"]


@pytest.mark.skipif(importlib.util.find_spec("captum") is None, reason="needs captum (the explain extra)")
def test_faithfulness_of_text_models_and_models_without_classes():
    torch.manual_seed(0)
    gpt = tiny_model("gpt_mini").eval()
    rows = attribution_faithfulness(gpt, torch.randint(1, 60, (3, 12)), quick=True)
    assert [r["method"] for r in rows] == ["saliency", "ig", "occlusion"]
    assert all(r["examples"] == 2 and r["error"] is None for r in rows)
    long = torch.randint(1, 60, (2, 50))
    assert [ids.tolist() for ids, _ in compare._examples(gpt, long, None, 2)] == long[:, -32:].tolist()
    bert = tiny_model("bert_mini").eval()  # masked LM: explained at the middle position when there is no [MASK]
    assert all(r["examples"] == 2 for r in attribution_faithfulness(bert, torch.randint(5, 60, (2, 10)), quick=True))
    note = attribution_faithfulness(tiny_model("transformer_mini").eval(), {"input_ids": torch.ones(2, 6).long()})
    assert "no class logits" in note["note"]


def test_report_sections_from_rows(tmp_path):
    """The two tables render from result rows: an export failure and a note keep their reason in the table."""
    rows = [
        {"model": "a", "family": "cnn", "task": "image_classification", "error": None, "latency_ms": 2.0,
         "batch_latency_ms": 4.0, "latency_batch": 8, "metrics": {"test_accuracy": 0.9},
         "onnx": {"latency_ms": 1.0, "batch_latency_ms": 3.0, "export_seconds": 1.2, "parity": 1e-7},
         "faithfulness": [{"method": "ig", "examples": 2, "error": None, "deletion_auc": 0.2,
                           "random_deletion_auc": 0.5, "insertion_auc": 0.9, "random_insertion_auc": 0.6,
                           "deletion_margin": 0.3, "insertion_margin": 0.3},
                          {"method": "saliency", "examples": 2, "error": None, "deletion_auc": 0.6,
                           "random_deletion_auc": 0.5, "insertion_auc": 0.7, "random_insertion_auc": 0.6,
                           "deletion_margin": -0.1, "insertion_margin": 0.1}]},
        {"model": "b", "family": "rnn", "task": "image_classification", "error": None, "latency_ms": 1.0,
         "metrics": {"test_accuracy": 0.8}, "onnx": {"error": "ExportError: unsupported operator"},
         "faithfulness": {"note": "captum not installed"}},
        {"model": "c", "family": "rnn", "task": "image_classification", "error": None, "latency_ms": 9.0,
         "batch_latency_ms": 20.0, "latency_batch": 8, "metrics": {"test_accuracy": 0.7},
         "onnx": {"latency_ms": 0.5, "batch_latency_ms": 1.0, "export_seconds": 2.0, "parity": 1e-6, "length": 16,
                  "torch_latency_ms": 1.0, "torch_batch_latency_ms": 3.0}},
    ]
    md = write_report(rows, tmp_path, title="t", env=environment_info())["markdown"].read_text()
    assert "| a | cnn | 2.00 | 1.00 | 2.00x | 4.00 (b=8) | 3.00 | parity 1.0e-07, export 1.2 s |" in md
    assert "| b | rnn | 1.00 | — | — | — | — | ExportError: unsupported operator |" in md
    assert "| a | cnn | ig | 2 | 0.200 (0.500) | 0.900 (0.600) | +0.300 | +0.300 | yes | — |" in md
    assert "| a | cnn | saliency | 2 | 0.600 (0.500) | 0.700 (0.600) | -0.100 | +0.100 | no | — |" in md
    assert "captum not installed" in md
    assert ("| c | rnn | 1.00 | 0.50 | 2.00x | 3.00 (b=8) | 1.00 | parity 1.0e-06, export 2.0 s; both sides at 16 "
            "tokens: the export fixes the length (nn.RNN unrolled over time) |") in md


needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="needs torchao")


@needs_torchao
def test_compression_tradeoffs_measure_int8_and_pruning_against_the_original():
    torch.manual_seed(0)
    bert = tiny_model("bert_mini", head="sequence_classification", num_labels=2).eval()
    ids = torch.randint(5, 60, (4, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    one = {k: v[:1] for k, v in batch.items()}
    calls = []

    def metric(m):
        calls.append(m)
        with torch.no_grad():
            return {"accuracy": float((m(**batch).argmax(-1) == 1).float().mean()), "loss": 1.0}

    rows = {r["method"]: r for r in compression_tradeoffs(bert, one, batch, metric)}
    assert set(rows) == {"int8", "structured 0.5"} and len(calls) == 3  # the original once, each method once
    pruned = rows["structured 0.5"]
    assert pruned["error"] is None and pruned["params_ratio"] < 1 and pruned["flops_ratio"] < 0.75
    assert rows["int8"]["flops_ratio"] is None and rows["int8"]["latency_ms_ratio"] > 0
    assert set(rows["int8"]["metric_delta"]) == {"accuracy"}  # the loss is no metric to compare
    assert calls[0] is bert and not any(isinstance(p, torch.Tensor) and type(p) is not torch.nn.Parameter
                                        for p in bert.parameters())  # the original is left as it was


@needs_torchao
def test_compression_of_a_model_a_method_does_not_apply_to_is_a_cell():
    rnn = tiny_model("char_rnn").eval()
    ids = torch.randint(1, 20, (2, 8))
    with pytest.warns(UserWarning, match="Unwrapped parameters"):  # torch-pruning meets the nn.RNN weights
        rows = {r["method"]: r for r in compression_tradeoffs(rnn, ids[:1], ids)}
    assert rows["int8"]["error"] is None and rows["int8"]["latency_ms_ratio"] > 0  # its Linear layers quantize
    assert "could be pruned" in rows["structured 0.5"]["error"] and "params_ratio" not in rows["structured 0.5"]


def test_compression_table_renders_ratios_and_errors(tmp_path):
    rows = [{"model": "a", "family": "cnn", "task": "image_classification", "error": None, "latency_ms": 2.0,
             "metrics": {"test_accuracy": 0.9},
             "compression": [{"method": "int8", "error": None, "params_ratio": 1.0, "flops_ratio": None,
                              "latency_ms_ratio": 0.5, "batch_latency_ms_ratio": 0.4,
                              "metric_delta": {"accuracy": -0.01}},
                             {"method": "structured 0.5", "error": "PruningError: nothing to prune"}]}]
    md = write_report(rows, tmp_path, title="t", env=environment_info())["markdown"].read_text()
    assert "## Compression" in md
    assert "| a | cnn | int8 | 1.00x | — | 0.50x | 0.40x | accuracy -0.0100 | — |" in md
    assert "| a | cnn | structured 0.5 | — | — | — | — | — | PruningError: nothing to prune |" in md


def test_faithfulness_methods_are_the_gradient_methods_plus_occlusion():
    assert compare.FAITHFULNESS_METHODS == ("saliency", "ig", "gradcam", "occlusion")
