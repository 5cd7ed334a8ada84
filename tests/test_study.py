"""The data-constrained study harness at CI size: nested random document budgets, both objectives scored on all L
tokens, the clustered standard error, cool-down branches, a resumable arm, and a tiny study with its report."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from tdlm.config import load_config, save_config
from tdlm.data import TokenShards, document_blocks, prepare_dataset
from tdlm.evaluation.likelihood import with_context
from tdlm.research import study
from tdlm.research.reuse import fit_reuse, reuse_loss
from tdlm.research.sample_quality import score_texts, unigram_entropy
from tdlm.research.statistics import clustered_standard_error, paired_difference
from tdlm.research.study_report import claims, critical_compute, crossover, regenerate
from tdlm.tokenization import train_bpe_tokenizer
from tdlm.training import build_model, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
WIKI = REPO.parent / "shared" / "data" / "wikitext-2-raw"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A 300-token BPE and prepared shards of 60 train / 12 eval documents of WikiText-2 lines (with boundaries)."""
    folder = tmp_path_factory.mktemp("study")
    lines = [line for line in (WIKI / "wiki.valid.raw").read_text().splitlines() if len(line) > 200]
    (folder / "corpus.txt").write_text("\n".join(lines[:200]))
    tokenizer = train_bpe_tokenizer([folder / "corpus.txt"], vocab_size=300)
    tokenizer.save_pretrained(folder / "tokenizer")
    documents = [" ".join(lines[i:i + 1 + i % 3]) for i in range(72)]
    prepare_dataset(Dataset.from_dict({"text": documents[:60]}), folder / "shards", tokenizer,
                    eval_source=Dataset.from_dict({"text": documents[60:]}))
    return folder


@pytest.fixture(scope="module")
def tiny(prepared):
    overrides = [f"model.tokenizer={prepared / 'tokenizer'}", f"data.prepared={prepared / 'shards'}",
                 "data.block_size=32", "training.batch_size=8", "training.learning_rate=1e-2",
                 "training.warmup_steps=2"]
    return load_config(REPO / "configs" / "study_stdlib_cpu.yaml", overrides)


def test_budgets_are_nested_random_document_samples(prepared):
    shards = TokenShards(prepared / "shards", "train")
    offsets = shards.document_offsets()
    assert len(offsets) == 61 and offsets[-1] == shards.num_tokens  # boundaries recorded at preparation
    data = study.StudyData(prepared / "shards", 32)
    order = data.document_order(0)
    assert sorted(order) == list(range(60)) and list(order) != list(range(60))  # shuffled, every document once
    assert list(data.document_order(0)) == list(order) and list(data.document_order(1)) != list(order)  # seeded
    small, large = data.budget_blocks(320, 0), data.budget_blocks(960, 0)
    assert small.shape == (10, 32) and large.shape == (30, 32)
    assert torch.equal(large[:10], small)  # nested: a larger budget extends a smaller one
    flat = np.concatenate([shards.read(int(offsets[d]), int(offsets[d + 1] - offsets[d])) for d in order])
    assert large.flatten().tolist() == flat[:960].tolist()  # whole documents, in the shuffled order
    blocks, owners = document_blocks(shards, [5, 2], 32)
    assert owners[0] == 5 and set(owners.tolist()) <= {5, 2}
    with pytest.raises(ValueError, match="blocks of 32 tokens asked for"):
        document_blocks(shards, [5], 32, num_blocks=10_000)


def test_held_out_split_into_selection_and_report(prepared):
    data = study.StudyData(prepared / "shards", 32)
    selection, report = data.selection[0], data.report[0]
    total = len(selection) + len(report)
    assert len(selection) == math.ceil(total / study.SELECTION_STRIDE)
    assert set(data.report[1].tolist()) <= set(range(12)) and len(set(data.report[1].tolist())) > 6


