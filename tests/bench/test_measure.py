"""Tests for bigmodels.bench: counts against hand computations, timing/memory sanity, report files."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from bigmodels.bench import (
    PeakMemory,
    count_flops,
    count_params,
    environment_info,
    measure_latency,
    peak_memory,
    render_from_json,
    write_report,
)
from bigmodels.bench._format import fmt_bytes, fmt_flops, fmt_metric, fmt_params
from bigmodels.bench.measure import _rnn_flops
from bigmodels.errors import DataError

# ---------------------------------------------------------------- parameters and FLOPs


def _conv_stack() -> nn.Sequential:
    # (B, 3, 8, 8) -> conv 3x3 no padding -> (B, 8, 6, 6) -> flatten 288 -> 10
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def test_count_params_conv_linear_stack():
    model = _conv_stack()
    conv, linear = 8 * 3 * 3 * 3 + 8, 288 * 10 + 10  # 224 and 2890
    assert count_params(model) == conv + linear == 3114
    model[0].requires_grad_(False)
    assert count_params(model, trainable_only=True) == linear
    assert count_params(model) == 3114


def test_count_params_shared_weights_counted_once():
    lin = nn.Linear(4, 4)
    assert count_params(nn.Sequential(lin, lin)) == 20


def test_flops_linear():
    assert count_flops(nn.Linear(16, 7), (torch.randn(5, 16),)) == 2 * 16 * 7 * 5


@pytest.mark.parametrize(
    "conv, shape, out_hw",
    [
        (nn.Conv2d(3, 8, 3, padding=1), (2, 3, 10, 10), 10),
        (nn.Conv2d(4, 8, 3, stride=2, groups=2), (2, 4, 9, 9), 4),  # (9 - 3) / 2 + 1 = 4
    ],
)
def test_flops_conv2d(conv, shape, out_hw):
    b, c_in = shape[:2]
    k = conv.kernel_size[0]
    # every output element is a dot product of length (C_in / groups) * k * k
    expected = 2 * b * conv.out_channels * out_hw * out_hw * (c_in // conv.groups) * k * k
    assert count_flops(conv, (torch.randn(*shape),)) == expected


def test_flops_conv_stack_and_mode_restored():
    model = _conv_stack().train()
    model[2].eval()  # a mixed-mode model must come back exactly as it was
    flops = count_flops(model, torch.randn(4, 3, 8, 8))  # a bare tensor is accepted too
    assert flops == 4 * (2 * 8 * 6 * 6 * 3 * 3 * 3 + 2 * 288 * 10)
    assert [m.training for m in model] == [True, True, False, True]


def _rnn_hand(gates: int, i: int, h: int, layers: int, directions: int, pairs: int) -> int:
    total = 0
    for layer in range(layers):
        in_size = i if layer == 0 else h * directions
        total += directions * 2 * gates * h * (in_size + h)
    return pairs * total


def test_lstm_flops_hand_computed():
    # LSTM(6, 5), one layer, T=7, B=3: per step 2 * 4 gates * 5 * (6 + 5) = 440; 21 steps -> 9240
    lstm = nn.LSTM(6, 5)
    assert count_flops(lstm, (torch.randn(7, 3, 6),)) == 9240


@pytest.mark.parametrize("cls, gates", [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_rnn_flops_two_layers(cls, gates, batch_first, bidirectional):
    rnn = cls(6, 5, num_layers=2, batch_first=batch_first, bidirectional=bidirectional)
    x = torch.randn(3, 7, 6) if batch_first else torch.randn(7, 3, 6)
    expected = _rnn_hand(gates, 6, 5, 2, 2 if bidirectional else 1, pairs=21)
    assert _rnn_flops(rnn, x) == expected  # the analytic path
    assert count_flops(rnn, (x,)) == expected  # counter or analytic, never both


def test_rnn_flops_packed_sequence_and_inside_model():
    lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True)
    packed = pack_padded_sequence(torch.randn(5, 3, 6), torch.tensor([5, 3, 2]))
    assert count_flops(lstm, (packed,)) == _rnn_hand(4, 6, 5, 2, 2, pairs=5 + 3 + 2)

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 6)
            self.lstm = nn.LSTM(6, 5, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lstm(self.embed(x))[0]  # (B, T, 5)

    x = torch.randn(2, 9, 4)
    assert count_flops(Tagger(), (x,)) == 2 * 4 * 6 * 18 + _rnn_hand(4, 6, 5, 1, 1, pairs=18)


@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_lstm_projection_flops():
    # gates act on (I + P) inputs, then the projection H -> P
    lstm = nn.LSTM(6, 8, proj_size=3)
    per_step = 2 * 4 * 8 * (6 + 3) + 2 * 8 * 3
    assert count_flops(lstm, (torch.randn(4, 2, 6),)) == 8 * per_step


# ---------------------------------------------------------------- latency, memory, environment


def test_measure_latency_positive_and_bounded():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).train()
    stats = measure_latency(model, (torch.randn(2, 32),), warmup=1, iters=5)
    assert stats["iters"] == 5
    assert 0 < stats["latency_ms_median"] <= stats["latency_ms_p90"]
    assert model.training
    once = measure_latency(model, (torch.randn(2, 32),), iters=50, max_seconds=1e-9)
    assert once["iters"] == 1 and once["latency_ms_median"] > 0
    with pytest.raises(ValueError, match="iters"):
        measure_latency(model, (torch.randn(2, 32),), iters=0)


def test_peak_memory_cpu():
    with peak_memory("cpu") as mem:
        x = torch.ones(2048, 2048)  # 16 MiB, written so the pages are resident
        del x
    assert isinstance(mem, PeakMemory) and mem.kind == "cpu_rss_delta"
    assert mem.bytes is not None and mem.bytes >= 0
    assert mem.absolute_bytes is not None and mem.absolute_bytes >= mem.bytes
    with pytest.raises(ValueError, match="meta"), peak_memory("meta"):
        pass


def test_environment_info():
    info = environment_info()
    for key in ("timestamp_utc", "python", "torch", "numpy", "bigmodels", "os", "machine", "cpu_model",
                "cpu_count", "torch_num_threads", "ram_bytes", "cuda_available"):
        assert key in info
    assert info["torch"] == torch.__version__ and info["cpu_count"] >= 1
    assert info["timestamp_utc"].endswith("+00:00")
    if info["cuda_available"]:
        assert info["cuda_device_count"] == len(info["cuda_devices"]) >= 1
    host = socket.gethostname()
    if len(host) >= 4:
        assert host not in json.dumps(info)


# ---------------------------------------------------------------- report


def test_formatters():
    assert fmt_params(1_970_000) == "1.97M" and fmt_params(12_345) == "12.3K" and fmt_params(512) == "512"
    assert fmt_params(999_999) == "1M" and fmt_params(None) == "—"
    assert fmt_flops(2_500_000) == "2.5 MFLOPs" and fmt_flops(4.1e9) == "4.1 GFLOPs"
    assert fmt_bytes(3 * 2**20) == "3.0 MiB"
    assert fmt_metric("test_accuracy", 0.9734) == "97.34%" and fmt_metric("val_loss", 1.23456) == "1.2346"


def _fake_results() -> list[dict]:
    base = {"family": "mlp", "task": "image_classification", "throughput_unit": "samples/s",
            "memory_kind": "cpu_rss_delta", "error": None}
    history = [{"step": s, "split": split, "loss": 2.0 / (s + 1)}
               for s in (0, 10, 20) for split in ("train", "val")]
    return [
        {**base, "model": "mlp_small", "params": 12_345, "flops_per_sample": 24_000,
         "train_throughput": 15234.5, "train_seconds": 3.2, "steps": 100, "epochs": 1, "latency_ms": 0.12,
         "batch_latency_ms": 1.5,
         "latency_batch": 64, "peak_memory_bytes": 5 * 2**20, "history": history,
         "metrics": {"test_accuracy": 0.91, "test_loss": 0.3}},
        {**base, "model": "cnn_<b>big</b>", "family": "cnn", "params": 1_970_000,
         "flops_per_sample": 3_400_000,
         "train_throughput": 800.0, "latency_ms": None, "peak_memory_bytes": None, "history": history[:2],
         "metrics": {"test_accuracy": 0.97, "test_loss": None}},
        {**base, "model": "resnet_broken", "family": "resnet", "params": None,
         "error": "RuntimeError: shapes cannot be multiplied | (2x3 and 4x5)"},
        {"model": "gpt_tiny", "family": "gpt", "task": "language_modeling", "params": 800_000,
         "train_throughput": 120_000.0, "throughput_unit": "tokens/s", "history": history,
         "metrics": {"val_loss": 1.6, "val_bpc": 2.31, "val_perplexity": 4.95}},
        {"model": "rnn_tiny", "family": "rnn", "task": "language_modeling", "params": 300_000,
         "metrics": {"val_loss": 1.9, "val_bpc": 2.74, "val_perplexity": 6.69}},
    ]


def test_write_report_and_roundtrip(tmp_path):
    env = environment_info()
    paths = write_report(_fake_results(), tmp_path / "a", title="Bench <test>", env=env,
                         notes=["Tiny fake numbers."])
    for key in ("markdown", "html", "json", "accuracy_vs_params", "throughput",
                "curves_image_classification", "curves_language_modeling"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    assert paths["accuracy_vs_params"].read_bytes()[:4] == b"\x89PNG"

    md = paths["markdown"].read_text()
    for text in ("mlp_small", "cnn_&lt;b&gt;big&lt;/b&gt;", "resnet_broken", "gpt_tiny", "rnn_tiny",
                 "12.3K", "1.97M", "3.4 MFLOPs", "15,234 samples/s", "120,000 tokens/s", "97.00%", "5.0 MiB",
                 "0.12", "1.50 (b=64)", "—", "RuntimeError: shapes cannot be multiplied \\| (2x3 and 4x5)",
                 "Primary metric: Test accuracy (higher is better)",
                 "Primary metric: Val loss (lower is better)",
                 "## Environment", env["torch"], "Tiny fake numbers.", "cpu_rss_delta: growth of the process",
                 "![primary metric vs parameters](accuracy_vs_params.png)", "(curves_language_modeling.png)"):
        assert text in md, text
    # sorted by primary metric: accuracy descending, failed row last; val_loss ascending
    assert "<b>" not in md  # no raw HTML leaks into the Markdown either
    assert md.index("cnn_&lt;b&gt;") < md.index("mlp_small") < md.index("resnet_broken")
    assert md.index("gpt_tiny") < md.index("rnn_tiny")

    page = paths["html"].read_text()
    assert "data:image/png;base64," in page and "<style>" in page
    assert "cnn_&lt;b&gt;big&lt;/b&gt;" in page and "<b>big" not in page
    assert "<title>Bench &lt;test&gt;</title>" in page

    saved = json.loads(paths["json"].read_text())
    assert saved["results"] == _fake_results() and saved["env"] == env
    again = render_from_json(paths["json"], tmp_path / "b")
    assert again["markdown"].read_text() == md
    assert json.loads(again["json"].read_text()) == saved


def test_render_from_json_rejects_other_files(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(DataError, match="results"):
        render_from_json(bad, tmp_path / "out")
