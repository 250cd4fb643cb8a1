"""GPT-2 124M greedy decoding on the CPU: bigmodels against transformers and CTranslate2, from the same weights.

Random GPT-2 124M weights (seeded; no pretrained GPT-2 is needed) are built by bigmodels, written in Hugging Face's
format (the transformers peer loads that directory) and converted by CTranslate2's own converter (fp32, or int8
with ``--int8``). The converter wants a tokenizer in the directory: a byte-level BPE GPT2TokenizerFast with
GPT-2's 50,257 ids is written there (no network). Before timing, the three sides must produce the same tokens
(greedy); then they run alternately, ``--reps`` times each, and the script prints tokens/s per side and the
ratios of ours to each peer, per alternating round (their median), which is what to read on a shared CPU.

    python benchmarks/cpu_decode.py --batch 1 --prompt 32 --new 64 --threads 2 --reps 5
    python benchmarks/cpu_decode.py --batch 8 --int8 --reps 5
    python benchmarks/cpu_decode.py --profile --threads 1 [--baseline]   # torch.profiler table of our decoding
    python benchmarks/cpu_decode.py --ppl              # Tiny Shakespeare perplexity, fp32 vs int8
    python benchmarks/cpu_decode.py --ppl --ppl-steps --ppl-chars 2048   # the same token by token, as decoding
    python benchmarks/cpu_decode.py --kernels --batch 8   # one step's Linear products with each CPU kernel
    python benchmarks/cpu_decode.py --kernels --int8      # the same with each int8 kernel, and the memory bound
    python benchmarks/cpu_decode.py --compile --no-hf --slots 256   # the compiled step with a 256-slot cache too
    python benchmarks/cpu_decode.py --compile --no-hf --without-f32-kernel   # and without bigmodels_cpu::linear_f32
    python benchmarks/cpu_decode.py --compile --no-hf --greedy-screen   # ours' output layer screened, and without

Our side is ``generate(model, ids, temperature=0, max_new_tokens=N, cache=...)`` after
``prepare_for_cpu_decoding(model)`` (fp32: every Linear's weight column-major and packed for oneDNN) or
``prepare_for_cpu_decoding(model, int8=True)`` (``--int8``: ``Int8DynamicConfig(kernel="fbgemm", output_layer=True)``).
``--baseline`` adds the untransformed model as a side, ``--column-major`` the first round's ``column_major_linears_``
model. With ``--compile``, ours decodes with ``cache="static", compile=True`` and a :class:`Decoder` with the
library's CPU compile options (``CPU_COMPILE_OPTIONS``: inductor, whole graph; the step multiplies with the
column-major weights). ``--greedy-screen``: ours' :class:`Decoder` picks greedy tokens through the float16 screen of
the output layer (``greedy_screen=True``, static cache), beside the same model and cache without it
(bigmodels-no-screen).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

import bigmodels
from bigmodels.compress.layout import PackedLinear, column_major_linears_, prepare_for_cpu_decoding
from bigmodels.infer import generate as decoding
from bigmodels.infer.generate import CPU_COMPILE_OPTIONS, Decoder, GenerationConfig, generate

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare"


# ---------------------------------------------------------------------------------------------- building the sides


def build_ours(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return bigmodels.create_model("gpt2").eval()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def write_tokenizer(directory: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer with ``vocab_size`` ids: the 256 byte symbols, then merges of symbol pairs,
    the last id GPT-2's <|endoftext|>. Only its vocabulary matters here (CTranslate2 stores it)."""
    symbols = list(_bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    merges = []
    for a in symbols:
        for b in symbols:
            if len(vocab) >= vocab_size - 1:
                break
            vocab[a + b] = len(vocab)
            merges.append(f"{a} {b}")
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer"}
    (directory / "tokenizer_config.json").write_text(json.dumps(special), encoding="utf-8")


def build_peers(ours: torch.nn.Module, work: Path, int8: bool, threads: int):
    """(transformers GPT2LMHeadModel, CTranslate2 Generator, its vocabulary) with ``ours``'s weights."""
    import transformers

    from bigmodels.bench.engines import import_ctranslate2

    ctranslate2 = import_ctranslate2()  # on its own OpenMP runtime, not torch's

    hf_dir = work / "hf"
    bigmodels.save(ours, hf_dir, format="hf")
    write_tokenizer(hf_dir, ours.config.vocab_size)
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir, attn_implementation="sdpa").float().eval()
    ct2_dir = work / ("ct2_int8" if int8 else "ct2")
    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(ct2_dir),
                                                                      quantization="int8" if int8 else None)
    gen = ctranslate2.Generator(str(ct2_dir), device="cpu", compute_type="int8" if int8 else "float32",
                                intra_threads=threads, inter_threads=1)
    vocab = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    return hf, gen, sorted(vocab, key=vocab.get)


