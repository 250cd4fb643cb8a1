"""Faithfulness of the gradient explanations on trained models (issue 13's target), averaged over many inputs.

For each model and each gradient method (saliency, integrated gradients, and Grad-CAM where it applies), every
input is explained for its predicted class and scored by deletion and insertion (``faithfulness``: the units in
the explanation's order against the mean of random orders). A faithful method deletes below and inserts above
random: positive margins. Integrated gradients' completeness is checked on every input too.

    python benchmarks/explain_faithfulness.py --sst2 runs/sst2_minilm --mnist runs/mnist_resnet
    python benchmarks/explain_faithfulness.py --sst2 runs/sst2_minilm --examples 100 --json out.json
    python benchmarks/explain_faithfulness.py --sst2 runs/sst2_minilm --mnist runs/mnist_resnet --shap 10

Inputs: the first ``--examples`` SST-2 validation sentences (the dev set), the first ``--examples`` MNIST test
images. Models: a saved directory or training run (its best checkpoint), e.g. the recipes' runs.
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
GRADIENT_METHODS = ("saliency", "ig", "gradcam")


def sst2_sentences(n: int, data: Path) -> list[str]:
    with open(data / "sst2" / "dev.tsv", encoding="utf-8") as f:
        return [r["sentence"].strip() for r in csv.DictReader(f, delimiter="\t")][:n]


def mnist_images(n: int, data: Path, model) -> list[torch.Tensor]:
    """The first ``n`` MNIST test images, preprocessed as the model's evaluation transform does."""
    from bigmodels.config import DataConfig
    from bigmodels.data import build_data

    bundle = build_data(DataConfig(name="mnist", path=str(data / "mnist")))
    split = bundle.test if bundle.test is not None else bundle.val
    images = []
    for i in range(n):
        x, _ = split[i]
        x = torch.as_tensor(x)  # uint8 pixels: the transform scales them to 0..1 before normalising
        if bundle.eval_transform is not None:
            x = bundle.eval_transform(x.unsqueeze(0))[0]
        images.append(x.float())
    return images


def score(model, inputs: list, tokenizer, methods: list[str], steps: int, random_orders: int) -> list[dict]:
    from bigmodels.explain import explain, why_not
    from bigmodels.explain.faithfulness import faithfulness

    rows = []
    for method in methods:
        if why_not(method, model) is not None:
            continue
        margins: dict[str, list[float]] = {k: [] for k in ("deletion_auc", "random_deletion_auc", "insertion_auc",
                                                           "random_insertion_auc", "deletion_margin",
                                                           "insertion_margin")}
        gaps: list[float] = []
        steps_used: list[int] = []
        start = time.perf_counter()
        for x in inputs:
            e = explain(model, x, method, tokenizer=tokenizer)
            f = faithfulness(model, e, steps=steps, random_orders=random_orders, infidelity_samples=0,
                             sensitivity_samples=0)
            for k in margins:
                margins[k].append(f[k])
            if method == "ig":
                gaps.append(e.relative_delta)
                steps_used.append(e.settings["steps"])
        row = {"method": method, "inputs": len(inputs), "seconds": time.perf_counter() - start,
               **{k: statistics.fmean(v) for k, v in margins.items()},
               "deletion_below_random": statistics.fmean(margins["deletion_margin"]) > 0,
               "insertion_above_random": statistics.fmean(margins["insertion_margin"]) > 0,
               "inputs_deletion_below": sum(m > 0 for m in margins["deletion_margin"]),
               "inputs_insertion_above": sum(m > 0 for m in margins["insertion_margin"])}
        if gaps:
            row.update(ig_completeness_median=statistics.median(gaps), ig_completeness_max=max(gaps),
                       ig_completeness_within_1pct=sum(g < 0.01 for g in gaps),
                       ig_steps_used={n: steps_used.count(n) for n in sorted(set(steps_used))})
        rows.append(row)
        print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return rows


