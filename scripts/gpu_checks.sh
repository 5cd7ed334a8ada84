#!/usr/bin/env bash
# All GPU checks in one run (the GPU is lent for ~15 minutes per task): training + sampling benchmark
# (AR vs diffusion, Trainer path vs bare loop, fused-loss check), then the data-constrained study.
# Usage on the GPU machine, from the repo root, with ../shared/data present (or DATA=path/to/data):
#   OUT=gpu_out bash scripts/gpu_checks.sh
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if [ -n "${DATA:-}" ] && [ ! -e ../shared/data ]; then mkdir -p ../shared && ln -s "$(realpath "$DATA")" ../shared/data; fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout ${BENCH_TIMEOUT:-150} python scripts/benchmark.py --config configs/example_config.yaml --steps 15 --warmup 5 \
    --sampling-steps 16,32,64,256 --sampling-batch 8 --sampling-length 256 --repeats 3 \
    --output "$OUT/benchmark.json" 2>&1 | grep -v "it/s\]" | tee "$OUT/benchmark.log"
timeout ${STUDY_TIMEOUT:-300} python scripts/data_constrained_study.py --config configs/study_gpu.yaml \
    --epochs ${EPOCHS:-100} --unique-tokens ${BUDGETS:-25%,100%} --eval-every ${EVAL_EVERY:-10} \
    --modes ar,diffusion,ar_regularized --nelbo-samples 4 --max-eval-blocks 32 --output-dir "${STUDY_DIR:-experiments/study_gpu}" \
    2>&1 | grep -v "it/s\]" | tee "$OUT/study.log"
# only the study summary comes back (the device tool returns at most 8 files)
cp "${STUDY_DIR:-experiments/study_gpu}"/study.{json,md,png} "$OUT/" 2>/dev/null