# ---------------------------------------------------------------------------------------------- the decoders


def decoders(ours, hf, gen, tokens, new: int, compile: bool = False, baseline=None, cache: str = "dynamic",
             others=None, slots=(), screen: bool = False):
    """name -> (ids (B, T) -> new tokens (B, new)); ``others``: more of our models by name, decoded like ours;
    ``slots``: with ``compile``, more compiled sides whose static cache has that many slots instead of
    :func:`~bigmodels.infer.generate.static_length`'s (each its own graph, shapes kept static); ``screen``: ours
    with ``Decoder(greedy_screen=True)`` (static cache), and bigmodels-no-screen without it."""
    index = {t: i for i, t in enumerate(tokens)}
    greedy = GenerationConfig(max_new_tokens=new, temperature=0, cache="static" if screen else cache)
    if compile:
        greedy = GenerationConfig(max_new_tokens=new, temperature=0, cache="static", compile=True)
    options = CPU_COMPILE_OPTIONS if compile else None
    decoder = Decoder(ours, compile_options=options, greedy_screen=screen) if compile or screen else None

    def run_ours(ids):
        return generate(ours, ids, greedy, decoder=decoder)[:, ids.size(1):]

    def run_hf(ids):
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, pad_token_id=0)
        return out[:, ids.size(1):]

    def run_ct2(ids):
        prompts = [[tokens[i] for i in row] for row in ids.tolist()]
        results = gen.generate_batch(prompts, max_length=new, min_length=new, beam_size=1, sampling_topk=1,
                                     include_prompt_in_result=False, end_token=[])
        return torch.tensor([[index[t] for t in r.sequences[0]] for r in results])

    sides = {"bigmodels": run_ours, "ctranslate2": run_ct2}
    if screen:
        whole = Decoder(ours, compile_options=options)
        sides["bigmodels-no-screen"] = lambda ids: generate(ours, ids, greedy, decoder=whole)[:, ids.size(1):]
    if compile:  # the same model and static cache, uncompiled: what compiling buys at this batch
        eager = GenerationConfig(max_new_tokens=new, temperature=0, cache="static")
        sides["bigmodels-eager"] = lambda ids: generate(ours, ids, eager)[:, ids.size(1):]
    for n in slots if compile else ():
        fixed = Decoder(ours, compile_options={**CPU_COMPILE_OPTIONS, "dynamic": False})
        sides[f"bigmodels-{n}-slots"] = lambda ids, n=n, fixed=fixed: _with_slots(n, generate, ours, ids, greedy,
                                                                                   decoder=fixed)[:, ids.size(1):]
    if baseline is not None:
        sides["bigmodels-before"] = lambda ids: generate(baseline, ids, greedy)[:, ids.size(1):]
    for name, other in (others or {}).items():  # compiled with --compile, each with its own decoder
        own = Decoder(other, compile_options=CPU_COMPILE_OPTIONS) if compile else None
        sides[name] = lambda ids, other=other, own=own: generate(other, ids, greedy, decoder=own)[:, ids.size(1):]
    if hf is not None:
        sides["transformers"] = run_hf
    return sides


def _with_slots(n: int, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with compiled static caches of ``n`` slots."""
    chosen = decoding.static_length
    decoding.static_length = lambda length, context=None: max(n, length)
    try:
        return fn(*args, **kwargs)
    finally:
        decoding.static_length = chosen


def check_tokens(sides, ids, reference: str) -> dict[str, float]:
    """Share of new tokens equal to ``reference``'s, per side (1.0 = identical)."""
    outs = {name: fn(ids) for name, fn in sides.items()}
    ref = outs[reference]
    return {name: float((out[:, :ref.size(1)] == ref).float().mean()) if out.shape == ref.shape else 0.0
            for name, out in outs.items()}


def time_sides(sides, ids, reps: int) -> dict[str, list[float]]:
    """Seconds per call, per side, the sides alternating (one warm-up call each first)."""
    for fn in sides.values():
        fn(ids)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(reps):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]  # alternate the order too
        for name in order:
            t0 = time.perf_counter()
            sides[name](ids)
            times[name].append(time.perf_counter() - t0)
    return times


