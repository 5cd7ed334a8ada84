#!/usr/bin/env bash
# All GPU checks in one run (the GPU is lent for ~15 minutes per task): first the reliability run (issue 15: the GPU
# default config, CUDA graphs included, trains RELIABILITY_STEPS=400 steps per objective with research metrics,
# attention analysis, evaluation and saves, then resumes from its middle checkpoint; reliability.json says per
# objective whether both runs finished with finite losses and metrics, and how far the resumed losses moved), then
# the training + sampling benchmark (AR vs
# diffusion; chunked vs Triton fused head, eager vs compiled backbone, each against a bare loop; the fused-loss check
# and a kernel profile per head), then the data-constrained study. Prints compact tables; files land in $OUT.
# Usage on the GPU machine, from the repo root, with ../shared/data present (or DATA=path/to/data):
#   OUT=gpu_out bash scripts/gpu_checks.sh
#   BUDGETS=0.25M,0.5M SIZES=128x2,256x4 STUDY_ARGS="--objectives ar,diffusion,bd16" bash scripts/gpu_checks.sh
#   COMPILE=false,true,reduce-overhead bash scripts/gpu_checks.sh   # also the compiled backbone without CUDA graphs
#   RUN_STUDY=0 bash scripts/gpu_checks.sh                          # the kernel check and the benchmark only
#   RUN_BENCHMARK=0 RUN_STUDY=0 bash scripts/gpu_checks.sh          # the reliability run only (RUN_RELIABILITY=0: none)
#   RUN_SCALE=0 bash scripts/gpu_checks.sh     # without scripts/gpu_scale_checks.sh (head grid ~3 min, ladder ~8 min)
# Every setting is an environment variable (defaults below); tests/test_benchmark.py runs this script on CPU with a
# tiny config. Budget on an H100: the kernel check up to ~2-3 min (it autotunes the kernels for fp32 and bf16), the
# benchmark ~3 min (each compiled variant compiles per objective). The study (python-stdlib, 2k BPE, L=256: budgets
# 0.25M/0.5M/1M x sizes 128x2/192x3/256x4 x both objectives, a second seed at 0.5M; not yet timed on a GPU) is
# resumable: run it alone (RUN_RELIABILITY=0 RUN_BENCHMARK=0 RUN_SCALE=0) and call again with the returned runs/
# carried in STUDY_DIR until study.md lists every arm. Both write their JSON as they go, so a timeout keeps what was
# measured; the benchmark times its compiled variants last, so its cap
# (BENCH_TIMEOUT) cuts those first. The reliability run: ~1-2 min per objective (compile, 400 + 200 steps, the eager
# metrics passes, evaluations); RELIABILITY_TIMEOUT caps each training command.
set -uo pipefail
OUT=${OUT:-gpu_out}
BENCH_CONFIG=${BENCH_CONFIG:-configs/example_config.yaml}
BENCH_ARGS=${BENCH_ARGS:---steps 15 --warmup 5 --sampling-steps 16,32,64,256 --sampling-batch 8 --sampling-length 256 --repeats 3 --profile}
HEADS=${HEADS:-chunked,triton}
COMPILE=${COMPILE:-false,reduce-overhead}
STUDY_CONFIG=${STUDY_CONFIG:-configs/study_stdlib_gpu.yaml}
STUDY_DIR=${STUDY_DIR:-research/study_stdlib_gpu}
mkdir -p "$OUT"
if [ -n "${DATA:-}" ] && [ ! -e ../shared/data ]; then mkdir -p ../shared && ln -s "$(realpath "$DATA")" ../shared/data; fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU: $(uname -m) CPU"; } \
    | tee "$OUT/gpu.txt"

RELIABILITY_CONFIG=${RELIABILITY_CONFIG:-configs/wikitext2_offline.yaml}
RELIABILITY_DIR=${RELIABILITY_DIR:-experiments/reliability}
STEPS=${RELIABILITY_STEPS:-400}
EVERY=${RELIABILITY_EVERY:-20}  # log + research metrics every EVERY steps, attention analysis every 2 EVERY
reliability_run() {  # MODE: a straight run, then --resume from its middle checkpoint
    local dir="$RELIABILITY_DIR/reliability_$1" half=$((STEPS / 2)) straight=1 resumed=1
    # shellcheck disable=SC2086  # RELIABILITY_OVERRIDES is a word list
    timeout "${RELIABILITY_TIMEOUT:-300}" python scripts/train.py --config "$RELIABILITY_CONFIG" \
        --output-dir "$RELIABILITY_DIR" --experiment-id "reliability_$1" --overwrite "model.training_mode=$1" \
        "training.max_steps=$STEPS" "training.logging_steps=$EVERY" "training.detailed_metrics_steps=$EVERY" \
        "training.attention_analysis_steps=$((2 * EVERY))" "training.eval_steps=$((STEPS / 4))" \
        "training.save_every_n_steps=$half" training.save_every_n_epochs=null training.cleanup_checkpoints=false \
        ${RELIABILITY_OVERRIDES:-} && straight=0
    cp "$dir/logs/metrics.jsonl" "$OUT/reliability_$1_straight.jsonl" 2>/dev/null
    timeout "${RELIABILITY_TIMEOUT:-300}" python scripts/train.py --resume "$dir/checkpoints/checkpoint-$half" \
        && resumed=0
    echo "$1 $straight $resumed $half $dir" >> "$OUT/reliability_runs.txt"
}
if [ "${RUN_RELIABILITY:-1}" = 1 ]; then
    rm -f "$OUT/reliability_runs.txt"
    for mode in diffusion autoregressive; do reliability_run "$mode" 2>&1 | grep -v "it/s\]" | tail -n 30; done \
        > "$OUT/reliability_train.log"
    python - "$OUT" "$STEPS" <<'PY' 2>&1 | tee "$OUT/reliability.log"