def test_both_objectives_score_all_l_tokens(tiny):
    blocks = torch.randint(2, 290, (3, 32))
    losses = {}
    for objective in (*study.OBJECTIVES, "bd8"):
        arm = study.Arm(objective, "32x1", 100)
        config = study.arm_config(tiny, arm, 32)
        tokenizer = build_tokenizer(config)
        model = build_model(config, tokenizer).eval()
        loss, variance = study.block_losses(model, blocks, tokenizer.eos_token_id, 16, 0)
        assert loss.shape == variance.shape == (3,)
        losses[objective] = (loss, variance)
        if objective == "ar":  # exactly the mean CE of all L tokens given the context token
            inputs = with_context(blocks, tokenizer.eos_token_id)
            out = model(input_ids=inputs, labels=inputs)
            assert out.token_losses.numel() == blocks.numel()
            assert loss == pytest.approx(out.token_losses.view(3, 32).double().mean(1).numpy(), rel=1e-6)
            assert not variance.any()
        else:
            assert (variance > 0).all()
    # untrained models are near uniform over the vocabulary on every one of the L tokens, under both objectives (the
    # NELBO within 4 of its Monte-Carlo SE)
    for loss, variance in losses.values():
        assert abs(loss.mean() - math.log(300)) < 0.3 + 4 * math.sqrt(variance.sum()) / 3


def test_clustered_standard_error_known_answers():
    # constant within equal clusters: exactly the standard error of the cluster means
    means = np.array([1.0, 3.0, 2.0, 6.0])
    values, clusters = np.repeat(means, 5), np.repeat(np.arange(4), 5)
    assert clustered_standard_error(values, clusters) == pytest.approx(means.std(ddof=1) / 2)
    # one observation per cluster: the usual standard error of the mean
    x = np.random.default_rng(0).normal(size=50)
    assert clustered_standard_error(x, np.arange(50)) == pytest.approx(x.std(ddof=1) / math.sqrt(50))
    result = paired_difference([2.0, 2.0], [1.0, 1.0], [0, 1], [0.01, 0.01], [0.03, 0.03])
    assert result["difference"] == 1.0 and result["monte_carlo_standard_error"] == pytest.approx(math.sqrt(0.08) / 2)


def test_clustered_standard_error_is_calibrated():
    """On simulated correlated blocks (20 documents x 30 blocks, intra-document correlation 0.5) the clustered SE
    matches the spread of the mean over repetitions, where the naive iid SE is ~3.9x too small."""
    rng = np.random.default_rng(1)
    clusters = np.repeat(np.arange(20), 30)
    means, clustered, naive = [], [], []
    for _ in range(400):
        values = np.repeat(rng.normal(size=20), 30) + rng.normal(size=600)
        means.append(values.mean())
        clustered.append(clustered_standard_error(values, clusters))
        naive.append(values.std(ddof=1) / math.sqrt(600))
    truth = np.std(means, ddof=1)  # its own sampling error is ~3.5% with 400 repetitions
    assert np.mean(clustered) == pytest.approx(truth, rel=0.15)
    assert np.mean(naive) < truth / 3


def test_a_claim_needs_every_seed():
    def runs(budget, *winners):
        return [{"budget": budget, "comparison": "best size vs best size", "winner": w} for w in winners]

    rows = runs(1, "ar", "ar") + runs(2, "diffusion") + runs(3, "ar", "tie (within 2 SE)") + runs(4, "tie", "tie")
    assert [c["claim"] for c in claims(rows)] == ["ar", None, None, None]


def test_crossover_needs_to_stay_below():
    def arm(objective, points):
        return {"objective": objective, "budget": 1, "seed": 0, "dropout": 0.0, "points": [
            {"train_flops": f, "eval_loss": v, "standard_error": 0.01} for f, v in points]}

    ar = arm("ar", [(1, 6.0), (2, 5.0), (4, 4.8), (8, 4.9)])
    transient = arm("diffusion", [(1, 5.5), (2, 5.4), (4, 5.0)])  # below at first, then above AR for good
    late = arm("diffusion", [(1, 6.2), (2, 5.4), (4, 4.9), (8, 4.7)])
    assert crossover([ar, transient], 1)["measured_flops"] is None
    assert crossover([ar, late], 1)["measured_flops"] == 8


