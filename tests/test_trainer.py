"""DiffusionTrainer end to end on tiny configs: gradient accumulation, exact resume, crash-safe saves,
non-finite loss, cleanup, eval-only, research metrics, W&B offline, 2-process runs."""

import json
import os
import subprocess
import sys

import pytest
import torch
from training_helpers import REPO, eval_losses, tiny_config, train_losses
from transformers import TrainerCallback

from tdlm import TDLMForMaskedDiffusion
from tdlm.config import load_config, save_config
from tdlm.runs import Experiment, list_checkpoints
from tdlm.training import DiffusionTrainer, run_evaluation, run_training


# ---------------------------------------------------------------------------------------------
# Gradient accumulation: the accumulated gradient is the large-batch gradient
# ---------------------------------------------------------------------------------------------
class GradCapture(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["diffusion", "autoregressive"])
def test_gradient_accumulation_gives_the_large_batch_gradient(corpus, tmp_path, mode):
    grads = []
    for batch, accumulation in ((8, 1), (4, 2), (2, 4)):
        capture = GradCapture()
        config = tiny_config(corpus, f"model.training_mode={mode}", f"training.batch_size={batch}",
                             f"training.gradient_accumulation_steps={accumulation}", "training.max_steps=1",
                             "training.max_grad_norm=1e9", "data.eval_files=null", "training.save_every_n_steps=null")
        run_training(config, f"ga{batch}", str(tmp_path), callbacks=[capture])
        grads.append(capture.grads)
    for other in grads[1:]:
        assert other.keys() == grads[0].keys()
        for name, reference in grads[0].items():
            assert torch.allclose(other[name], reference, rtol=1e-4, atol=1e-7), name
    # the scale is right, not only the direction: a per-micro-batch mean would be 2x / 4x too large
    total = sum(g.norm() ** 2 for g in grads[0].values()) ** 0.5
    assert total > 0


