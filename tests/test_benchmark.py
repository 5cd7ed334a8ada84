"""The benchmark and the one-shot GPU script, run on CPU at CI-safe size; the compiled backbone."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tdlm.config import load_config
from tdlm.training import build_model, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw"


@pytest.mark.slow
def test_gpu_checks_script_runs_benchmark_and_study_on_cpu(tmp_path):
    """scripts/gpu_checks.sh end to end with a tiny config: every table row and study file it promises."""
    assert DATA.exists(), f"{DATA} is missing (the offline data lives in ../shared/data)"
    out, study = tmp_path / "out", tmp_path / "study"
    env = {**os.environ, "OUT": str(out), "STUDY_DIR": str(study), "CUDA_VISIBLE_DEVICES": "", "RUN_RELIABILITY": "0",
           "RUN_SCALE": "0",  # tests/test_gpu_scale_checks.py runs that stage at its own tiny size
           "BENCH_CONFIG": "configs/quick_test.yaml", "HEADS": "chunked,triton", "COMPILE": "false",
           "BENCH_ARGS": "--steps 2 --warmup 1 --sampling-steps 4 --sampling-batch 2 --sampling-length 16 "
                         "--repeats 1 --profile training.batch_size=8",
           "STUDY_CONFIG": "configs/quick_test.yaml", "MAX_EPOCHS": "2", "BUDGETS": "2k,4k", "SIZES": "32x1",
           "SEED_BUDGET": "4k", "DROPOUT": "0.1", "SCORER_TOKENS": "2000", "STUDY_TIMEOUT": "1200",
           "STUDY_ARGS": "--selection-samples 2 --report-samples 2 --gen-samples 2 --gen-steps 4",
           "STUDY_OVERRIDES": "training.batch_size=8"}
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run(["bash", "scripts/gpu_checks.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no GPU" in (out / "gpu.txt").read_text()

    report = json.loads((out / "benchmark.json").read_text())
    assert report["device"] == "cpu" and report["batch_size"] == 8
    rows = {(r["mode"], r["path"], r["head_implementation"]) for r in report["training"]}
    for mode in ("autoregressive", "diffusion"):
        assert {(mode, path, head) for path in ("trainer", "bare_loop") for head in ("chunked", "triton")} <= rows
    for row in report["training"]:
        assert row["tokens_per_second"] > 0 and row["timed_steps"] == 2
        assert row["path"] == "bare_loop" or "overhead_vs_bare_loop" in row
    assert len(report["loss_check"]) == 4
    for check in report["loss_check"]:  # fp32 on CPU: the fused head equals full-logits autograd
        assert check["relative_loss_difference"] < 1e-5 and check["relative_grad_difference"] < 1e-4
    assert {(p["mode"], p["head_implementation"]) for p in report["profile"]} == {
        (m, h) for m in ("autoregressive", "diffusion") for h in ("chunked", "triton")}
    assert {row["method"] for row in report["sampling"]} == {"diffusion", "diffusion+threshold", "autoregressive"}
    log = (out / "benchmark.log").read_text()
    assert "| mode | path | head | compile |" in log and "Profile, bare loop, diffusion, head triton: step" in log

    summary = json.loads((out / "study.json").read_text())
    arms = summary["arms"]  # both objectives at both budgets, then a second seed and a dropout arm at SEED_BUDGET
    assert len(arms) == 2 * 2 + 2 + 2 and {a["objective"] for a in arms} == {"ar", "diffusion"}
    assert {a["budget"] for a in arms if a["seed"] == 1 or a["dropout"]} == {4000}
    assert (out / "study.md").exists() and (out / "study.png").stat().st_size > 0
    assert len(list((out / "runs").glob("*/result.json"))) == len(arms)  # what another machine needs to resume
    assert len(summary["sample_quality"]["rows"]) == 1 + 2 * 2  # real text, then each objective's best per budget


@pytest.mark.slow
def test_compiled_backbone_trains_like_eager():
    """training.torch_compile compiles the backbone in place (state dict unchanged) and gives the eager losses."""
    config = load_config(str(ROOT / "configs" / "quick_test.yaml"),
                         ["model.hidden_size=32", "model.num_hidden_layers=1", "model.intermediate_size=64"])
    tokenizer = build_tokenizer(config)
    losses, names = {}, {}
    for compiled in (False, True):
        config["training"]["torch_compile"] = compiled
        torch.manual_seed(0)
        model = build_model(config, tokenizer).train()
        names[compiled] = sorted(model.state_dict())
        assert (getattr(model.model, "_compiled_call_impl", None) is not None) == compiled
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ids = torch.randint(0, 500, (4, 16), generator=torch.Generator().manual_seed(1))
        labels = ids.masked_fill(torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.5, -100)
        inputs = ids.masked_fill(labels != -100, model.config.mask_token_id)
        history = []
        for _ in range(3):
            loss = model(inputs, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            history.append(loss.item())
        losses[compiled] = history
    assert names[True] == names[False]  # no "_orig_mod." prefixes: checkpoints stay loadable
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert losses[False][2] < losses[False][0]  # it trains


def test_a_failing_variant_is_reported_and_the_run_goes_on(monkeypatch, tmp_path):
    """A head variant that fails (say, a kernel that does not compile on some GPU) must not lose the other rows."""
    import tdlm.research.benchmark as benchmark

    real_check = benchmark.loss_agreement

    def check(config, *args):
        if config["model"]["head_implementation"] == "triton":
            raise RuntimeError("kernel did not compile")
        return real_check(config, *args)

    monkeypatch.setattr(benchmark, "loss_agreement", check)
    config = load_config(str(ROOT / "configs" / "quick_test.yaml"), ["training.batch_size=4", "data.block_size=16"])
    report = benchmark.run_benchmark(config, device="cpu", steps=1, warmup=1, modes=("diffusion",),
                                     head_variants=("chunked", "triton"), output=tmp_path / "report.json")
    checks = {row["head_implementation"]: row for row in report["loss_check"]}
    assert checks["triton"]["error"] == "RuntimeError: kernel did not compile"
    assert checks["chunked"]["relative_loss_difference"] < 1e-5
    assert [(row["path"], row["head_implementation"]) for row in report["training"]] == [
        ("bare_loop", "chunked"), ("bare_loop", "triton"), ("trainer", "chunked"), ("trainer", "triton")]
    table = benchmark.format_report(report)
    assert "| diffusion | triton | failed: RuntimeError: kernel did not compile |" in table
    assert json.loads((tmp_path / "report.json").read_text())["loss_check"][1]["error"]


def test_profile_says_where_a_step_goes():
    """The profile's per-step numbers are consistent: kernels sorted by time, shares of the busy time, busy within the
    wall time; the matmuls are the biggest item of this model's CPU step."""
    import tdlm.research.benchmark as benchmark

    config = load_config(str(ROOT / "configs" / "quick_test.yaml"), ["training.batch_size=4", "data.block_size=32"])
    found = benchmark.profile_bare_loop(config, build_tokenizer(config), "diffusion", torch.device("cpu"), steps=2,
                                        warmup=1, top=5)
    assert found["profiled_steps"] == 2 and len(found["top"]) == 5
    assert 0 < found["device_busy_ms"] <= 1.05 * found["step_wall_ms"]
    assert found["host_ops_per_step"] > 100  # CPU: no launches or kernels to count
    assert found["kernels_per_step"] is None and found["top_kernels"] is None
    times = [k["ms_per_step"] for k in found["top"]]
    assert times == sorted(times, reverse=True)
    assert sum(k["share_of_busy"] for k in found["top"]) <= 1 + 1e-9
    assert found["top"][0]["share_of_busy"] == pytest.approx(times[0] / found["device_busy_ms"])
    assert "aten::mm" in [k["name"] for k in found["top"]]