def agreement(model, inputs: list, tokenizer, count: int, samples: int) -> dict:
    """The library's KernelSHAP against shap's KernelExplainer (exact Shapley values: inputs of at most 12 features,
    sentences of at most 10 words, images on a 3 x 3 grid) on the first ``count`` such inputs."""
    from bigmodels.explain import shap_agreement

    picked = [x for x in inputs if not isinstance(x, str) or len(x.split()) <= 10][:count]
    rhos, exact = [], []
    start = time.perf_counter()
    for x in picked:
        out = shap_agreement(model, x, tokenizer=tokenizer, samples=samples, segments=3)
        rhos.append(out["spearman"])
        exact.append(2 ** out["features"] <= samples)  # explain's KernelSHAP enumerates too: exact values
    sampled = [r for r, e in zip(rhos, exact, strict=True) if not e]
    row = {"inputs": len(rhos), "kernelshap_samples": samples, "spearman_median": statistics.median(rhos),
           "spearman_min": min(rhos), "at_least_0.9": sum(r >= 0.9 for r in rhos), "exact_inputs": sum(exact),
           "sampled_spearman_median": statistics.median(sampled) if sampled else None,
           "sampled_spearman_min": min(sampled) if sampled else None, "seconds": time.perf_counter() - start}
    print(json.dumps({"shap_agreement": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}}),
          flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sst2", help="an SST-2 classifier: saved directory or training run")
    p.add_argument("--mnist", help="an MNIST image classifier: saved directory or training run")
    p.add_argument("--data", default=str(DATA), help="the folder holding sst2/ and mnist/")
    p.add_argument("--examples", type=int, default=50, help="inputs per model")
    p.add_argument("--steps", type=int, default=20, help="deletion / insertion steps per curve")
    p.add_argument("--random-orders", type=int, default=5, help="random orders averaged for the baseline")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shap", type=int, default=0,
                   help="also compare KernelSHAP with shap's KernelExplainer on this many inputs of each model")
    p.add_argument("--shap-samples", type=int, default=1024,
                   help="KernelSHAP coalitions for --shap (inputs of at most log2 of it features get exact values)")
    p.add_argument("--no-faithfulness", action="store_true", help="only the --shap comparison")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    if not (args.sst2 or args.mnist):
        p.error("give --sst2 and/or --mnist")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import bigmodels
    from bigmodels.io import resolve_checkpoint, saved_tokenizer

    data = Path(args.data)
    results: dict = {"env": {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
                             "python": platform.python_version(), "threads": args.threads,
                             "command": "python benchmarks/explain_faithfulness.py " + " ".join(argv or sys.argv[1:])},
                     "models": {}}
    for name, source in (("sst2", args.sst2), ("mnist", args.mnist)):
        if not source:
            continue
        directory = resolve_checkpoint(source)
        model = bigmodels.load(directory).eval()
        tokenizer = saved_tokenizer(directory) if name == "sst2" else None
        inputs = sst2_sentences(args.examples, data) if name == "sst2" else mnist_images(args.examples, data, model)
        print(f"== {name}: {directory} ({len(inputs)} inputs)", flush=True)
        results["models"][name] = {"checkpoint": str(directory), "rows": [] if args.no_faithfulness else score(
            model, inputs, tokenizer, list(GRADIENT_METHODS), args.steps, args.random_orders)}
        if args.shap:
            results["models"][name]["shap_agreement"] = agreement(model, inputs, tokenizer, args.shap,
                                                                  args.shap_samples)
    print("\n| model | method | deletion AUC (random) | insertion AUC (random) | margins del / ins | faithful |")
    print("|---|---|---|---|---|---|")
    ok = True
    for name, m in results["models"].items():
        for r in m["rows"]:
            faithful = r["deletion_below_random"] and r["insertion_above_random"]
            ok &= faithful
            print(f"| {name} | {r['method']} | {r['deletion_auc']:.4f} ({r['random_deletion_auc']:.4f}) | "
                  f"{r['insertion_auc']:.4f} ({r['random_insertion_auc']:.4f}) | {r['deletion_margin']:+.4f} / "
                  f"{r['insertion_margin']:+.4f} | {'yes' if faithful else 'no'} |")
    for name, m in results["models"].items():
        if "shap_agreement" in m:
            a = m["shap_agreement"]
            ok &= a["spearman_min"] >= 0.9
            print(f"| {name} | KernelSHAP vs shap (Spearman, {a['inputs']} inputs) | "
                  f"median {a['spearman_median']:.3f}, min {a['spearman_min']:.3f} | "
                  f"{a['at_least_0.9']} of {a['inputs']} >= 0.9 |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
