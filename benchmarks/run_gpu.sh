#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md (targets: one H100, bf16), each workload in a fresh process so that its
# peak memory and compile caches are its own; then the char-level GPT recipe timed as a whole.
#
#   bash benchmarks/run_gpu.sh                         # every GPU row, then char-gpt
#   bash benchmarks/run_gpu.sh gpt2-train bert-infer   # some of them (names from `bigmodels bench --list`, or char-gpt)
#
# Results: $OUT_DIR/<workload>/speed.{json,md} and $OUT_DIR/summary.md (every row, with the commands).
# OUT_DIR defaults to $OUT when set (the lent GPU machine's return folder), else benchmarks/out/gpu.
# Extra `bigmodels bench` options go in BENCH_ARGS, e.g. BENCH_ARGS="--steps 50 --warmup 10".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT_DIR:-${OUT:-benchmarks/out/gpu}}
CHAR_RECIPE=${CHAR_RECIPE:-recipes/shakespeare_char_gpu.yaml}  # TODO: the GPU char recipe is written elsewhere
ALL=(gpt2-train gpt2-decode-b1 gpt2-decode-b32 resnet50-train resnet50-infer bert-train bert-infer char-gpt)
if [ "$#" -gt 0 ]; then RUN=("$@"); else RUN=("${ALL[@]}"); fi
mkdir -p "$OUT_DIR"
"$PY" -c "import torch, bigmodels; assert torch.cuda.is_available(), 'no CUDA GPU visible'; \
print('bigmodels', bigmodels.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())" || exit 2
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT_DIR/nvidia-smi.csv" 2>&1 || true

status=0
done_rows=()
for w in "${RUN[@]}"; do
  if [ "$w" = "char-gpt" ]; then
    # a recipe run, not a side by side: wall time including torch.compile to val loss <= 1.47
    if [ ! -f "$CHAR_RECIPE" ]; then
      echo "char-gpt: $CHAR_RECIPE does not exist yet; skipped" | tee "$OUT_DIR/char-gpt.log"
      continue
    fi
    cmd=("$PY" -m bigmodels train "$CHAR_RECIPE" train.out_dir="$OUT_DIR/char-gpt-run")
    echo "+ ${cmd[*]}" | tee "$OUT_DIR/char-gpt.log"
    if [ -x /usr/bin/time ]; then
      /usr/bin/time -v "${cmd[@]}" 2>&1 | tee -a "$OUT_DIR/char-gpt.log" || status=1
    else
      { time "${cmd[@]}"; } 2>&1 | tee -a "$OUT_DIR/char-gpt.log" || status=1
    fi
    continue
  fi
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of options
  "$PY" -m bigmodels bench "$w" --device cuda --out "$OUT_DIR/$w" ${BENCH_ARGS:-} 2>&1 | tee "$OUT_DIR/$w.log" \
    || status=1
  done_rows+=("$w")
done

# one table of every row run, with the command behind each
"$PY" - "$OUT_DIR" "${done_rows[@]}" <<'PYEOF'
import json
import sys
from pathlib import Path

from bigmodels.bench.speed import markdown_table

out, names = Path(sys.argv[1]), sys.argv[2:]
runs = [json.loads(p.read_text()) for p in (out / n / "speed.json" for n in names) if p.is_file()]
if runs:
    env = runs[0]["env"]
    gpu = "; ".join(d["name"] for d in env.get("cuda_devices", []))
    text = (markdown_table([r for run in runs for r in run["rows"]])
            + f"\nHardware: {gpu}, {env['cpu_model']} ({env['cpu_count']} CPUs). Versions: bigmodels {env['bigmodels']}, "
            + f"torch {env['torch']} (CUDA {env.get('cuda_version')}), Python {env['python']}, "
            + ", ".join(f"{k} {v}" for k, v in runs[0]["libraries"].items()) + ".\n\nCommands:\n"
            + "".join(f"- `{run['command']}`\n" for run in runs))
    (out / "summary.md").write_text(text)
    print(text)
PYEOF
exit $status
