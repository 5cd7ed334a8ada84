#!/usr/bin/env bash
# Scaling checks on one GPU (issue 17), each stage under its own `timeout`, each writing JSON into $OUT as it goes:
#   kernels    the Triton head kernels as compiled for this GPU against the chunked head, widths 128 / 768 / 2048,
#              fp32 and bf16 (kernel_widths.json: test id -> outcome; ~2-4 min: the kernels autotune per width)
#   head_grid  the LM head + cross-entropy alone over a rows x hidden grid: TDLM's Triton and chunked heads, torch
#              full logits (eager, compiled), cut-cross-entropy and liger-kernel (head_grid.json; ~2-3 min)
#   ladder     scripts/benchmark.py per size-ladder config (configs/models/): tokens/s, peak memory, MFU, Trainer vs
#              bare loop, both objectives (ladder_<config>.json; ~2-4 min per rung with a compiled variant)
# The libraries are optional: when they cannot be imported they are installed from wheels carried in the working tree
# ($WHEELS, default wheels/: untracked, so it travels with the tree; never committed), made on a machine with internet:
#   pip download --no-deps -d wheels cut-cross-entropy==25.1.1 liger-kernel==0.8.5   # pure Python; need torch + triton
# Without wheels they are reported as skipped. scripts/gpu_checks.sh runs this (RUN_SCALE=1); alone, from the repo root:
#   OUT=gpu_out bash scripts/gpu_scale_checks.sh
#   SCALE_STAGES=head_grid HEAD_GRID=65536x768,65536x2048 bash scripts/gpu_scale_checks.sh
#   LADDER_CONFIGS=configs/models/tdlm-125m.yaml LADDER_COMPILE=true bash scripts/gpu_scale_checks.sh
# tests/test_gpu_scale_checks.py runs it on CPU with a tiny grid and ladder.
set -uo pipefail
OUT=${OUT:-gpu_out}
SCALE_STAGES=${SCALE_STAGES:-kernels,head_grid,ladder}
WHEELS=${WHEELS:-wheels}
HEAD_GRID=${HEAD_GRID:-65536x768,65536x2048,65536x128,32768x128}  # the new widths first: a timeout cuts the rest
GRID_HEADS=${GRID_HEADS:-tdlm_triton,tdlm_chunked,torch_full_logits,torch_compile_full_logits,cut_cross_entropy,liger_kernel}
HEAD_ARGS=${HEAD_ARGS:---repeats 5 --warmup 2}
LADDER_CONFIGS=${LADDER_CONFIGS:-configs/models/tdlm-7m.yaml configs/models/tdlm-30m.yaml configs/models/tdlm-125m.yaml}
LADDER_ARGS=${LADDER_ARGS:---steps 10 --warmup 3 --head-implementations triton}
LADDER_COMPILE=${LADDER_COMPILE:-false,true}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
runs() { [[ ",$SCALE_STAGES," == *",$1,"* ]]; }

if runs kernels; then
    timeout "${KERNEL_TIMEOUT:-420}" python -m pytest -q -p no:cacheprovider --junitxml "$OUT/kernel_widths.xml" \
        tests/test_fused_cross_entropy.py::test_compiled_triton_kernels_match_the_chunked_head_on_cuda 2>&1 \
        | tail -n 15 | tee "$OUT/kernel_widths.log"
    python - "$OUT" <<'PY'
import json, sys, xml.etree.ElementTree as ElementTree
from pathlib import Path
out = Path(sys.argv[1])
outcomes = {}
if (out / "kernel_widths.xml").is_file():  # absent when the timeout cut pytest off
    for case in ElementTree.parse(out / "kernel_widths.xml").iter("testcase"):
        found = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = found[0] if found else "passed"
(out / "kernel_widths.json").write_text(json.dumps(outcomes, indent=2))
print(outcomes)
PY
fi

if runs head_grid; then
    for module in cut_cross_entropy liger_kernel; do
        if ! python -c "import $module" 2>/dev/null && [ -d "$WHEELS" ]; then
            pip install -q --no-index --no-deps --find-links "$WHEELS" "${module//_/-}" 2>&1 | tail -n 2
        fi
    done
    # shellcheck disable=SC2086  # HEAD_ARGS is a word list
    timeout "${HEAD_GRID_TIMEOUT:-360}" python scripts/benchmark.py --head-grid "$HEAD_GRID" --heads "$GRID_HEADS" \
        $HEAD_ARGS --output "$OUT/head_grid.json" 2>&1 | tee "$OUT/head_grid.log"
fi

if runs ladder; then
    for config in $LADDER_CONFIGS; do
        name=$(basename "$config" .yaml)
        # shellcheck disable=SC2086  # LADDER_ARGS and LADDER_OVERRIDES are word lists
        timeout "${LADDER_TIMEOUT:-300}" python scripts/benchmark.py --config "$config" $LADDER_ARGS \
            --compile "$LADDER_COMPILE" --sampling-steps "" --output "$OUT/ladder_$name.json" \
            ${LADDER_OVERRIDES:-} 2>&1 | grep -v "it/s\]" | tee "$OUT/ladder_$name.log"
    done
fi
exit 0