import json, math, sys
from pathlib import Path
out, steps = Path(sys.argv[1]), int(sys.argv[2])
def rows(path):  # a torn last line would be a finding of its own: read what parses
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()] if Path(path).is_file() else []
report = []
for line in (out / "reliability_runs.txt").read_text().splitlines():
    mode, straight_rc, resumed_rc, half, folder = line.split()
    first = {r["step"]: r for r in rows(out / f"reliability_{mode}_straight.jsonl") if r["split"] == "train"}
    final = rows(Path(folder) / "logs" / "metrics.jsonl")
    train = {r["step"]: r for r in final if r["split"] == "train"}
    evals = [r["eval_loss"] for r in final if r["split"] == "eval"]
    losses = [r["loss"] for r in train.values()] + evals
    resumed = [abs(train[s]["loss"] - first[s]["loss"]) for s in train if s > int(half) and s in first]
    report.append({"mode": mode, "straight_exit": int(straight_rc), "resumed_exit": int(resumed_rc),
                   "steps": max(train, default=0), "resumed_from": int(half), "eval_losses": evals,
                   "metrics_steps": sorted(s for s, r in train.items() if "attention_entropy/layer0" in r),
                   "analysis_steps": sorted(s for s, r in train.items() if "grad_norm/total" in r),
                   "max_resumed_loss_difference": max(resumed, default=float("nan")),
                   "ok": straight_rc == resumed_rc == "0" and max(train, default=0) == steps and bool(evals)
                         and all(isinstance(v, float) and math.isfinite(v) for v in losses)})
(out / "reliability.json").write_text(json.dumps(report, indent=2))
print("| objective | ok | steps | exit codes | eval losses | metric steps | max resumed loss diff |")
print("|---|---|---|---|---|---|---|")
for r in report:
    print(f"| {r['mode']} | {r['ok']} | {r['steps']} | {r['straight_exit']}/{r['resumed_exit']} | "
          f"{', '.join(f'{v:.3f}' for v in r['eval_losses'])} | {len(r['metrics_steps'])} | "
          f"{r['max_resumed_loss_difference']:.2e} |")
PY
fi
if [ "${RUN_BENCHMARK:-1}" = 1 ]; then
    # the Triton kernels as compiled for this GPU against the chunked head, widths 128 / 768 / 2048, fp32 and bf16
    # (skipped without CUDA)
    timeout "${KERNEL_TIMEOUT:-420}" python -m pytest -q -p no:cacheprovider \
        tests/test_fused_cross_entropy.py::test_compiled_triton_kernels_match_the_chunked_head_on_cuda 2>&1 \
        | tail -n 15 | tee "$OUT/kernel_check.log"
    # shellcheck disable=SC2086  # BENCH_ARGS and STUDY_OVERRIDES are word lists
    timeout "${BENCH_TIMEOUT:-360}" python scripts/benchmark.py --config "$BENCH_CONFIG" $BENCH_ARGS \
        --head-implementations "$HEADS" --compile "$COMPILE" --output "$OUT/benchmark.json" 2>&1 \
        | grep -v "it/s\]" | tee "$OUT/benchmark.log"
fi
if [ "${RUN_SCALE:-1}" = 1 ]; then  # the head grid with the libraries and the size ladder (issue 17), JSON in $OUT
    SCALE_STAGES=${SCALE_STAGES:-head_grid,ladder} OUT="$OUT" bash scripts/gpu_scale_checks.sh
fi
[ "${RUN_STUDY:-1}" = 1 ] || exit 0
# shellcheck disable=SC2086
timeout "${STUDY_TIMEOUT:-540}" python scripts/data_constrained_study.py --config "$STUDY_CONFIG" \
    --unique-tokens "${BUDGETS:-0.25M,0.5M,1M}" --sizes "${SIZES:-128x2,192x3,256x4}" \
    --max-epochs "${MAX_EPOCHS:-300}" --extra-at "${SEED_BUDGET:-0.5M}" --dropout "${DROPOUT:-0}" \
    --scorer-tokens "${SCORER_TOKENS:-1000000}" ${STUDY_ARGS:-} --output-dir "$STUDY_DIR" ${STUDY_OVERRIDES:-} 2>&1 | grep -v "it/s\]" | tee "$OUT/study.log"
# the study summary and every finished arm's result come back (carry them into STUDY_DIR to resume elsewhere)
cp "$STUDY_DIR"/{study.json,study.md,study.png} "$OUT/" 2>/dev/null
mkdir -p "$OUT/runs" && for r in "$STUDY_DIR"/runs/*/result.json; do
    [ -e "$r" ] && mkdir -p "$OUT/runs/$(basename "$(dirname "$r")")" && cp "$r" "$OUT/runs/$(basename "$(dirname "$r")")/"
done
exit 0
