#!/usr/bin/env bash
# One call on a machine with an NVIDIA GPU (under 8 minutes): install, run the CUDA tests, run the
# engine benchmark on cuda in fp32, bf16 and fp16 against the reference, write a small report.
#
#   bash scripts/device_check.sh                 # on the GPU machine; report under $OUT (or ./device-report)
#   bash scripts/device_check.sh --cpu-dry-run   # the same steps on CPU with the tiny model (any machine)
#
# Environment: OUT (report folder), PYTHON (interpreter for the venv, default python3),
# VENV (default .venv-device), TORCH_SPEC (default torch==2.14.1), MODEL (default vit_b),
# SKIP_INSTALL=1 (use VENV as it is: it must already hold torch and the test extras).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
REPORT_DIR="${OUT:-$PWD/device-report}"
mkdir -p "$REPORT_DIR"
LOG="$REPORT_DIR/device_check.log"
: > "$LOG"
START=$(date +%s)
say() { echo "== $*" | tee -a "$LOG"; }
elapsed() { echo $(( $(date +%s) - START )); }

PY=${PYTHON:-python3}
VENV=${VENV:-.venv-device}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
if [ "$DRY" = 1 ]; then
  DEVICE=cpu; MODEL=${MODEL:-tiny}; PRECISIONS=fp32,bf16; REPEATS=1; CLICKS=3
else
  DEVICE=cuda; MODEL=${MODEL:-vit_b}; PRECISIONS=fp32,bf16,fp16; REPEATS=3; CLICKS=20
fi

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's code, whatever the venv holds

# 1. install: a venv with the pinned torch and the package with its test extras (reuses an existing one)
if [ "${SKIP_INSTALL:-0}" = 1 ]; then
  say "install skipped (SKIP_INSTALL=1, $VENV) [$(elapsed) s]"
else
  say "install ($VENV, $TORCH_SPEC) [$(elapsed) s]"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" >>"$LOG" 2>&1 || { say "FAILED: venv"; exit 1; }
  fi
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" "torchvision==0.29.1" >>"$LOG" 2>&1 \
    || say "warning: pinned torch install failed; using what the venv has"
  "$VENV/bin/python" -m pip install -q -e ".[test]" >>"$LOG" 2>&1 || { say "FAILED: pip install .[test]"; exit 1; }
fi
"$VENV/bin/python" - >"$REPORT_DIR/environment.txt" 2>&1 <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda build", torch.version.cuda)
print("cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
EOF
cat "$REPORT_DIR/environment.txt" | tee -a "$LOG"
if [ "$DRY" = 0 ] && ! grep -q "cuda available True" "$REPORT_DIR/environment.txt"; then
  say "FAILED: torch sees no CUDA device (run with --cpu-dry-run on a machine without one)"
  exit 1
fi

# 2. the tests marked for CUDA (they skip without CUDA: a dry run shows them skipped)
say "pytest -m cuda [$(elapsed) s]"
"$VENV/bin/python" -m pytest -m cuda -q -p no:cacheprovider -rs tests/test_cuda.py \
  --junitxml="$REPORT_DIR/cuda_tests.xml" >"$REPORT_DIR/cuda_tests.txt" 2>&1
TESTS_RC=$?
tail -3 "$REPORT_DIR/cuda_tests.txt" | tee -a "$LOG"

# 3. the benchmark against the reference, per precision
say "benchmark $MODEL on $DEVICE ($PRECISIONS) [$(elapsed) s]"
timeout 300 "$VENV/bin/python" benchmarks/bench_device.py --device "$DEVICE" --model "$MODEL" \
  --precisions "$PRECISIONS" --repeats "$REPEATS" --clicks "$CLICKS" --json "$REPORT_DIR/bench.json" \
  >"$REPORT_DIR/bench.txt" 2>&1
BENCH_RC=$?
cat "$REPORT_DIR/bench.txt" | grep -v Warning | tail -5 | tee -a "$LOG"

# 4. the report
"$VENV/bin/python" - "$REPORT_DIR" "$TESTS_RC" "$BENCH_RC" "$(elapsed)" "$DRY" >"$REPORT_DIR/report.md" <<'EOF'
import json, sys
from pathlib import Path
out, tests_rc, bench_rc, secs, dry = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
print("# napari-sam device check" + (" (CPU dry run, tiny model)" if dry else ""))
print()
print("```")
print((out / "environment.txt").read_text().strip())
print("```")
print()
tail = (out / "cuda_tests.txt").read_text().strip().splitlines()[-1:] if (out / "cuda_tests.txt").exists() else []
print(f"CUDA tests: exit {tests_rc}; {tail[0] if tail else 'no output'}")
print()
if (out / "bench.json").exists():
    r = json.loads((out / "bench.json").read_text())
    print(f"Encoder benchmark, {r['model']} on {r['device_name']} (torch {r['torch']}), against Meta's reference:")
    print()
    print("| precision | used | encoder ref (s) | encoder ours (s) | ref/ours | click (ms) | mask IoU vs ref fp32 | pixel agreement (min) | peak GPU memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for prec in ("fp32", "bf16", "fp16"):
        if prec in r:
            e, a = r[prec], r[prec]["agreement_vs_ref_fp32"]
            peak = "-" if e["peak_memory_mib_ours"] is None else f"{e['peak_memory_mib_ours']:.0f}"
            print(f"| {prec} | {e['precision_used']} | {e['encoder_ref_s']:.4f} | {e['encoder_ours_s']:.4f} | "
                  f"{e['ratio_ref_over_ours']:.2f} | {e['click_ms_median']:.1f} | {a['iou_mean']:.4f} | "
                  f"{a['pixel_agreement_min']:.4f} | {peak} |")
else:
    print(f"Benchmark: exit {bench_rc}, no results (see bench.txt)")
print()
print(f"Total time: {secs} s")
EOF
cat "$REPORT_DIR/report.md" | tee -a "$LOG"
say "done in $(elapsed) s: $REPORT_DIR/report.md"
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
