"""The data-constrained study harness at CI size: budgets, arms, AR scoring all L tokens, the 2-SE comparison, the
data-reuse fit, gen-PPL / entropy, and a tiny four-arm run that writes its results after every arm."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tdlm.config import load_config
from tdlm.evaluation.likelihood import ar_nll
from tdlm.research import study
from tdlm.research.reuse import fit_reuse, reuse_loss
from tdlm.research.sample_quality import sample_quality, score_texts, unigram_entropy, with_context
from tdlm.research.study_report import compare, crossover_epoch, verdicts
from tdlm.runs import Experiment
from tdlm.training import build_model, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
WIKI = REPO.parent / "shared" / "data" / "wikitext-2-raw"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny config (300-token BPE, 32-wide, 2 layers, blocks of 32) on a few kB of WikiText-2."""
    folder = tmp_path_factory.mktemp("tiny")
    corpus, held_out = folder / "train.txt", folder / "eval.txt"
    corpus.write_text((WIKI / "wiki.valid.raw").read_text()[:6_000])
    held_out.write_text((WIKI / "wiki.test.raw").read_text()[:3_000])
    overrides = [
        f"model.train_bpe={{files: [{corpus}], vocab_size: 300}}", "model.hidden_size=32",
        "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.intermediate_size=64",
        f"data.train_files={corpus}", f"data.eval_files={held_out}", "data.block_size=32",
        f"data.cache_dir={folder / 'cache'}", "training.batch_size=8", "training.learning_rate=1e-2",
        "training.warmup_steps=0", "training.weight_decay=0.0", "training.report_to=none",
    ]
    return load_config(REPO / "configs" / "quick_test.yaml", overrides)


def tiny_model(config, arm):
    variant = study.arm_config(config, arm, 1, 0.1)
    tokenizer = build_tokenizer(variant)
    return build_model(variant, tokenizer).eval(), tokenizer


def test_budgets_and_arms(tiny):
    assert study.parse_budgets("25%,0.5,1M,250k,4000", 4_000_000) == [1_000_000, 2_000_000, 1_000_000, 250_000, 4000]
    for bad in ("150%", "5M", "lots"):
        with pytest.raises(ValueError, match="unique-tokens"):
            study.parse_budgets(bad, 4_000_000)
    with pytest.raises(ValueError, match="unknown arm"):
        study.arm_config(tiny, "bert", 3, 0.1)
    configs = {arm: study.arm_config(tiny, arm, 3, 0.1) for arm in study.ARMS}
    assert {c["model"]["max_position_embeddings"] for c in configs.values()} == {33}  # block + AR's context token
    assert configs["diffusion_regularized"]["model"]["hidden_dropout"] == 0.1
    assert configs["ar_regularized"]["model"]["training_mode"] == "autoregressive"
    assert configs["ar"]["training"] == configs["diffusion_regularized"]["training"]  # one optimizer for all


def test_ar_scores_all_l_tokens(tiny):
    model, tokenizer = tiny_model(tiny, "ar")
    blocks = torch.randint(0, 250, (3, 32))
    scored = ar_nll(model, with_context(blocks, tokenizer.eos_token_id))
    assert scored["num_tokens"] == blocks.numel()  # L per block, not L - 1
    point = study.score(model, blocks, tokenizer.eos_token_id, 2, 0, 8)
    assert point == {"eval_loss": pytest.approx(scored["nll"]), "standard_error": 0.0}
    dataset = study.WithContextToken([{"input_ids": blocks[0]}], tokenizer.eos_token_id)
    assert dataset[0]["input_ids"].tolist() == [tokenizer.eos_token_id, *blocks[0].tolist()]


def test_beyond_two_standard_errors():
    assert compare(4.0, 0.1, 4.15, 0.0)["verdict"] == "tie"  # 0.15 < 2 x 0.1
    assert compare(4.0, 0.05, 4.15, 0.0)["verdict"] == "a"
    assert compare(4.3, 0.03, 4.0, 0.04)["verdict"] == "b"  # 0.3 > 2 x 0.05
    ar = [{"epoch": e, "eval_loss": v, "standard_error": 0.0} for e, v in [(1, 5.0), (2, 4.0), (3, 4.5), (4, 5.0)]]
    dd = [{"epoch": e, "eval_loss": v, "standard_error": 0.1} for e, v in [(1, 5.5), (2, 3.9), (3, 4.2), (4, 4.2)]]
    assert crossover_epoch(dd, ar) == 3  # epoch 2 is below AR but within 2 SE
    summary = [{"unique_tokens": 10, "arm": "ar", "best_eval_loss": 4.0, "best_standard_error": 0.0},
               {"unique_tokens": 10, "arm": "ar_regularized", "best_eval_loss": 3.8, "best_standard_error": 0.0},
               {"unique_tokens": 10, "arm": "diffusion", "best_eval_loss": 3.9, "best_standard_error": 0.01}]
    best, plain = verdicts(summary)
    assert (best["ar_arm"], best["winner"]) == ("ar_regularized", "AR")
    assert (plain["ar_arm"], plain["winner"]) == ("ar", "diffusion")


