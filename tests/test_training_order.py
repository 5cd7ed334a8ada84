"""Issue 15, part 1: the research-metrics pass never runs between a training forward and its backward (with CUDA
graphs, torch.compile mode reduce-overhead, an extra forward there overwrites memory the backward still reads), and
scripts/gpu_checks.sh's reliability stage (a long run with metrics, evaluation, saves and --resume) works on CPU."""

import json
import os
import subprocess

import pytest
from accelerate import Accelerator
from training_helpers import REPO, WIKI, tiny_config

from tdlm import TDLMForCausalLM, TDLMForMaskedDiffusion
from tdlm.runs import Experiment
from tdlm.training import DiffusionTrainer, run_training


def record_events(monkeypatch) -> list[str]:
    """'forward' (a training forward: grad on, train mode), 'backward' (the Trainer's backward) and 'metrics' (the
    whole research-metrics pass, whose own forwards and backwards are not listed), in the order they run."""
    events, inside_metrics = [], []

    def wrap(cls, name, event, when=lambda *args: True):
        original = getattr(cls, name)

        def wrapper(*args, **kwargs):
            if not inside_metrics and when(*args):
                events.append(event)
            if event == "metrics":
                inside_metrics.append(True)
            try:
                return original(*args, **kwargs)
            finally:
                if event == "metrics":
                    inside_metrics.pop()
        monkeypatch.setattr(cls, name, wrapper)

    for head in (TDLMForMaskedDiffusion, TDLMForCausalLM):
        wrap(head, "forward", "forward", lambda model, *args: model.training)
    wrap(Accelerator, "backward", "backward")
    wrap(DiffusionTrainer, "_analysis_metrics", "metrics")
    return events


@pytest.mark.parametrize("mode", ["diffusion", "autoregressive"])
def test_research_metrics_run_after_the_backward(corpus, tmp_path, monkeypatch, mode):  # noqa: F811
    events = record_events(monkeypatch)
    config = tiny_config(corpus, f"model.training_mode={mode}", "training.max_steps=3",
                         "training.gradient_accumulation_steps=2", "training.batch_size=4",
                         "training.detailed_metrics_steps=1", "training.attention_analysis_steps=1",
                         "training.save_every_n_steps=2", "enhanced_evaluation.max_eval_batches=1")
    run_training(config, "order", str(tmp_path))
    training = [e for e in events if e in ("forward", "backward", "metrics")]
    # each micro-batch: forward, then its backward; the metrics pass only after the first micro-batch's backward
    assert training == ["forward", "backward", "metrics", "forward", "backward"] * 3, training
    train = [r for r in Experiment(tmp_path / "order").read_metrics() if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    for record in train:
        assert "attention_entropy/layer0" in record and "grad_norm/total" in record


@pytest.mark.slow
def test_gpu_checks_reliability_stage_on_cpu(tmp_path):
    """scripts/gpu_checks.sh's reliability stage alone (RUN_BENCHMARK=0 RUN_SCALE=0 RUN_STUDY=0), both objectives,
    tiny."""
    assert WIKI.exists()
    out, runs = tmp_path / "out", tmp_path / "runs"
    overrides = ("model.hidden_size=32 model.num_hidden_layers=1 model.intermediate_size=64 training.batch_size=8 "
                 "data.block_size=32 training.warmup_steps=1 enhanced_evaluation.max_eval_batches=1")
    env = {**os.environ, "OUT": str(out), "CUDA_VISIBLE_DEVICES": "", "RUN_BENCHMARK": "0", "RUN_SCALE": "0",
           "RUN_STUDY": "0",
           "RELIABILITY_CONFIG": "configs/quick_test.yaml", "RELIABILITY_DIR": str(runs), "RELIABILITY_STEPS": "8",
           "RELIABILITY_EVERY": "2", "RELIABILITY_OVERRIDES": overrides}
    result = subprocess.run(["bash", "scripts/gpu_checks.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "reliability.json").read_text())
    assert [r["mode"] for r in report] == ["diffusion", "autoregressive"]
    for row in report:
        assert row["ok"], row
        assert row["steps"] == 8 and row["resumed_from"] == 4 and row["metrics_steps"] == [2, 4, 6, 8]
        assert row["max_resumed_loss_difference"] < 1e-4  # CPU, fp32: the resumed steps repeat the first run's
    assert "| diffusion |" in (out / "reliability.log").read_text()
