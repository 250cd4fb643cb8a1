#!/usr/bin/env bash
# The CPU row of benchmarks/RESULTS.md: all-MiniLM-L6-v2 embeddings of the 2,758 STS-B test sentences (fp32,
# batch 64), ours against sentence-transformers' encode in one process, alternating repetitions; then every
# workload in its tiny variant (a smoke run of the GPU rows' code, not a figure).
#
#   bash benchmarks/run_cpu.sh            # STS_DIR=../shared/data/stsb by default
#
# Measure on an otherwise idle machine: the target is for 2 cores, and torch uses every core it sees
# (set OMP_NUM_THREADS to pin it; the JSON records torch_num_threads).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT_DIR=${OUT_DIR:-benchmarks/out/cpu}
STS_DIR=${STS_DIR:-../shared/data/stsb}
"$PY" -m bigmodels bench minilm-embed --device cpu --data "$STS_DIR" --steps 5 --warmup 1 --out "$OUT_DIR/minilm-embed"
"$PY" -m bigmodels bench --tiny --device cpu --out "$OUT_DIR/tiny"
