"""The CPU inference engines as peers: CTranslate2 and ONNX Runtime built from our weights, in the same process.

A CPU workload (``Workload.engines``) times our model against the engines a user would pick on a machine
without a GPU. Every engine is built from the same weights: CTranslate2 through its Transformers converter
(our model -> the transformers model through the interop adapters -> ``save_pretrained`` with a tokenizer
written here, since the converter reads its vocabulary -> ``TransformersConverter.convert``), ONNX Runtime
through :func:`bigmodels.export.export_onnx` of our model (its dynamic-int8 copy for int8 rows).
:func:`build_sides` returns, per side, one call that :mod:`bigmodels.bench.speed` times (the sides alternate,
repetition by repetition) and a check of the first outputs that runs before any timing.

How our model is prepared for the CPU is :func:`prepare_ours_cpu`, one function for every CPU row.

    >>> import torch
    >>> from bigmodels.testing import tiny_model
    >>> model, options, settings = prepare_ours_cpu(tiny_model("gpt2"), "fp32")
    >>> options["cache"], settings["precision"]
    ('static', 'fp32')
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .workloads import PeerMissing, Workload, _hf_model, peer_installed

__all__ = ["ENGINES", "PRECISIONS", "Sides", "build_sides", "prepare_ours_cpu", "require_engine",
           "byte_level_tokenizer", "wordpiece_tokenizer", "engine_version"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
#: engine -> (import name, how to install it)
ENGINES: dict[str, tuple[str, str]] = {
    "ctranslate2": ("ctranslate2", 'pip install "bigmodels[ctranslate2]"'),
    "onnxruntime": ("onnxruntime", 'pip install "bigmodels[export]"'),
    "transformers": ("transformers", "pip install transformers"),
}
_CT2_COMPUTE = {"fp32": "float32", "int8": "int8"}  # int8 GEMMs, the other layers in fp32 (int8_float32)
#: fp32 encoder calls of at most this many sequences run compiled with the weights frozen in (compile_model(freeze=
#: True)): all-MiniLM-L6-v2 / BERT-base at 1 x 128 tokens 1.19x / 1.13x the eager forward with oneDNN-packed weights,
#: at 32 x 128 1.02x / 1.00x, not worth a compile (2 cores of an Intel Xeon; ``python benchmarks/cpu_micro.py frozen``)
ENCODER_FREEZE_MAX_BATCH = 1


def require_engine(engine: str) -> None:
    """Raise :class:`~bigmodels.bench.workloads.PeerMissing` naming the extra when ``engine`` is not installed
    (CTranslate2's converter and the interop adapters also need transformers)."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
    needs = [engine] + (["transformers"] if engine == "ctranslate2" else [])
    for name in needs:
        package, install = ENGINES[name]
        if not peer_installed(package):
            raise PeerMissing(f"peer not installed: {package} ({install})")


def import_ctranslate2() -> Any:
    """``import ctranslate2`` so that its native library calls the OpenMP runtime its wheel ships.

    torch loads its libgomp into the process's global symbol scope (``libtorch_global_deps``, RTLD_GLOBAL); a
    library loaded after it resolves OpenMP symbols there first, so CTranslate2's ``GOMP_parallel`` ran on
    *torch's* runtime, from CTranslate2's own worker thread: a second thread team in the same runtime, 4 OpenMP
    threads on 2 cores, which makes libgomp shorten its spin-wait for every team in it. Each parallel region of
    either engine then waited in the kernel (measured on 2 vCPU: ~160 voluntary context switches per all-MiniLM
    int8 1 x 128 forward, 0 before CTranslate2's first call) and our forward went from 7.6 to 11.1 ms until the
    CTranslate2 encoder was deleted (7.8 ms). Loading it with ``RTLD_DEEPBIND`` (glibc) makes it bind to its own
    libgomp first, as in a process of its own: each engine's threads then count only in their own runtime. A
    no-op where ctranslate2 is already imported or the C library is not glibc."""
    if "ctranslate2" in sys.modules:
        import ctranslate2

        return ctranslate2
    deep = getattr(os, "RTLD_DEEPBIND", 0) if platform.libc_ver()[0] == "glibc" else 0
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deep)
    try:
        import ctranslate2
    finally:
        sys.setdlopenflags(flags)
    return ctranslate2