def report(times, n_tokens: int, ours: str = "bigmodels") -> None:
    for name, ts in times.items():
        print(f"  {name:<22} {n_tokens / statistics.median(ts):8.1f} tok/s  (median of {len(ts)}; best "
              f"{n_tokens / min(ts):.1f})")
    for name, ts in times.items():
        if name != ours:
            ratios = [t / o for o, t in zip(times[ours], ts, strict=True)]  # > 1: ours is faster
            print(f"  {ours} / {name}: {statistics.median(ratios):.2f}x (median of per-round ratios; "
                  f"range {min(ratios):.2f}-{max(ratios):.2f})")


# ---------------------------------------------------------------------------------------------- profile, perplexity


def profile_step(model, ids, new: int, cache: str = "dynamic") -> None:
    from torch.profiler import ProfilerActivity, profile

    generate(model, ids, max_new_tokens=new, temperature=0, cache=cache)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(model, ids, max_new_tokens=new, temperature=0, cache=cache)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


@torch.no_grad()
def time_kernels(model, rows: int, reps: int) -> None:
    """The Linear products of one decoding step (``rows`` rows) with each CPU kernel, alternating; prints the
    median ms and the median per-round ratio to the column-major weights (> 1: faster)."""
    F = torch.nn.functional
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    ws = [m.weight.detach().contiguous() for m in layers]
    bs = [None if m.bias is None else m.bias.detach() for m in layers]
    xs = [torch.randn(rows, w.size(1)) for w in ws]
    cm = [w.t().contiguous().t() for w in ws]
    mkl = [torch.ops.mkl._mkl_reorder_linear_weight(w, rows) for w in ws]
    dnn_rows = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in ws]
    dnn = [torch.ops.mkldnn._reorder_linear_weight(w) for w in ws]
    kernels = {
        "row-major F.linear": lambda: [F.linear(x, w, b) for x, w, b in zip(xs, ws, bs, strict=True)],
        "column-major F.linear": lambda: [F.linear(x, w, b) for x, w, b in zip(xs, cm, bs, strict=True)],
        "mkl::_mkl_linear": lambda: [torch.ops.mkl._mkl_linear(x, p, w, b, rows)
                                     for x, p, w, b in zip(xs, mkl, ws, bs, strict=True)],
        "oneDNN packed for M rows": lambda: [torch.ops.mkldnn._linear_pointwise(x, p, b, "none", [], "")
                                             for x, p, b in zip(xs, dnn_rows, bs, strict=True)],
        "oneDNN packed (any rows)": lambda: [torch.ops.mkldnn._linear_pointwise(x, p, b, "none", [], "")
                                             for x, p, b in zip(xs, dnn, bs, strict=True)],
    }
    times = time_sides({k: lambda _, f=f: f() for k, f in kernels.items()}, None, reps)
    for name, ts in times.items():
        ratios = [c / t for c, t in zip(times["column-major F.linear"], ts, strict=True)]
        print(f"  {name:<26} {statistics.median(ts) * 1e3:8.1f} ms  ({statistics.median(ratios):.2f}x column-major)")