# ---------------------------------------------------------------------------------------------
# Resume and crash safety
# ---------------------------------------------------------------------------------------------
def test_crash_during_save_keeps_last_checkpoint_and_resume_is_exact(corpus, tmp_path, monkeypatch):
    overrides = ("training.save_every_n_steps=6", "model.hidden_dropout=0.1")
    run_training(tiny_config(corpus, *overrides), "straight", str(tmp_path))

    original = DiffusionTrainer._save_rng_state

    def failing_save(self, output_dir):
        if self.state.global_step == 12:
            raise OSError("simulated crash during save")
        return original(self, output_dir)

    monkeypatch.setattr(DiffusionTrainer, "_save_rng_state", failing_save)
    with pytest.raises(OSError, match="simulated crash"):
        run_training(tiny_config(corpus, *overrides), "interrupted", str(tmp_path))
    monkeypatch.undo()
    interrupted = tmp_path / "interrupted"
    assert [p.name for p in list_checkpoints(interrupted / "checkpoints")] == ["checkpoint-6"]
    assert not (interrupted / "checkpoints" / "checkpoint-12").exists()
    good = interrupted / "checkpoints" / "checkpoint-6"
    assert json.loads((good / "trainer_state.json").read_text())["global_step"] == 6
    TDLMForMaskedDiffusion.from_pretrained(good)  # the last good checkpoint still loads

    run_training(tiny_config(corpus, *overrides), resume=str(interrupted))  # the experiment's latest
    straight, resumed = train_losses(tmp_path / "straight"), train_losses(interrupted)
    assert sorted(resumed) == sorted(straight) == list(range(1, 13))
    for step in straight:
        assert resumed[step] == pytest.approx(straight[step], abs=1e-6), step
    assert eval_losses(interrupted) == pytest.approx(eval_losses(tmp_path / "straight"), abs=1e-6)
    summary = json.loads((interrupted / "results" / "summary.json").read_text())
    assert summary["final_checkpoint"].endswith("checkpoint-12")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    original = TDLMForMaskedDiffusion.forward
    calls = {"n": 0}

    def exploding(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training and out.loss is not None:
            calls["n"] += 1
            if calls["n"] > 7:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(TDLMForMaskedDiffusion, "forward", exploding)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss.*step 8.*checkpoint-6"):
        run_training(tiny_config(corpus, "training.save_every_n_steps=6"), "nan", str(tmp_path))
    assert [p.name for p in list_checkpoints(tmp_path / "nan" / "checkpoints")] == ["checkpoint-6"]


# ---------------------------------------------------------------------------------------------
# One complete run, checked from several sides
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    config = tiny_config(corpus, "training.max_steps=8", "training.save_every_n_steps=2",
                         "training.cleanup_checkpoints=true", "training.logging_steps=2",
                         "model.max_position_embeddings=256",
                         "training.detailed_metrics_steps=4", "training.attention_analysis_steps=4")
    summary = run_training(config, "full", str(root))
    return root / "full", summary


def test_experiment_folder_is_complete(finished):
    experiment, summary = finished
    assert (experiment / "configs" / "config.yaml").is_file()
    assert load_config(experiment / "configs" / "config.yaml")["training"]["max_steps"] == 8
    on_disk = json.loads((experiment / "results" / "summary.json").read_text())
    assert on_disk == summary
    for key in ("experiment_id", "training_mode", "best_checkpoint", "best_eval_loss", "best_epoch",
                "final_checkpoint", "train_tokens", "epochs", "train_runtime_s", "tokens_per_second",
                "num_parameters"):
        assert key in summary, key
    assert summary["training_mode"] == "diffusion" and summary["train_tokens"] == 8 * 8 * 16


def test_cleanup_keeps_best_and_latest(finished):
    experiment, summary = finished
    evals = eval_losses(experiment)
    assert sorted(evals) == [2, 4, 6, 8]
    best_step = min(evals, key=evals.get)
    kept = {p.name for p in list_checkpoints(experiment / "checkpoints")}
    assert kept == {f"checkpoint-{best_step}", "checkpoint-8"}
    assert summary["best_eval_loss"] == pytest.approx(evals[best_step])
    assert summary["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert not any(p.name.startswith(".tmp") for p in (experiment / "checkpoints").iterdir())


def test_checkpoint_loads_with_remote_code_and_tokenizer(finished):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    experiment, _ = finished
    checkpoint = experiment / "checkpoints" / "checkpoint-8"
    model = AutoModelForMaskedLM.from_pretrained(checkpoint, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert len(tokenizer) == model.config.vocab_size and tokenizer.mask_token_id == model.config.mask_token_id
    assert model.generation_config.num_steps == 8  # sampling section -> generation_config.json
    ids = tokenizer("The game", return_tensors="pt")["input_ids"]
    out = model.diffusion_generate(input_ids=ids, max_new_tokens=4, num_steps=2)
    assert out.shape == (1, ids.shape[1] + 4) if torch.is_tensor(out) else out.sequences.shape[1] == ids.shape[1] + 4


def test_eval_only_reproduces_the_logged_eval_loss(finished):
    experiment, _ = finished
    results = run_evaluation(None, str(experiment / "checkpoints" / "checkpoint-8"))
    assert results["eval_loss"] == pytest.approx(eval_losses(experiment)[8], abs=1e-6)
    assert (experiment / "results" / "eval_checkpoint-8.json").is_file()


def test_research_metrics_tiers(finished):
    experiment, _ = finished
    train = {r["step"]: r for r in Experiment(experiment).read_metrics() if r["split"] == "train"}
    assert sorted(train) == [2, 4, 6, 8]
    for record in train.values():
        assert 0.0 <= record["masked_accuracy"] <= 1.0 and record["unweighted_loss"] > 0
        shares = [record[f"loss_share/{level}"] for level in ("low", "medium", "high")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-9)
    assert "attention_entropy/layer0" not in train[2]  # tier 2 only on its steps
    for step in (4, 8):
        record = train[step]
        for layer in (0, 1):
            # entropy of a distribution over <= 16 keys lies in [0, log 16]
            assert 0.0 <= record[f"attention_entropy/layer{layer}"] <= torch.log(torch.tensor(16.0)).item() + 1e-6
        assert 0.0 < record["self_attention_ratio"] < 1.0
        assert 0.0 < record["prediction_confidence"] <= 1.0 and record["prediction_entropy"] > 0
        assert record["token_frequency_kl"] >= 0
        levels = [record[f"grad_norm/{level}"] for level in ("low", "medium", "high")]
        # the level losses sum to the total loss, so their gradients obey the triangle inequality, and the
        # total equals the Trainer's own (unclipped) gradient norm of the same batch (GA 1, no dropout)
        assert record["grad_norm/total"] <= sum(levels) + 1e-6
        assert record["grad_norm/total"] == pytest.approx(record["grad_norm"], rel=1e-4)


def test_cli_rejects_unknown_key_before_training(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--config",
                             str(REPO / "configs" / "quick_test.yaml"), "training.learnig_rate=3e-4",
                             "--output-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1
    assert "training.learnig_rate: unknown key" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_wandb_offline(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_TAGS"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    config = tiny_config(corpus, "monitoring.wandb.enabled=true", "monitoring.wandb.tags=[test]",
                         "training.max_steps=2", "training.save_every_n_steps=null")
    run_training(config, "wb", str(tmp_path))
    runs = list((tmp_path / "wb" / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(corpus, tmp_path):
    config = tiny_config(corpus, "training.max_steps=4", "training.save_every_n_steps=null",
                         "data.eval_files=null", "training.warmup_steps=0")
    save_config(config, tmp_path / "config.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(REPO / "scripts" / "train.py")
    common = ["--config", str(tmp_path / "config.yaml"), "--output-dir", str(tmp_path)]
    one = subprocess.run([sys.executable, script, *common, "--experiment-id", "one", "training.batch_size=8"],
                         capture_output=True, text=True, cwd=REPO, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", script, *common, "--experiment-id", "two",
                          "training.batch_size=4"], capture_output=True, text=True, cwd=REPO, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    single, double = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(single) == sorted(double) == [1, 2, 3, 4]
    for step in single:
        assert double[step] == pytest.approx(single[step], rel=1e-5), step
    a = TDLMForMaskedDiffusion.from_pretrained(tmp_path / "one" / "checkpoints" / "checkpoint-4")
    b = TDLMForMaskedDiffusion.from_pretrained(tmp_path / "two" / "checkpoints" / "checkpoint-4")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name


def test_lora_fine_tuning_from_an_experiment(finished, corpus, tmp_path):
    from safetensors.torch import load_file

    from tdlm.peft_utils import merge_adapter

    experiment, _ = finished
    base = TDLMForMaskedDiffusion.from_pretrained(experiment / "checkpoints" / "checkpoint-8")
    config = tiny_config(corpus, "peft.enabled=true", f"peft.base_model={experiment}", "peft.r=2",
                         "model.train_bpe=null", "training.max_steps=3", "training.save_every_n_steps=null")
    run_training(config, "lora", str(tmp_path))
    checkpoint = tmp_path / "lora" / "checkpoints" / "checkpoint-3"
    assert (checkpoint / "adapter_config.json").is_file() and (checkpoint / "tokenizer_config.json").is_file()
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    merged = TDLMForMaskedDiffusion.from_pretrained(merge_adapter(checkpoint, tmp_path / "merged"))
    changed = [n for (n, p), q in zip(merged.named_parameters(), base.parameters()) if not torch.equal(p, q)]
    assert changed and all("proj" in n for n in changed)  # only LoRA-targeted projections moved


def test_eval_only_with_downstream_tasks(finished):
    experiment, _ = finished
    checkpoint = experiment / "checkpoints" / "checkpoint-8"
    config = load_config(experiment / "configs" / "config.yaml",
                         ["enhanced_evaluation.include_downstream=true", "enhanced_evaluation.tasks=[arc_easy]",
                          "enhanced_evaluation.limit=4", "enhanced_evaluation.mc_num=2"])
    results = run_evaluation(config, str(checkpoint))
    arc = results["downstream"]["arc_easy"]
    assert arc["num_docs"] == 4 and 0.0 <= arc["acc"] <= 1.0
    saved = json.loads((experiment / "results" / "eval_checkpoint-8.json").read_text())
    assert saved["downstream"]["arc_easy"] == arc


KILL_DURING_SAVE = """
import os, signal, sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from training_helpers import tiny_config
from pathlib import Path
from tdlm.training import DiffusionTrainer, run_training

original = DiffusionTrainer._save_rng_state

def save_then_die(self, output_dir):
    if self.state.global_step == 12:  # weights and optimizer of checkpoint-12 are already on disk
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, output_dir)

DiffusionTrainer._save_rng_state = save_then_die
run_training(tiny_config(Path({corpus!r}), "training.save_every_n_steps=6"), "killed", {root!r})
"""


@pytest.mark.slow
def test_sigkill_during_save_never_corrupts_the_last_checkpoint(corpus, tmp_path):
    code = KILL_DURING_SAVE.format(repo=str(REPO), tests=str(REPO / "tests"), corpus=str(corpus), root=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -9, result.stderr[-2000:]
    checkpoints = tmp_path / "killed" / "checkpoints"
    staged = list(checkpoints.glob(".tmp-12/checkpoint-12/*"))
    assert any(p.name == "model.safetensors" for p in staged)  # killed in the middle of writing checkpoint-12
    assert [p.name for p in list_checkpoints(checkpoints)] == ["checkpoint-6"]
    TDLMForMaskedDiffusion.from_pretrained(checkpoints / "checkpoint-6")
    summary = run_training(tiny_config(corpus, "training.save_every_n_steps=6"), resume=str(tmp_path / "killed"))
    assert summary["global_step"] == 12 and summary["final_checkpoint"].endswith("checkpoint-12")
    assert not list(checkpoints.glob(".tmp-*"))


def test_checkpoints_every_n_epochs(corpus, tmp_path):
    config = tiny_config(corpus, "training.max_steps=null", "training.epochs=2", "training.save_every_n_epochs=1",
                         "training.save_every_n_steps=null", "data.block_size=64", "training.logging_steps=5")
    summary = run_training(config, "epochs", str(tmp_path))
    steps = summary["global_step"]
    assert steps % 2 == 0 and summary["epochs"] == pytest.approx(2.0)
    saved = [p.name for p in list_checkpoints(tmp_path / "epochs" / "checkpoints")]
    assert saved == [f"checkpoint-{steps // 2}", f"checkpoint-{steps}"]
    assert sorted(eval_losses(tmp_path / "epochs")) == [steps // 2, steps]


def test_tokenizer_model_mismatch_fails_at_start(finished, corpus, tmp_path):
    experiment, _ = finished
    gpt2 = REPO.parent / "shared/data/gpt2-tokenizer"
    config = tiny_config(corpus, "model.train_bpe=null", f"model.tokenizer={gpt2}",
                         f"model.init_from={experiment / 'checkpoints' / 'checkpoint-8'}")
    with pytest.raises(ValueError, match=r"tokenizer has 50258 tokens but the model's vocab_size is \d+"):
        run_training(config, "mismatch", str(tmp_path))
    assert not list_checkpoints(tmp_path / "mismatch" / "checkpoints")