def engine_version(engine: str) -> str:
    try:
        return importlib.metadata.version(engine)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# ---------------------------------------------------------------------------------------------- our side


def prepare_ours_cpu(model: nn.Module, precision: str,
                     rows: int | None = None) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Our model made ready for CPU inference -> (model, the ``generate`` options for a decoder, the settings
    recorded with the row). The one place every CPU workload prepares our side; the model changes in place.

    Every model: eval mode, q/k/v packed into one product per layer (:func:`~bigmodels.nn.attention.pack_qkv_`; GPT-2's
    attention is fused already), then what :func:`~bigmodels.compress.layout.prepare_for_cpu_decoding` does
    (``benchmarks/cpu_decode.md``, ``benchmarks/cpu_encoders.md``): int8 swaps every Linear, a tied output layer too (as
    an untied int8 copy), for x86 int8 GEMMs with activations quantized at run time (on our kernel where it is built,
    :mod:`bigmodels.nn.kernels`: every call on CPUs with AMX, up to ``Int8DynamicLinear.kernel_rows()`` rows on
    others; else fbgemm, and oneDNN's from 32 rows on CPUs with AMX; fbgemm was 2-2.3x torchao's on the AMD EPYC); the
    float Linear layers left (all of them in fp32) multiply with oneDNN-packed weights (1.5-1.9x MKL's sgemm on the
    AMD EPYC at decoding's rows, 1.04-1.09x whole encoder forwards on the Intel Xeon), calls of up to
    ``PackedLinear.kernel_max_rows`` (4) rows with their column-major weights on ``bigmodels_cpu::linear_f32`` where it
    is built (eager or compiled; 1.10-1.18x oneDNN's at one row). Decoding (``rows``: prompts a call decodes
    together): greedy with a static (preallocated) key/value cache, fp32 up to 4 rows picking each token through the
    output layer's float16 screen (``Decoder(greedy_screen=True)``: the same tokens, half the bytes); compiled
    (:data:`~bigmodels.infer.generate.CPU_COMPILE_OPTIONS`) for fp32 at one row, where it measured ~1.2x the eager step
    (at 8 rows the eager step's packed weights were ~1.2x the compiled step), and for int8 up to 16 rows, whose products
    run on ``bigmodels_cpu::int8_linear`` there (~1.5x the eager step at one row, ~1.1x at eight; where that kernel is
    not built, fbgemm's opaque packed weights do not compile and int8 stays eager); eager elsewhere
    (``benchmarks/cpu_decode.md``).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    from ..compress.layout import PackedLinear, prepare_for_cpu_decoding
    from ..compress.quantize import Int8DynamicLinear, _cpu_has_amx_int8
    from ..infer.generate import Decoder
    from ..models._contract import kind_of
    from ..nn import kernels
    from ..nn.attention import pack_qkv_

    model = model.eval()  # on the device it is on (the CPU rows build on the CPU)
    packed = pack_qkv_(model)
    settings: dict[str, Any] = {"precision": precision, "qkv_packed_modules": packed}
    prepare_for_cpu_decoding(model, int8=precision == "int8")  # the same transforms serve encoders
    # int8 compiles where its products run on bigmodels_cpu::int8_linear (an operator torch.compile traces through):
    # 1.5x its eager step at one row, 1.1x at eight (benchmarks/cpu_decode.md); not measured above 16 rows
    int8_compiles = precision == "int8" and rows is not None and rows <= 16 and kernels.available()
    options = {"cache": "static", "compile": (precision == "fp32" and rows == 1) or int8_compiles}

    def count(kind: type) -> int:
        return sum(isinstance(m, kind) for m in model.modules())

    if precision == "int8":
        built, limit = kernels.available(), Int8DynamicLinear.kernel_rows()  # limit None: every call on the kernel
        settings["quantize_"] = {"config": "Int8DynamicConfig(kernel='fbgemm', output_layer=True)",
                                 "layers": count(Int8DynamicLinear),
                                 # AMX CPUs: calls of this many rows or more (not on our kernel) run on oneDNN's GEMM
                                 "onednn_min_rows": Int8DynamicLinear.onednn_min_rows
                                 if _cpu_has_amx_int8() and not (built and limit is None) else None,
                                 # calls of at most this many rows run on bigmodels_cpu::int8_linear (None: not built)
                                 "kernel_max_rows": ("every call" if limit is None else limit) if built else None}
    settings["cpu_kernels"] = kernels.available()  # bigmodels_cpu's one-query attention and argmax (decoding)
    settings["prepack_linears_"] = count(PackedLinear)  # oneDNN-packed float weights
    if count(PackedLinear) and kernels.available():  # their calls of this many rows or fewer: bigmodels_cpu::linear_f32
        settings["f32_kernel_max_rows"] = PackedLinear.kernel_max_rows
    if kind_of(model) == "encoder":
        return model, options, settings
    settings["generate"] = {"call": "bigmodels.infer.generate.generate", "temperature": 0, **options}
    if options["compile"]:
        settings["generate"]["compile_options"] = "CPU_COMPILE_OPTIONS (inductor, fullgraph)"
    # fp32 greedy steps of up to 4 rows pick through the output layer's float16 screen, exact (Decoder(greedy_screen=
    # True)): GPT-2's 154 MB output layer read as 77 MB a step, 1.12x the compiled step (benchmarks/cpu_decode.md)
    settings["generate"]["greedy_screen"] = (precision == "fp32" and rows is not None
                                             and rows <= Decoder.screen_max_rows and kernels.available())
    return model, options, settings


# ---------------------------------------------------------------------------------------------- tokenizers


def byte_level_tokenizer(vocab_size: int, eos: str = "<|endoftext|>") -> Any:
    """A GPT-2 style byte-level BPE tokenizer (``GPT2TokenizerFast``) with exactly ``vocab_size`` tokens: the 256
    byte symbols, merges of byte pairs up to ``vocab_size - 1``, and ``eos`` last (GPT-2's layout: 50256 is
    ``<|endoftext|>``). Its merges are not GPT-2's (not needed: the engines are fed token ids); what it gives
    CTranslate2's converter is a vocabulary of the model's size."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import GPT2TokenizerFast

    alphabet = sorted(ByteLevel.alphabet())  # (256,) printable stand-ins for the bytes
    if vocab_size < len(alphabet) + 1 or vocab_size > len(alphabet) ** 2 + len(alphabet) + 1:
        raise ConfigError(f"a byte-level vocabulary has between {len(alphabet) + 1} and "
                          f"{len(alphabet) ** 2 + len(alphabet) + 1} tokens, not {vocab_size}")
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = []
    pairs = ((a, b) for a in alphabet for b in alphabet)
    while len(vocab) < vocab_size - 1:
        a, b = next(pairs)
        merges.append((a, b))
        vocab[a + b] = len(vocab)
    vocab[eos] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos)


def wordpiece_tokenizer(vocab_size: int) -> Any:
    """A BERT WordPiece tokenizer (``BertTokenizerFast``) of ``vocab_size`` tokens: BERT's special tokens at their
    usual ids (0 [PAD], 100 [UNK], 101 [CLS], 102 [SEP], 103 [MASK] when the vocabulary is that large) and
    placeholder words elsewhere; the engines are fed ids, the converter needs the vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    where = [0, 100, 101, 102, 103] if vocab_size > 103 else list(range(5))
    if vocab_size < len(specials) + 1:
        raise ConfigError(f"a WordPiece vocabulary needs more than {len(specials)} tokens, not {vocab_size}")
    tokens = [f"w{i}" for i in range(vocab_size)]
    for i, s in zip(where, specials, strict=True):
        tokens[i] = s
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]")


# ---------------------------------------------------------------------------------------------- CTranslate2


def _ct2_convert(hf_model: nn.Module, tokenizer: Any, precision: str, work: Path) -> Path:
    """transformers model + tokenizer -> a CTranslate2 model directory (int8 weights for ``int8``)."""
    ctranslate2 = import_ctranslate2()
    import transformers

    hf_dir, out = work / f"hf-{precision}", work / f"ct2-{precision}"
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the converter's reload reports the head it drops: expected
    try:
        hf_model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        converter = ctranslate2.converters.TransformersConverter(str(hf_dir))
        converter.convert(str(out), quantization=None if precision == "fp32" else "int8", force=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return out


def _ct2_threads() -> dict[str, int]:
    return {"inter_threads": 1, "intra_threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------- sides


@dataclass
class Sides:
    """What :mod:`bigmodels.bench.speed` times: ``calls`` (label -> a call that returns the side's output; "ours"
    first), ``names`` (label -> library and version), ``settings`` (label -> how it runs), ``status`` (engine ->
    "measured" or why it is left out), ``check`` (first outputs by label -> the parity record) and ``notes``
    (what the checks compare)."""

    calls: dict[str, Callable[[], Any]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    workdir: tempfile.TemporaryDirectory | None = None

    def close(self) -> None:
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None


def _add_peer(sides: Sides, engine: str, build: Callable[[], tuple[Callable[[], Any], dict[str, Any]]],
              precision: str) -> None:
    """Build one engine's side, or record why it is left out (not installed, or it failed to build)."""
    try:
        require_engine(engine)
        call, settings = build()
    except PeerMissing as e:
        sides.status[engine] = str(e)
        log.warning("%s left out: %s", engine, e)
        return
    except Exception as e:  # noqa: BLE001 (a converter or exporter failing leaves the other sides measurable)
        log.exception("building the %s peer failed", engine)
        sides.status[engine] = f"peer failed: {type(e).__name__}: {str(e)[:300]}"
        return
    label = engine if engine == "transformers" else f"{engine} {precision}"
    sides.calls[label] = call
    sides.names[label] = f"{engine} {engine_version(engine)}" + ("" if engine == "transformers" else f" {precision}")
    sides.settings[label] = settings
    sides.status[engine] = "measured"


def build_sides(w: Workload, ours: nn.Module, x: Any, peers: bool = True) -> Sides:
    """Our side and each engine of ``w.engines`` for the input ``x`` (decode: prompt ids (B, T); infer: the
    encoder's inputs), built from ``ours`` (float32, not yet prepared: it is prepared here)."""
    if w.quant not in PRECISIONS:
        raise ConfigError(f"workload {w.name!r}: quant {w.quant!r} is not one of {', '.join(PRECISIONS)}")
    sides = Sides(workdir=tempfile.TemporaryDirectory(prefix="bigmodels-engines-"))
    try:
        if w.kind == "decode":
            _decode_sides(sides, w, ours, x, peers)
        elif w.kind == "infer":
            _encoder_sides(sides, w, ours, x, peers)
        else:
            raise ConfigError(f"workload {w.name!r}: engines run decode and infer workloads, not {w.kind!r}")
    except BaseException:
        sides.close()
        raise
    return sides


def _tokens_agree(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).float().mean())


def _decode_sides(sides: Sides, w: Workload, ours: nn.Module, ids: torch.Tensor, peers: bool) -> None:
    from ..infer.generate import CPU_COMPILE_OPTIONS, Decoder, generate
    from ..interop import hf_gpt2

    n, work = w.new_tokens, Path(sides.workdir.name)
    reference = None
    hf = None
    if peers and w.engines:
        try:
            require_engine("transformers")
            hf = _hf_model("AutoModelForCausalLM", hf_gpt2.config_to_hf(ours), hf_gpt2.state_to_hf(ours.state_dict(),
                                                                                                     ours))
        except PeerMissing as e:
            for engine in w.engines:
                sides.status[engine] = str(e)
    if w.quant == "int8":  # the fp32 tokens the int8 sides are compared with, from our fp32 model (untimed)
        with torch.inference_mode():
            reference = generate(ours.eval(), ids, max_new_tokens=n, temperature=0)[:, -n:]
    model, options, settings = prepare_ours_cpu(ours, w.quant, rows=ids.size(0))
    # its static caches (and compiled step) are kept from call to call
    decoder = Decoder(model, compile_options=CPU_COMPILE_OPTIONS if options["compile"] else None,
                      greedy_screen=settings["generate"]["greedy_screen"])
    if options["compile"] and not _compiled_before_timing(
            w, "decoding step", lambda: generate(model, ids, max_new_tokens=n, temperature=0, decoder=decoder,
                                                 **options), settings["generate"]):
        options["compile"] = False  # the same decoder then hands out static caches only

    def ours_call() -> torch.Tensor:
        with torch.inference_mode():
            return generate(model, ids, max_new_tokens=n, temperature=0, decoder=decoder, **options)[:, -n:]

    sides.calls["ours"], sides.names["ours"], sides.settings["ours"] = ours_call, "bigmodels", settings
    if hf is not None:
        for engine in w.engines:
            if engine == "transformers":
                def build_hf():
                    def call() -> torch.Tensor:
                        with torch.inference_mode():
                            return hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                               min_new_tokens=n, do_sample=False, pad_token_id=0)[:, -n:]
                    return call, {"call": "transformers generate", "do_sample": False, "cache": "dynamic"}
                _add_peer(sides, engine, build_hf, "fp32")
            elif engine == "ctranslate2":
                def build_ct2():
                    return _ct2_generator(hf, ours.config.vocab_size, w.quant, ids, n, work)
                _add_peer(sides, engine, build_ct2, w.quant)
            else:
                sides.status[engine] = f"not a decoding engine: {engine}"

    def check(outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        mine = outputs["ours"]
        for label, out in outputs.items():
            if out.shape != mine.shape:
                raise AssertionError(f"{label} made {tuple(out.shape)} new tokens where ours made {tuple(mine.shape)}")
        record: dict[str, Any] = {"new_tokens": list(mine.shape), "dtype": w.quant}
        for label, out in outputs.items():
            if label != "ours":
                record[f"tokens_agree_{label.replace(' ', '_')}"] = _tokens_agree(mine, out)
        if reference is not None:
            record["tokens_agree_ours_fp32"] = _tokens_agree(mine, reference)
        if w.quant == "fp32" and "transformers" in outputs:  # fp32 greedy decoding must be token-identical
            record["ok"] = record["tokens_agree_transformers"] == 1.0
        return record

    sides.check = check


def _ct2_generator(hf: nn.Module, vocab_size: int, precision: str, ids: torch.Tensor, n: int,
                   work: Path) -> tuple[Callable[[], torch.Tensor], dict[str, Any]]:
    ctranslate2 = import_ctranslate2()

    tokenizer = byte_level_tokenizer(vocab_size)
    path = _ct2_convert(hf, tokenizer, precision, work)
    generator = ctranslate2.Generator(str(path), device="cpu", compute_type=_CT2_COMPUTE[precision], **_ct2_threads())
    vocab = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    prompts = [[vocab[i] for i in row] for row in ids.tolist()]

    def call() -> torch.Tensor:
        # the prompt goes through the decoder at once (include_prompt_in_result=False); max_length then counts
        # new tokens only; min_length and no end token make every row exactly n tokens long
        results = generator.generate_batch(prompts, max_length=n, min_length=n, include_prompt_in_result=False,
                                           beam_size=1, sampling_topk=1, end_token=[])
        return torch.tensor([r.sequences_ids[0] for r in results])  # (B, n)

    return call, {"call": "ctranslate2.Generator.generate_batch", "compute_type": _CT2_COMPUTE[precision],
                  "converter": "TransformersConverter", "quantization": None if precision == "fp32" else "int8",
                  "sampling_topk": 1, **_ct2_threads()}


def _compiled_before_timing(w: Workload, what: str, first_call: Callable[[], Any], record: dict[str, Any]) -> bool:
    """Make our side's first call, which compiles its ``what``, before the timing (as the peers' models are converted
    and their sessions built before it). ``record`` (the row's settings) gains ``compile_seconds``, or, where inductor
    cannot build here (no C++ compiler), ``compile=False`` and ``compile_error``, and ours is timed uncompiled.
    -> whether it compiled."""
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            first_call()
    except Exception as e:  # noqa: BLE001 (inductor builds C++: a machine without a compiler runs eagerly)
        log.warning("%s: the compiled %s could not be built here (%s: %.200s); timing it uncompiled instead",
                    w.name, what, type(e).__name__, e)
        record.update(compile=False, compile_error=f"{type(e).__name__}: {str(e)[:200]}")
        return False
    record["compile_seconds"] = round(time.perf_counter() - start, 1)
    return True


def _encoder_sides(sides: Sides, w: Workload, ours: nn.Module, x: dict[str, torch.Tensor], peers: bool) -> None:
    from ..interop import hf_bert

    c, work = ours.config, Path(sides.workdir.name)
    head = c.head
    if head not in ("embedding", "sequence_classification"):
        raise ConfigError(f"workload {w.name!r}: the CPU encoder rows take an embedding or sequence_classification "
                          f"BERT, not head={head!r}")
    with torch.inference_mode():
        reference = ours.eval()(**x).float()  # the fp32 output every side is compared with
    mask = torch.ones_like(x["input_ids"])  # full-length sequences: every position is a token
    feeds = {**x, "attention_mask": mask}
    built: dict[str, Callable[[], tuple[Callable[[], Any], dict[str, Any]]]] = {}
    if peers:
        for engine in w.engines:
            if engine == "onnxruntime":
                built[engine] = lambda: _ort_encoder(ours, w.quant, feeds, work)
            elif engine == "ctranslate2":
                def build_ct2():
                    auto = "AutoModel" if head == "embedding" else "AutoModelForSequenceClassification"
                    state = hf_bert.state_to_hf(ours.state_dict(), ours)
                    if head == "embedding":  # BertModel has a pooler, the embedding head none: zeros, never read
                        H = c.hidden_size
                        state.setdefault("pooler.dense.weight", torch.zeros(H, H))
                        state.setdefault("pooler.dense.bias", torch.zeros(H))
                    hf = _hf_model(auto, hf_bert.config_to_hf(ours), state)
                    tail = _numpy_head(ours)
                    return _ct2_encoder(hf, c.vocab_size, w.quant, x, head, tail, work)
                built[engine] = build_ct2
            else:
                sides.status[engine] = f"not an encoder engine: {engine}"
    for engine, build in built.items():  # the peers are built from the fp32 weights, before ours is prepared
        _add_peer(sides, engine, build, w.quant)
    model, _, settings = prepare_ours_cpu(ours, w.quant)
    settings["compile"] = w.quant == "fp32" and x["input_ids"].size(0) <= ENCODER_FREEZE_MAX_BATCH
    if settings["compile"]:
        from ..compress.fuse import compile_model

        compiled = compile_model(model, fullgraph=True, freeze=True)
        if _compiled_before_timing(w, "forward", lambda: compiled(**x), settings):
            model = compiled
            settings["compile_options"] = "compile_model(fullgraph=True, freeze=True)"

    def ours_call() -> torch.Tensor:
        with torch.inference_mode():
            return model(**x)  # full length: no attention mask (as bert-infer)

    sides.calls = {"ours": ours_call, **sides.calls}
    sides.names = {"ours": "bigmodels", **sides.names}
    sides.settings = {"ours": {**settings, "attention_mask": None}, **sides.settings}

    def check(outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        mine = outputs["ours"].float()
        record: dict[str, Any] = {"dtype": w.quant, "output_shape": list(mine.shape), "samples": mine.shape[0]}
        worst = 1.0
        for label, out in outputs.items():
            key = label.replace(" ", "_")
            out = out.float()
            vs_ref = F.cosine_similarity(out.flatten(1), reference.flatten(1), dim=-1)  # (B,)
            record[f"min_cosine_fp32_reference_{key}"] = float(vs_ref.min())
            if label != "ours":
                cos = F.cosine_similarity(mine.flatten(1), out.flatten(1), dim=-1)
                record[f"min_cosine_{key}"] = float(cos.min())
                record[f"max_abs_diff_{key}"] = float((mine - out).abs().max())
                worst = min(worst, float(cos.min()))
        record["min_cosine"] = worst
        if w.quant == "fp32":
            record["ok"] = worst >= 0.9999
        return record

    sides.check = check


def _numpy_head(ours: nn.Module) -> Callable[[Any], Any]:
    """Our head on another engine's output, in numpy: the embedding head (masked mean or CLS, then L2-normalised)
    on the last hidden states (B, T, H), or the classifier Linear on the pooled output (B, H).

    In numpy rather than torch so that a peer's timed call wakes none of torch's OpenMP threads: once woken, an
    idle libgomp worker spin-waits (up to 300,000 rounds) and takes a core from the peer's next call."""
    import numpy as np

    c = ours.config
    if c.head == "embedding":
        def pool(hidden: Any, mask: Any) -> Any:  # (B, T, H), (B, T) -> (B, H)
            if c.pooling == "cls":
                v = hidden[:, 0]
            else:
                m = mask[..., None].astype(hidden.dtype)
                v = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            if c.normalize:  # F.normalize: v / max(||v||, eps)
                v = v / np.maximum(np.sqrt((v * v).sum(-1, keepdims=True)), 1e-12)
            return v

        return pool
    weight = ours.classifier.weight.detach().float().numpy().T.copy()  # (H, labels)
    bias = ours.classifier.bias.detach().float().numpy()

    def classify(pooled: Any) -> Any:  # (B, H) -> (B, labels), without BLAS (its threads spin too)
        return (pooled[:, :, None] * weight[None]).sum(1) + bias

    return classify


def _ct2_encoder(hf: nn.Module, vocab_size: int, precision: str, x: dict[str, torch.Tensor], head: str,
                 tail: Callable, work: Path) -> tuple[Callable[[], torch.Tensor], dict[str, Any]]:
    """CTranslate2's Encoder (it converts BertModel: the encoder and the pooler) with our head applied in numpy
    on its output (:func:`_numpy_head`): the mean pooling of an embedding model, or the classifier on the pooled
    CLS."""
    ctranslate2 = import_ctranslate2()
    import numpy as np

    path = _ct2_convert(hf, wordpiece_tokenizer(vocab_size), precision, work)
    encoder = ctranslate2.Encoder(str(path), device="cpu", compute_type=_CT2_COMPUTE[precision], **_ct2_threads())
    ids = x["input_ids"].to(torch.int32)
    B, T = ids.shape
    lengths = ctranslate2.StorageView.from_array(np.full((B,), T, dtype=np.int32))
    inputs = ctranslate2.StorageView.from_array(ids.numpy())
    types = x["token_type_ids"].tolist()
    mask = np.ones((B, T), dtype=np.float32)

    def call() -> torch.Tensor:
        out = encoder.forward_batch(inputs, lengths, token_type_ids=types)
        if head == "embedding":
            return torch.from_numpy(tail(np.asarray(out.last_hidden_state), mask))  # (B, H)
        return torch.from_numpy(tail(np.asarray(out.pooler_output)))  # (B, num_labels)

    return call, {"call": "ctranslate2.Encoder.forward_batch", "compute_type": _CT2_COMPUTE[precision],
                  "converter": "TransformersConverter (BertModel)",
                  "head": "our mean pooling, in numpy" if head == "embedding" else "our classifier Linear, in numpy",
                  **_ct2_threads()}


def _ort_encoder(ours: nn.Module, precision: str, feeds: dict[str, torch.Tensor],
                 work: Path) -> tuple[Callable[[], torch.Tensor], dict[str, Any]]:
    """Our fp32 model exported by :func:`bigmodels.export.export_onnx` (dynamo) in an ONNX Runtime session; int8:
    ONNX Runtime's dynamic int8 quantization of that graph (``quantize_dynamic``, QInt8 weights)."""
    from ..export.onnx import INT8_FILE, ONNX_FILE, export_onnx
    from ..export.runner import load_onnx

    out = work / "onnx"
    export_onnx(ours, out, int8=precision == "int8", tokenizer=None)
    session = load_onnx(out / (INT8_FILE if precision == "int8" else ONNX_FILE), threads=torch.get_num_threads())

    def call() -> torch.Tensor:
        return session(feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"])

    return call, {"call": "onnxruntime.InferenceSession.run", "export": "bigmodels.export.export_onnx (dynamo)",
                  "quantization": "quantize_dynamic QInt8" if precision == "int8" else None,
                  "intra_op_threads": torch.get_num_threads(), "providers": ["CPUExecutionProvider"]}