@torch.no_grad()
def time_int8_kernels(model, rows: int, reps: int) -> None:
    """The int8 products of one decoding step (``rows`` rows; every Linear, the output layer too, with int8 weights
    per output channel) with each int8 kernel this torch build has, alternating; prints the median ms, the
    bandwidth it amounts to (weight bytes / time) and, as the memory bound, one streaming read of the same bytes."""
    from bigmodels.compress.quantize import Int8DynamicLinear

    layers = [Int8DynamicLinear.from_linear(m) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(rows, m.in_features) for m in layers]
    zeros = [torch.zeros(m.out_features, dtype=torch.long) for m in layers]
    packed = {e: [m.packed_for(e) for m in layers] for e in ("fbgemm", "onednn")}
    qlin = [torch.ops.onednn.qlinear_prepack(m.weight.contiguous(), [rows, m.in_features]) for m in layers]
    scales = [m.weight_scale.float() for m in layers]

    def qlinear_pointwise() -> None:  # the successor of fbgemm's op: the activation quantized here, per tensor
        for x, w, s, z, m in zip(xs, qlin, scales, zeros, layers, strict=True):
            step = float(x.abs().amax()) / 127.0
            xq = torch.clamp(torch.round(x / step), -127, 127).add_(128).to(torch.uint8)
            torch.ops.onednn.qlinear_pointwise(xq, step, 128, w, s, z, m.bias, 1.0, 0, torch.float32, "none", [], "")

    weights = torch.cat([m.weight.flatten() for m in layers])  # the same bytes in one block, for the read bound
    kernels = {
        "fbgemm linear_dynamic": lambda: [torch.ops.quantized.linear_dynamic(x, p, False)
                                          for x, p in zip(xs, packed["fbgemm"], strict=True)],
        "oneDNN linear_dynamic": lambda: [torch.ops.quantized.linear_dynamic(x, p, False)
                                          for x, p in zip(xs, packed["onednn"], strict=True)],
        "oneDNN qlinear_pointwise": qlinear_pointwise,
        "_weight_int8pack_mm fp32": lambda: [torch.ops.aten._weight_int8pack_mm(x, m.weight, s)
                                             for x, m, s in zip(xs, layers, scales, strict=True)],
        "_weight_int8pack_mm bf16": lambda: [torch.ops.aten._weight_int8pack_mm(x.bfloat16(), m.weight, s.bfloat16())
                                             for x, m, s in zip(xs, layers, scales, strict=True)],
        "read the bytes (max)": lambda: weights.max(),
    }
    times = time_sides({k: lambda _, f=f: f() for k, f in kernels.items()}, None, reps)
    gb = weights.numel() / 1e9
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"  {name:<26} {t * 1e3:8.2f} ms  ({gb / t:5.1f} GB/s of int8 weights)")


@torch.no_grad()
@torch.inference_mode()
def perplexity(model, ids: torch.Tensor, window: int = 256, steps: bool = False) -> float:
    """exp(mean next-token cross-entropy) over ``ids`` (N,) in windows of ``window`` tokens. ``steps``: each
    window token by token through the key/value cache, as decoding computes (one row per product: the int8 products
    run on the kernel's one-row VNNI loop, as decoding's), not as one forward of the window (256 rows a product)."""
    nll, count = 0.0, 0
    for start in range(0, ids.numel() - 1, window):
        x = ids[start:start + window + 1]
        if x.numel() < 2:
            break
        if steps:
            cache = model.new_cache()
            logits = torch.cat([model(x[None, i:i + 1], cache=cache)[0] for i in range(x.numel() - 1)]).float()
        else:
            logits = model(x[None, :-1])[0].float()  # (T, V)
        nll += torch.nn.functional.cross_entropy(logits, x[1:], reduction="sum").item()
        count += x.numel() - 1
    return math.exp(nll / count)


def quantized(model):
    return prepare_for_cpu_decoding(copy.deepcopy(model), int8=True)