@pytest.mark.parametrize("half_life", [5.0, 40.0])
def test_reuse_fit_recovers_half_life(half_life):
    rng = np.random.default_rng(0)
    curves = []
    for tokens in (250_000, 500_000, 1_000_000):
        epochs = np.arange(1, 201, 5)
        losses = reuse_loss((np.full(len(epochs), tokens / 1e6), epochs), 2.0, math.log(1.5), 0.4,
                            math.log(half_life)) + rng.normal(0, 1e-3, len(epochs))
        curves.append((tokens, [{"epoch": int(e), "eval_loss": float(v)} for e, v in zip(epochs, losses)]))
    fit = fit_reuse(curves)
    assert fit["r_star"] == pytest.approx(half_life, rel=0.1)
    assert fit["r_star_low"] < fit["r_star"] < fit["r_star_high"] < 2 * half_life


def test_gen_ppl_and_entropy(tiny):
    assert unigram_entropy([1, 1, 2, 2]) == pytest.approx(math.log(2))
    assert unigram_entropy([7] * 5) == 0.0
    scorer, tokenizer = tiny_model(tiny, "ar")
    # a flat scorer gives the gen-PPL of a uniform distribution over its vocabulary (less the mask token)
    torch.nn.init.zeros_(scorer.get_output_embeddings().weight)
    flat = score_texts(scorer, tokenizer, ["The tower is", "a river"])
    assert flat["gen_ppl"] == pytest.approx(scorer.config.vocab_size - 1, rel=1e-4)
    diffusion, _ = tiny_model(tiny, "diffusion")
    for model, rows in ((scorer, 1), (diffusion, 2)):
        result = sample_quality(model, scorer, tokenizer, num_samples=2, length=8, steps=[4, 8])
        assert len(result) == rows
        assert all(r["num_samples"] > 0 and r["unigram_entropy"] >= 0 and r["gen_ppl"] > 1 for r in result)


@pytest.mark.slow
def test_four_arms_run_and_write_after_each(tiny, tmp_path, monkeypatch):
    written = []
    write = study.write_results
    monkeypatch.setattr(study, "write_results", lambda out, settings, arms, quality, **kw: (
        written.append((len(arms), len(quality))), write(out, settings, arms, quality, **kw))[1])
    out = tmp_path / "study"
    result = study.run_study(tiny, 12, "50%,100%", 4, list(study.ARMS), out, num_samples=2, max_eval_blocks=8,
                             gen={"num_samples": 2, "length": 16, "steps": [4]})
    assert [n for n, _ in written[:8]] == list(range(1, 9))  # after every arm
    assert written[-1] == (8, 8)  # then after every arm's sample quality
    assert {(a["arm"], a["unique_tokens"]) for a in result["arms"]} == {
        (arm, tokens) for arm in study.ARMS for tokens in {a["unique_tokens"] for a in result["arms"]}}
    for name in ("study.png", "best_vs_budget.png", "reuse_fits.png"):
        assert (out / name).stat().st_size > 1000
    assert "winner" in (out / "study.md").read_text()
    for arm in result["arms"]:
        assert [p["epoch"] for p in arm["points"]] == [4, 8, 12]
        assert all(p["train_flops"] > 0 for p in arm["points"])
        run = Experiment(out / "runs" / arm["run"])
        logged = [row["eval_loss"] for row in run.read_metrics() if row["split"] == "eval"]
        assert logged == [p["eval_loss"] for p in arm["points"]] and run.read_config() is not None
        assert (out / "runs" / arm["run"] / "best" / "config.json").is_file()
        if arm["arm"].startswith("diffusion"):
            assert all(p["standard_error"] > 0 for p in arm["points"])
    assert len(result["verdicts"]) == 4 and set(result["reuse_fits"]) == set(study.ARMS)