def test_compile_variants_name_a_mode_or_fail_clearly():
    import tdlm.research.benchmark as benchmark

    assert benchmark.compile_variants("false, true,reduce-overhead") == (False, True, "reduce-overhead")
    with pytest.raises(ValueError, match="--compile: unknown variant 'fast'"):
        benchmark.compile_variants("false,fast")
    config = load_config(str(ROOT / "configs" / "quick_test.yaml"))
    for variant, (compiled, mode) in {False: (False, None), True: (True, None),
                                      "reduce-overhead": (True, "reduce-overhead")}.items():
        training = benchmark._variant(config, "chunked", variant)["training"]
        assert (training["torch_compile"], training["torch_compile_mode"]) == (compiled, mode)
    assert config["model"]["head_implementation"] == "triton"  # the caller's config is left alone


def test_compiled_variants_run_after_every_eager_row_and_sampling(monkeypatch):
    """A GPU run cut off by its time limit must lose the slow compiled rows, not the eager ones or sampling."""
    import tdlm.research.benchmark as benchmark

    calls = []

    def trainer(config, tokenizer, mode, *rest):
        calls.append(("trainer", mode, config["model"]["head_implementation"], config["training"]["torch_compile"]))
        return {"median_step_s": 1.0}

    def bare_loop(config, tokenizer, mode, *rest):
        calls.append(("bare", mode))
        return {"median_step_s": 1.0}

    def sampling(*args, **kwargs):
        calls.append(("sampling",))
        return []

    monkeypatch.setattr(benchmark, "benchmark_trainer", trainer)
    monkeypatch.setattr(benchmark, "benchmark_bare_loop", bare_loop)
    monkeypatch.setattr(benchmark, "benchmark_sampling_for", sampling)
    monkeypatch.setattr(benchmark, "loss_agreement", lambda *args: {})
    config = load_config(str(ROOT / "configs" / "quick_test.yaml"))
    benchmark.run_benchmark(config, device="cpu", compile_variants=(True, False), head_variants=("chunked", "triton"),
                            sampling={"batch_size": 1})
    assert calls == [("bare", "autoregressive"), ("bare", "autoregressive"),
                     ("trainer", "autoregressive", "chunked", False),
                     ("trainer", "autoregressive", "triton", False), ("bare", "diffusion"), ("bare", "diffusion"),
                     ("trainer", "diffusion", "chunked", False), ("trainer", "diffusion", "triton", False),
                     ("sampling",),
                     ("trainer", "autoregressive", "chunked", True), ("trainer", "autoregressive", "triton", True),
                     ("trainer", "diffusion", "chunked", True), ("trainer", "diffusion", "triton", True)]