def without_f32_kernel(model):
    """``model`` whose :class:`~bigmodels.compress.layout.PackedLinear` layers never call
    ``bigmodels_cpu::linear_f32`` (their few-row products on addmm when compiled, oneDNN's packed weights eager)."""
    for m in model.modules():
        if isinstance(m, PackedLinear):
            m.kernel_max_rows = 0
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1, help="prompts decoded together (1 or 8)")
    p.add_argument("--prompt", type=int, default=32, help="prompt length in tokens")
    p.add_argument("--new", type=int, default=64, help="new tokens per prompt")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every side")
    p.add_argument("--reps", type=int, default=5, help="timed calls per side, alternating")
    p.add_argument("--int8", action="store_true", help="ours int8 (quantize_) against CTranslate2 int8")
    p.add_argument("--compile", action="store_true",
                   help="ours: static cache + compiled step (CPU_COMPILE_OPTIONS); also times it uncompiled "
                        "(bigmodels-eager)")
    p.add_argument("--slots", type=int, nargs="*", default=(),
                   help="with --compile: also time compiled sides whose static cache has this many slots")
    p.add_argument("--baseline", action="store_true", help="also time ours without the transforms (before)")
    p.add_argument("--column-major", action="store_true", help="also time column_major_linears_ (the first round)")
    p.add_argument("--without-f32-kernel", action="store_true",
                   help="fp32: also time ours with its few-row products on addmm / oneDNN instead of "
                        "bigmodels_cpu::linear_f32 (bigmodels-no-f32-kernel)")
    p.add_argument("--greedy-screen", action="store_true",
                   help="fp32: ours picks greedy tokens through the output layer's float16 screen (exact); also "
                        "times the same without it (bigmodels-no-screen)")
    p.add_argument("--cache", choices=("dynamic", "static"), default="dynamic", help="our key/value cache")
    p.add_argument("--no-hf", action="store_true", help="leave transformers out of the timing")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of our decoding")
    p.add_argument("--kernels", action="store_true", help="time one step's Linear products with each CPU kernel")
    p.add_argument("--ppl", action="store_true", help="Tiny Shakespeare perplexity of ours, fp32 and int8")
    p.add_argument("--ppl-steps", action="store_true",
                   help="--ppl token by token through the cache, as decoding runs (int8: its few-row kernel)")
    p.add_argument("--ppl-chars", type=int, default=8000, help="characters of Tiny Shakespeare for --ppl")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and prompts")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = build_ours(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size - 1, (args.batch, args.prompt), generator=g)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GPT-2 124M random weights, batch "
          f"{args.batch}, prompt {args.prompt}, {args.new} new tokens, {'int8' if args.int8 else 'fp32'}")

    if args.kernels:
        print(f"the {sum(isinstance(m, torch.nn.Linear) for m in model.modules())} Linear products of one step, "
              f"{args.batch} row(s){', int8 weights' if args.int8 else ''}:")
        (time_int8_kernels if args.int8 else time_kernels)(model, args.batch, args.reps)
        return
    if args.ppl:
        text = sorted(SHAKESPEARE.glob("*.txt"))[0].read_text(encoding="utf-8")[: args.ppl_chars]
        data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)  # byte-level: ids 0..255 of GPT-2's
        fp32, int8 = (perplexity(m, data, steps=args.ppl_steps) for m in (model, quantized(model)))
        print(f"perplexity on {data.numel()} bytes of Tiny Shakespeare{', token by token' if args.ppl_steps else ''}"
              f": fp32 {fp32:.2f}, int8 {int8:.2f} (relative gap {abs(int8 - fp32) / fp32:.4%})")
        return

    ours = prepare_for_cpu_decoding(copy.deepcopy(model), int8=args.int8)
    others = {}
    if args.column_major:
        others["bigmodels-column-major"] = copy.deepcopy(model)
        column_major_linears_(others["bigmodels-column-major"])
    if args.without_f32_kernel:
        others["bigmodels-no-f32-kernel"] = without_f32_kernel(copy.deepcopy(ours))
    if args.profile:  # --baseline: the model as built; --column-major: the first round's transform
        chosen = model if args.baseline else others.get("bigmodels-column-major", ours)
        profile_step(chosen, ids, args.new, args.cache)
        return
    with tempfile.TemporaryDirectory() as work:
        hf, gen, tokens = build_peers(model, Path(work), args.int8, args.threads)
        sides = decoders(ours, None if args.no_hf else hf, gen, tokens, args.new, args.compile,
                         model if args.baseline else None, args.cache, others, args.slots, args.greedy_screen)
        if args.int8:  # int8 sides round differently: compare with the fp32 reference
            ref = decoders(model, None, gen, tokens, args.new)["bigmodels"](ids)
            same = {name: float((fn(ids) == ref).float().mean()) for name, fn in sides.items()}
            print("  tokens equal to our fp32 greedy output:", {k: f"{v:.0%}" for k, v in same.items()})
        else:
            same = check_tokens(sides, ids, "transformers" if "transformers" in sides else "bigmodels")
            print("  token identity:", {k: f"{v:.0%}" for k, v in same.items()})
            if min(same.values()) < 1.0:
                raise SystemExit("fp32 sides disagree on greedy tokens: not timing them")
        report(time_sides(sides, ids, args.reps), args.batch * args.new)


if __name__ == "__main__":
    main()