def test_branch_epochs_and_grid_errors(tiny):
    assert study.branch_epochs(300) == [2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 300]
    assert study.branch_epochs(5) == [2, 3, 4, 5]
    assert study.parse_budgets("25k,0.1M,4000", 10**6) == [25_000, 100_000, 4000]
    for bad in ("5M", "25%", "lots"):
        with pytest.raises(ValueError, match="unique-tokens"):
            study.parse_budgets(bad, 10**6)
    with pytest.raises(ValueError, match="sizes"):
        study.parse_sizes("64x2,50x2")
    assert study.size_shape("48x2") == {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 3,
                                        "intermediate_size": 128}
    for bad in ("bert", "bd5", "bd0"):
        with pytest.raises(ValueError, match="unknown objective"):
            study.arm_config(tiny, study.Arm(bad, "32x1", 10), 32)
    bd = study.arm_config(tiny, study.Arm("bd8", "32x1", 10), 32)["model"]
    assert (bd["training_mode"], bd["bd_block_size"]) == ("block_diffusion", 8)
    config = study.arm_config(tiny, study.Arm("diffusion", "32x1", 10, seed=3, dropout=0.1), 32)
    assert config["model"]["max_position_embeddings"] == 33 and config["model"]["hidden_dropout"] == 0.1
    assert config["training"]["seed"] == 3
    assert critical_compute(1_000_000) == pytest.approx(2.12e15)


@pytest.mark.parametrize("flags, named", [
    (["--sizes", "50x2"], "--sizes"), (["--unique-tokens", "25%"], "--unique-tokens"),
    (["--unique-tokens", "10M"], "--unique-tokens"), (["--objectives", "ar,bert"], "--objectives"),
    (["--objectives", "bd5"], "--objectives"), (["--max-epochs", "1"], "--max-epochs"),
    (["--cooldown", "0"], "--cooldown"), (["--patience", "0"], "--patience"),
    (["--selection-samples", "1"], "--selection-samples"), (["--report-samples", "1"], "--report-samples"),
    (["--dropout", "1.5"], "--dropout"), (["--extra-at", "640"], "--extra-at"),
    (["--scorer-tokens", "5"], "--scorer-tokens")])
def test_bad_study_flags_are_one_line_errors(tiny, tmp_path, capsys, flags, named):
    from tdlm.cli.data_constrained_study import cli

    config = tmp_path / "config.yaml"
    save_config(tiny, config)
    argv = ["--config", str(config), "--unique-tokens", "320", "--sizes", "32x1", "--output-dir", str(tmp_path / "s")]
    assert cli(argv + flags) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {named}") and "\n" not in error
    assert not (tmp_path / "s" / "runs").exists()  # refused before any training


