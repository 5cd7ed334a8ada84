#!/usr/bin/env bash
# All GPU checks in one run (the GPU is lent for ~15 minutes per task): the training + sampling benchmark (AR vs
# diffusion; chunked vs Triton fused head, eager vs compiled backbone, each against a bare loop; the fused-loss check
# and a kernel profile per head), then the data-constrained study. Prints compact tables; files land in $OUT.
# Usage on the GPU machine, from the repo root, with ../shared/data present (or DATA=path/to/data):
#   OUT=gpu_out bash scripts/gpu_checks.sh
#   EPOCHS=200 BUDGETS=25%,50%,100% bash scripts/gpu_checks.sh
#   COMPILE=false,true,reduce-overhead bash scripts/gpu_checks.sh   # also the compiled backbone without CUDA graphs
#   RUN_STUDY=0 bash scripts/gpu_checks.sh                          # the kernel check and the benchmark only
# Every setting is an environment variable (defaults below); tests/test_benchmark.py runs this script on CPU with a
# tiny config. Budget on an H100: the kernel check up to ~2-3 min (it autotunes the kernels for fp32 and bf16), the
# benchmark ~3 min (each compiled variant compiles per objective), the study ~8-10 min at the defaults (timed with the
# chunked head); within one 15-minute GPU allowance use EPOCHS=200 BUDGETS=25%,100%, or RUN_STUDY=0. Both write their
# JSON as they go, so a timeout keeps what was measured; the benchmark times its compiled variants last, so its cap
# (BENCH_TIMEOUT) cuts those first.
set -uo pipefail
OUT=${OUT:-gpu_out}
BENCH_CONFIG=${BENCH_CONFIG:-configs/example_config.yaml}
BENCH_ARGS=${BENCH_ARGS:---steps 15 --warmup 5 --sampling-steps 16,32,64,256 --sampling-batch 8 --sampling-length 256 --repeats 3 --profile}
HEADS=${HEADS:-chunked,triton}
COMPILE=${COMPILE:-false,reduce-overhead}
STUDY_CONFIG=${STUDY_CONFIG:-configs/study_gpu.yaml}
STUDY_DIR=${STUDY_DIR:-experiments/study_gpu}
mkdir -p "$OUT"
if [ -n "${DATA:-}" ] && [ ! -e ../shared/data ]; then mkdir -p ../shared && ln -s "$(realpath "$DATA")" ../shared/data; fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU: $(uname -m) CPU"; } \
    | tee "$OUT/gpu.txt"
# the Triton kernels as compiled for this GPU against the chunked head, fp32 and bf16 (skipped without CUDA)
timeout 300 python -m pytest -q -p no:cacheprovider \
    tests/test_fused_cross_entropy.py::test_compiled_triton_kernels_match_the_chunked_head_on_cuda 2>&1 \
    | tail -n 15 | tee "$OUT/kernel_check.log"
# shellcheck disable=SC2086  # BENCH_ARGS and STUDY_OVERRIDES are word lists
timeout "${BENCH_TIMEOUT:-360}" python scripts/benchmark.py --config "$BENCH_CONFIG" $BENCH_ARGS \
    --head-implementations "$HEADS" --compile "$COMPILE" --output "$OUT/benchmark.json" 2>&1 \
    | grep -v "it/s\]" | tee "$OUT/benchmark.log"
[ "${RUN_STUDY:-1}" = 1 ] || exit 0
# shellcheck disable=SC2086
timeout "${STUDY_TIMEOUT:-480}" python scripts/data_constrained_study.py --config "$STUDY_CONFIG" \
    --epochs "${EPOCHS:-200}" --unique-tokens "${BUDGETS:-25%,50%,100%}" --eval-every "${EVAL_EVERY:-10}" \
    --modes ar,diffusion,ar_regularized --nelbo-samples 4 --max-eval-blocks "${EVAL_BLOCKS:-32}" \
    --output-dir "$STUDY_DIR" ${STUDY_OVERRIDES:-} 2>&1 | grep -v "it/s\]" | tee "$OUT/study.log"
# only the study summary comes back (the device tool returns a few files)
cp "$STUDY_DIR"/study.{json,md,png} "$OUT/" 2>/dev/null
exit 0
