"""PyTorch against ONNX Runtime as the backend of the same embedding pipeline: all-MiniLM-L6-v2 on STS-B test.

Both sides are ``bigmodels.pipeline("feature-extraction", ...)`` over the same weights: the PyTorch model as
the server loads it (``load_served``: q/k/v packed, oneDNN-packed weights, GELU fused, freed memory kept for reuse,
process-wide), and its ONNX export (``bigmodels export --format onnx``, fp32, and the
dynamic int8 file beside it, with one weight scale a matrix and, ``--int8 --per-channel``, one an output channel)
run by ONNX Runtime. Repetitions alternate between the sides in one process, so a
busy machine slows both alike; the median repetition gives sentences/s. The vectors are compared (cosine) and
scored on STS-B (Spearman of the pair cosines against the gold scores), so a faster side that drifts shows.

    python benchmarks/embed_backends.py                  # 2,758 sentences, batch 64, 3 timed repetitions
    python benchmarks/embed_backends.py --reps 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def spearman(vectors: torch.Tensor, gold: list[float]) -> float:
    """Spearman correlation of each pair's cosine (rows 2i, 2i+1) with the gold similarity."""
    from bigmodels.metrics import spearman as rank_correlation

    cos = F.cosine_similarity(vectors[0::2], vectors[1::2], dim=-1)
    return float(rank_correlation(cos.tolist(), gold))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/stsb/stsb-en-test.csv", help="the STS-B test csv")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per side (after one warm-up)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)

    import bigmodels
    from bigmodels.bench.workloads import load_minilm
    from bigmodels.data.nlp import read_stsb
    from bigmodels.export.onnx import export_onnx
    from bigmodels.serve.loading import load_served

    torch.set_num_threads(args.threads)
    rows = read_stsb(args.data, "test")
    texts = [s for a, b, _ in rows for s in (a, b)]
    gold = [g for _, _, g in rows]
    model, tokenizer, path = load_minilm()
    out = Path(tempfile.mkdtemp(prefix="embed_backends_"))
    export = export_onnx(model, out / "onnx", int8=True, tokenizer=tokenizer)
    per_channel = export_onnx(model, out / "onnx-per-channel", int8="per-channel", tokenizer=tokenizer)
    served = load_served(str(path), batch_size=args.batch).pipe("/v1/embeddings")  # the server's own copy
    sides = {
        "pytorch": served,
        "onnxruntime": bigmodels.pipeline("feature-extraction", out / "onnx", backend="onnxruntime",
                                          batch_size=args.batch),
        "onnxruntime-int8": bigmodels.pipeline("feature-extraction", export.int8_path, backend="onnxruntime",
                                               batch_size=args.batch),
        "onnxruntime-int8-pc": bigmodels.pipeline("feature-extraction", per_channel.int8_path,
                                                  backend="onnxruntime", batch_size=args.batch),
    }
    times: dict[str, list[float]] = {s: [] for s in sides}
    vectors: dict[str, torch.Tensor] = {}
    for rep in range(1 + args.reps):
        for name, pipe in sides.items():
            t0 = time.perf_counter()
            vectors[name] = pipe.embed(texts)
            if rep:
                times[name].append(time.perf_counter() - t0)
    ref = vectors["pytorch"]
    result = {"model": str(path), "sentences": len(texts), "batch": args.batch, "threads": args.threads,
              "reps": args.reps, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "torch": torch.__version__, "sides": {}}
    for name in sides:
        rate = len(texts) / statistics.median(times[name])
        cos = F.cosine_similarity(vectors[name], ref, dim=-1)
        result["sides"][name] = {"sentences_per_s": rate, "ratio_to_pytorch": None, "min_cosine_to_pytorch":
                                 float(cos.min()), "mean_cosine_to_pytorch": float(cos.mean()),
                                 "stsb_spearman": spearman(vectors[name], gold),
                                 "seconds": times[name]}
    base = result["sides"]["pytorch"]["sentences_per_s"]
    for side in result["sides"].values():
        side["ratio_to_pytorch"] = side["sentences_per_s"] / base
    fastest = max(("pytorch", "onnxruntime"), key=lambda s: result["sides"][s]["sentences_per_s"])
    result["faster_fp32_backend"] = fastest
    print(f"{'backend':20} {'sent/s':>8} {'x pytorch':>9} {'min cos':>9} {'mean cos':>9} {'Spearman':>9}")
    for name, s in result["sides"].items():
        print(f"{name:20} {s['sentences_per_s']:8.1f} {s['ratio_to_pytorch']:9.2f} {s['min_cosine_to_pytorch']:9.6f} "
              f"{s['mean_cosine_to_pytorch']:9.6f} {s['stsb_spearman']:9.5f}")
    print("onnxruntime-int8: one weight scale a matrix; -pc: one an output channel (export --int8 --per-channel)")
    print(f"faster fp32 backend: {fastest}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