def test_bad_study_cli_usage(tmp_path, capsys):
    from tdlm.cli.data_constrained_study import cli

    assert cli(["--unique-tokens", "25k"]) == 2 and "--config is required" in capsys.readouterr().err
    assert cli(["--config", "x.yaml", "--threads", "0"]) == 2 and "--threads" in capsys.readouterr().err
    assert cli(["--report", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: --report: no study.json in {tmp_path}"


SETTINGS = {"max_epochs": 4, "cooldown": 0.5, "patience": 2, "selection_samples": 2, "report_samples": 2,
            "eval_seed": 7, "data_seed": 0}


def test_interrupted_arm_resumes_bit_for_bit(tiny, tmp_path, monkeypatch):
    arm = study.Arm("diffusion", "32x1", 640)
    data = study.StudyData(tiny["data"]["prepared"], 32)
    tokenizer = build_tokenizer(tiny)
    whole = study.run_arm(arm, tiny, tokenizer, data, SETTINGS, tmp_path / "whole")
    assert [p["epoch"] for p in whole["points"]] == [2, 3, 4]
    assert all(p["cooldown_steps"] >= 1 and p["standard_error"] > 0 for p in whole["points"])

    calls = []
    branch = study.ArmTrainer._branch

    def crash_on_second_branch(self):
        calls.append(self.epoch)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the session ends mid-run
        return branch(self)

    monkeypatch.setattr(study.ArmTrainer, "_branch", crash_on_second_branch)
    with pytest.raises(KeyboardInterrupt):
        study.run_arm(arm, tiny, tokenizer, data, SETTINGS, tmp_path / "cut")
    folder = tmp_path / "cut" / "runs" / arm.name
    assert (folder / "state.pt").is_file() and not (folder / "result.json").exists()
    monkeypatch.setattr(study.ArmTrainer, "_branch", branch)
    resumed = study.run_arm(arm, tiny, tokenizer, data, SETTINGS, tmp_path / "cut")
    assert resumed["points"] == whole["points"] and resumed["report_losses"] == whole["report_losses"]
    assert not (folder / "state.pt").exists() and (folder / "best" / "model.safetensors").is_file()
    # a finished arm is read back, never recomputed
    monkeypatch.setattr(study.ArmTrainer, "train", lambda self: pytest.fail("a finished arm was retrained"))
    assert study.run_arm(arm, tiny, tokenizer, data, SETTINGS, tmp_path / "cut") == resumed


def test_patience_stops_an_overfitting_arm(tiny, tmp_path, monkeypatch):
    losses = iter([5.0, 4.0, 4.5, 4.6, 4.7])

    def fake_branch(self):
        return {"epoch": self.epoch, "eval_loss": next(losses), "worse_than_best": len(self.points) >= 2}

    monkeypatch.setattr(study.ArmTrainer, "_branch", fake_branch)
    monkeypatch.setattr(study.ArmTrainer, "_save", lambda self: None)
    arm, data = study.Arm("ar", "32x1", 320), study.StudyData(tiny["data"]["prepared"], 32)
    trainer = study.ArmTrainer(arm, study.arm_config(tiny, arm, 32), build_tokenizer(tiny), data.budget_blocks(320, 0),
                               data, {**SETTINGS, "max_epochs": 300}, tmp_path)
    trainer.train()
    assert [p["epoch"] for p in trainer.points] == [2, 3, 4, 6]  # two worse branches in a row: stop
    assert trainer.epoch == 6


@pytest.mark.slow
def test_tiny_study_writes_report_after_each_arm(tiny, tmp_path, monkeypatch):
    out = tmp_path / "study"
    result = study.run_study(tiny, "320,640", "32x1", out, ("ar", "diffusion", "bd8"), max_epochs=3, cooldown=0.5,
                             selection_samples=2, report_samples=2, extra_seeds=1, dropout=0.1, gen_samples=2,
                             gen_steps=4, scorer_tokens=640, scorer_size="32x1")
    names = {a["name"] for a in result["arms"]}
    assert len(names) == 2 * 3 + 3 + 3  # budgets x objectives, then a second seed and a dropout arm per objective
    assert {"ar", "diffusion", "bd8"} == {a["objective"] for a in result["arms"] if a["seed"] == 1}
    verdicts = result["summary"]["verdicts"]
    assert {v["seed"] for v in verdicts} == {0, 1} and {v["objective"] for v in verdicts} == {"diffusion", "bd8"}
    assert all(v["standard_error"] >= v["cluster_standard_error"] > 0 for v in verdicts)
    assert result["environment"]["git_commit"] and result["environment"]["command"]
    quality = result["sample_quality"]["rows"]
    assert quality[0]["name"].startswith("held-out text") and len(quality) == 1 + 2 * 3  # reference + best arms
    assert all(q["gen_ppl"] > 1 and q["unigram_entropy"] > 0 for q in quality)
    scorer_documents = study.used_documents(study.StudyData(tiny["data"]["prepared"], 32), result["arms"], 0)
    assert len(scorer_documents) < 60  # documents were left for the scorer
    markdown = (out / "study.md").read_text()
    assert "predicted C_crit" in markdown and "not identified" in markdown or "R*" in markdown
    assert (out / "study.png").stat().st_size > 1000
    # every table and figure regenerates from study.json alone
    (out / "study.md").unlink()
    (out / "study.png").unlink()
    again = regenerate(out)
    assert (out / "study.md").read_text() == markdown and (out / "study.png").is_file()
    assert again["summary"] == json.loads(json.dumps(result["summary"]))
    # the sample-quality stage alone: nothing is trained again (the scorer is kept too)
    monkeypatch.setattr(study.ArmTrainer, "train", lambda self: pytest.fail("an arm was trained"))
    only = study.run_study(tiny, "320,640", "32x1", out, ("ar", "diffusion", "bd8"), gen_samples=2, gen_steps=4,
                           scorer_tokens=640, scorer_size="32x1", train=False)
    assert [q["gen_ppl"] for q in only["sample_quality"]["rows"]] == [q["gen_ppl"] for q in quality]


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
    tokenizer = build_tokenizer(tiny)
    scorer = build_model(study.arm_config(tiny, study.Arm("ar", "32x1", 1), 32), tokenizer).eval()
    # a flat scorer gives the gen-PPL of a uniform distribution over its vocabulary (less the mask token)
    torch.nn.init.zeros_(scorer.get_output_embeddings().weight)
    flat = score_texts(scorer, tokenizer, ["def main(self):", "return x"])
    assert flat["gen_ppl"] == pytest.approx(scorer.config.vocab_size - 1, rel=1e-4)
