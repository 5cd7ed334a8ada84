"""Shared by test_hub.py, test_peft.py and test_ecosystem.py: tiny saved TDLM checkpoints and a
subprocess runner in which the `tdlm` package is not importable (what a Hub user without it sees)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO_ROOT.parent / "shared" / "data" / "gpt2-tokenizer"


def tiny_model(mode: str = "diffusion", seed: int = 0):
    """A 1-layer, hidden-32 TDLM on the GPT-2 tokenizer (+ <|mask|>), and that tokenizer."""
    import tdlm
    from tdlm.tokenization import config_kwargs_for_tokenizer

    tokenizer = tdlm.load_tokenizer(str(TOKENIZER_DIR))
    config = tdlm.TDLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=64, training_mode=mode,
                             **config_kwargs_for_tokenizer(tokenizer))
    torch.manual_seed(seed)
    model = tdlm.model_class_for(config)(config)
    # random init has std 0.02: perturb so outputs vary visibly with the input and with LoRA updates
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval(), tokenizer


def save_checkpoint(folder: Path, mode: str = "diffusion", seed: int = 0) -> Path:
    model, tokenizer = tiny_model(mode, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_experiment(root: Path, mode: str = "diffusion", steps=(10, 20)) -> Path:
    """experiments/<id> with checkpoints, configs/config.yaml and results (the shared folder contract)."""
    experiment = root / f"tdlm_{mode}"
    for step in steps:
        save_checkpoint(experiment / "checkpoints" / f"checkpoint-{step}", mode, seed=step)
    # the Trainer's record of the evaluations: the first checkpoint has the lowest eval loss (the best one)
    history = [{"step": step, "epoch": 1.0 + i, "eval_loss": 4.321 + i} for i, step in enumerate(steps)]
    (experiment / "checkpoints" / f"checkpoint-{steps[-1]}" / "trainer_state.json").write_text(
        json.dumps({"global_step": steps[-1], "log_history": history}))
    (experiment / "configs").mkdir(parents=True)
    (experiment / "configs" / "config.yaml").write_text(textwrap.dedent(f"""\
        model:
          training_mode: {mode}
          hidden_size: 32
        data:
          train_files: {TOKENIZER_DIR.parent / "wikitext-2-raw" / "wiki.valid.raw"}
          eval_files: ../shared/data/wikitext-2-raw/wiki.test.raw
        peft:
          base_model: {root / "some_base_experiment"}
        training:
          learning_rate: 0.0003
          hub_token: hf_secret_in_config
        monitoring:
          wandb:
            enabled: false
            api_key: wandb_secret_in_config
        """))
    (experiment / "results").mkdir()
    summary = {"experiment_id": experiment.name, "training_mode": mode,
               "best_checkpoint": str(experiment / "checkpoints" / f"checkpoint-{steps[0]}"),
               "best_eval_loss": 4.321, "eval_tokens": 4096, "best_epoch": 1.0,
               "final_checkpoint": str(experiment / "checkpoints" / f"checkpoint-{steps[-1]}"),
               "train_tokens": 12345, "epochs": 2, "train_runtime_s": 1.5, "tokens_per_second": 999.0,
               "num_parameters": 1_640_000}
    (experiment / "results" / "summary.json").write_text(json.dumps(summary))
    (experiment / "results" / "hellaswag.json").write_text(json.dumps({"acc": 0.2567, "acc_stderr": 0.0044,
                                                                       "num_docs": 10042}))
    (experiment / "results" / "evaluate.json").write_text(json.dumps({  # what tdlm-evaluate --output writes
        "checkpoint": str(experiment / "checkpoints" / f"checkpoint-{steps[0]}"),
        "likelihood": {"nelbo" if mode == "diffusion" else "nll": 4.4, "num_tokens": 1024,
                       "eval_data": "../shared/data/x.raw"},
        "downstream": {"arc_easy": {"acc": 0.31, "acc_norm": 0.3, "num_docs": 100}},
        "settings": {"tasks": ["arc_easy"], "limit": 100}}))
    (experiment / "results" / "lm_eval.json").write_text(json.dumps({  # what tdlm-lm-eval --output_path writes
        "results": {"tdlm_mmlu_anatomy": {"alias": "x", "acc,none": 0.25, "acc_stderr,none": 0.04}},
        "n-samples": {"tdlm_mmlu_anatomy": {"original": 135, "effective": 135}}, "config": {"limit": None}}))
    return experiment


# Hides the repository *and* an installed (editable) tdlm, as on a Hub user's machine; then proves it is hidden.
NO_TDLM_PRELUDE = textwrap.dedent("""\
    import importlib.abc, importlib.util, sys
    class _BlockTDLM(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tdlm" or name.startswith("tdlm."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
    sys.meta_path.insert(0, _BlockTDLM())
    try:
        import tdlm
    except ImportError:
        pass
    else:
        raise SystemExit("tdlm must not be importable here")
    """)


def run_without_tdlm(code: str, cwd: Path, timeout: int = 240) -> str:
    """Run `code` in a fresh interpreter whose sys.path cannot reach the repository; returns stdout.
    The snippet first asserts that `import tdlm` fails."""
    prelude = NO_TDLM_PRELUDE
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"subprocess failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout
