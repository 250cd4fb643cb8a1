"""The CPU attention kernels, side by side: PyTorch's fused ``scaled_dot_product_attention`` against the library's
route of two batched matrix products (``bigmodels.nn.attention.scaled_dot_product_attention`` with the routing
thresholds lifted), for the shapes of sentence encoders (batch x tokens, heads of 32 and 64), without and with a
padding mask. Prints the medians and the ratio fused / matrix products (> 1: the matrix products are faster); the
routing thresholds in ``bigmodels/nn/attention.py`` come from this table (``benchmarks/cpu_encoders.md``).

    python benchmarks/cpu_attention.py --threads 2 --reps 20

``--one-query``: a decoding step's attention instead (one query per row and head over a static cache whose
unwritten slots are masked, GPT-2's 12 heads of 64): PyTorch's fused kernel against ``bigmodels_cpu``'s
``one_query_attention`` (``bigmodels.nn.kernels``), which the library takes for such calls (tenth session).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = ((64, 16, 32), (64, 30, 32), (32, 40, 32), (32, 48, 32), (1, 48, 32), (1, 64, 32), (1, 128, 32),
          (8, 128, 32), (32, 64, 32), (32, 128, 32), (1, 128, 64), (32, 128, 64), (1, 256, 64), (16, 256, 64),
          (1, 512, 64), (4, 512, 64))


def _median_us(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--one-query", action="store_true", help="decoding's one-query attention (see above)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one_query:
        return one_query(args.heads, args.reps)
    import bigmodels.nn.attention as attention

    routes = {(b, t, d): "products" if attention._math_is_faster(torch.empty(b, args.heads, t, d),
                                                                  torch.empty(b, args.heads, t, d)) else "fused"
              for b, t, d in SHAPES}  # where the library sends each shape on this CPU
    attention._CPU_MATH_MAX_KEYS = 1 << 30  # every call takes the matrix products
    print("| batch x tokens, head size | mask | fused us | matrix products us | fused / products | routed to |")
    print("|---|---|---|---|---|---|")
    for b, t, d in SHAPES:
        q, k, v = (torch.randn(b, args.heads, t, d) for _ in range(3))
        padding = torch.ones(b, t, dtype=torch.bool)
        padding[0, t // 2:] = False
        for mask in (None, attention.attention_mask(t, t, key_padding=padding)):
            def fused_call(q=q, k=k, v=v, mask=mask):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

            def products_call(q=q, k=k, v=v, mask=mask):
                return attention.scaled_dot_product_attention(q, k, v, mask)

            with torch.inference_mode():
                fused, products = _median_us(fused_call, args.reps), _median_us(products_call, args.reps)
            routed = routes[b, t, d]
            print(f"| {b} x {t}, {d} | {'padding' if mask is not None else 'none'} | {fused:.0f} | {products:.0f} | "
                  f"{fused / products:.2f} | {routed} |", flush=True)


def one_query(heads: int, reps: int) -> None:
    from bigmodels.nn import kernels

    if not kernels.available():
        print("bigmodels_cpu is not built here (see the log): nothing to compare")
        return
    print("| batch, cache slots (written) | fused us | one_query_attention us | fused / ours |")
    print("|---|---|---|---|")
    for b in (1, 8):
        for slots in (64, 128, 256, 1024):
            q, k, v = torch.randn(b, heads, 1, 64), torch.randn(b, heads, slots, 64), torch.randn(b, heads, slots, 64)
            mask = torch.zeros(1, 1, 1, slots)
            mask[..., 3 * slots // 4:] = float("-inf")  # the slots not written yet

            def fused_call(q=q, k=k, v=v, mask=mask):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

            def ours_call(q=q, k=k, v=v, mask=mask):
                return torch.ops.bigmodels_cpu.one_query_attention(q, k, v, mask, 0.125)

            with torch.inference_mode():
                rounds = [(_median_us(fused_call, reps), _median_us(ours_call, reps)) for _ in range(3)]
            fused, ours = (statistics.median(r[i] for r in rounds) for i in (0, 1))
            print(f"| {b}, {slots} ({3 * slots // 4}) | {fused:.1f} | {ours:.1f} | {fused / ours:.2f} |", flush=True)


if __name__ == "__main__":
    main()
