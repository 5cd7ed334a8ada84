"""scripts/gpu_checks.sh's scaling stage (scripts/gpu_scale_checks.sh: kernel widths, head grid, size ladder) end to end
on CPU at toy size: every JSON it promises, with the rows a GPU run will fill."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOY_MODEL = ("model.hidden_size=32 model.num_hidden_layers=1 model.num_attention_heads=2 model.intermediate_size=64 "
             "training.batch_size=2 data.block_size=32 training.mixed_precision=no")


@pytest.mark.slow
def test_scale_stage_of_the_gpu_script_runs_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "CUDA_VISIBLE_DEVICES": "", "RUN_RELIABILITY": "0", "RUN_BENCHMARK": "0",
           "RUN_STUDY": "0", "SCALE_STAGES": "kernels,head_grid,ladder", "WHEELS": str(tmp_path / "no-wheels"),
           "HEAD_GRID": "32x16,48x24", "HEAD_ARGS": "--repeats 1 --warmup 1 --vocab-size 200",
           "GRID_HEADS": "tdlm_triton,tdlm_chunked,torch_full_logits,cut_cross_entropy,liger_kernel",
           "LADDER_CONFIGS": "configs/models/tdlm-7m.yaml configs/models/tdlm-125m.yaml",
           "LADDER_ARGS": "--steps 1 --warmup 1 --head-implementations triton", "LADDER_COMPILE": "false",
           "LADDER_OVERRIDES": TOY_MODEL}
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run(["bash", "scripts/gpu_checks.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    kernels = json.loads((out / "kernel_widths.json").read_text())  # skipped without CUDA, one per width
    assert kernels == {f"test_compiled_triton_kernels_match_the_chunked_head_on_cuda[{w}]": "skipped"
                       for w in (128, 768, 2048)}

    grid = json.loads((out / "head_grid.json").read_text())
    assert {(r["rows"], r["hidden"]) for r in grid["rows"]} == {(32, 16), (48, 24)}
    measured = [r for r in grid["rows"] if r["head"].startswith(("tdlm_", "torch_"))]
    assert len(measured) == 6 and all(r["relative_loss_difference"] < 1e-5 for r in measured)
    assert all("median_ms" in r or "skipped" in r or "error" in r for r in grid["rows"])
    assert "| 48 x 24 | tdlm_triton |" in (out / "head_grid.log").read_text()

    for rung in ("tdlm-7m", "tdlm-125m"):
        report = json.loads((out / f"ladder_{rung}.json").read_text())
        assert {(r["mode"], r["path"]) for r in report["training"]} == {
            (m, p) for m in ("autoregressive", "diffusion") for p in ("bare_loop", "trainer")}
        for row in report["training"]:  # MFU needs a known GPU: None on CPU, but the FLOPs are counted
            assert row["tokens_per_second"] > 0 and row["model_flops_per_token"] > 0 and row["mfu"] is None
        assert report["sequence_length"] == 32 and not report["sampling"]
