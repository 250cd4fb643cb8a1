"""Latency of compressed models against their original, alternating in one process (the sides take turns, the
median of each side's medians): what recipes/RESULTS.md quotes for pruned and distilled SST-2 models.

``bigmodels compress`` and ``bigmodels.bench.tradeoff`` time the original and then the compressed model once each;
on a small shared machine one pass can be off by 15% (the same original timed 9.7 and 11.3 ms in two passes of one
process). Here the sides alternate for ``--rounds`` rounds.

    python benchmarks/compressed_latency.py runs/sst2_minilm runs/sst2_minilm_it2_kd runs/sst2_bert3s_hid
    python benchmarks/compressed_latency.py runs/sst2_minilm runs/sst2_minilm_it2_kd --batch 32 --reps 10
"""

from __future__ import annotations

import argparse
import statistics

import torch
from cpu_attention import _median_us  # this folder's timing helper (run as a script: the folder is on sys.path)

import bigmodels


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("original", help="the model before compression (a bigmodels directory)")
    p.add_argument("compressed", nargs="+", help="compressed models of the same vocabulary")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=64, help="tokens per input (random ids, no padding)")
    p.add_argument("--reps", type=int, default=60, help="timed forwards per side and round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {name: bigmodels.load(name).eval() for name in (args.original, *args.compressed)}
    ids = torch.randint(1000, 20000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, model in models.items():
                times[name].append(_median_us(lambda m=model: m(ids), args.reps) / 1e3)
    base = statistics.median(times[args.original])
    print(f"{args.batch} x {args.seq} tokens, {args.threads} threads, {args.rounds} alternating rounds of "
          f"{args.reps}: {args.original} {base:.2f} ms")
    for name in args.compressed:
        ms = statistics.median(times[name])
        print(f"  {name}: {ms:.2f} ms, {base / ms:.2f}x faster")


if __name__ == "__main__":
    main()
