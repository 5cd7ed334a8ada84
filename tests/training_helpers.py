"""Shared by the training tests (test_trainer.py, test_bad_input.py, test_multi_process.py, test_nothing_lost.py,
test_trackers.py, test_training_order.py): a tiny experiment config on the `corpus` fixture (conftest.py) and the
losses a run logged; and the sampling tests' (test_generation.py, test_fast_sampling.py) tiny random-init model."""

from pathlib import Path

import torch

from tdlm import TDLMConfig, TDLMForMaskedDiffusion
from tdlm.config import load_config
from tdlm.runs import Experiment

REPO = Path(__file__).resolve().parents[1]
WIKI = REPO.parent / "shared" / "data" / "wikitext-2-raw"


def tiny_config(corpus, *overrides):
    base = [
        f"model.train_bpe={{files: [{corpus / 'train.txt'}], vocab_size: 300}}",
        "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
        "model.intermediate_size=64", f"data.train_files={corpus / 'train.txt'}",
        f"data.eval_files={corpus / 'eval.txt'}", "data.block_size=16", f"data.cache_dir={corpus / 'cache'}",
        "training.batch_size=8", "training.logging_steps=1", "training.max_steps=12", "training.warmup_steps=2",
        "training.learning_rate=1e-2", "training.save_every_n_epochs=null", "training.cleanup_checkpoints=false",
        "enhanced_evaluation.max_eval_batches=2", "sampling.num_steps=8",
    ]
    return load_config(None, base + list(overrides))


def train_losses(experiment):
    return {r["step"]: r["loss"] for r in Experiment(experiment).read_metrics() if r["split"] == "train"}


def eval_losses(experiment):
    return {r["step"]: r["eval_loss"] for r in Experiment(experiment).read_metrics()
            if r["split"] == "eval"}


# a random-init diffusion model small enough for exact sampling checks
VOCAB, MASK, PAD, EOS = 97, 96, 1, 2


def tiny_model(seed=0, dtype=torch.float32, **overrides):
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=48, mask_token_id=MASK, pad_token_id=PAD, bos_token_id=EOS,
                  eos_token_id=EOS)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return TDLMForMaskedDiffusion(TDLMConfig(**kwargs)).to(dtype).eval()
