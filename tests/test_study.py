"""The data-constrained study harness at CI size: every arm trains, is scored every K epochs, AR overfits a
tiny corpus, and study.json / study.md / study.png are written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tdlm.research.study import mode_config, parse_budgets, summarize
from tdlm.runs import Experiment

REPO = Path(__file__).resolve().parents[1]
WIKI = REPO.parent / "shared" / "data" / "wikitext-2-raw"


def test_parse_budgets_and_modes():
    assert parse_budgets("25%,50%,100%") == [0.25, 0.5, 1.0]
    assert parse_budgets("0.1") == [0.1]
    with pytest.raises(ValueError, match="unique-tokens"):
        parse_budgets("150%")
    with pytest.raises(ValueError, match="unknown mode"):
        mode_config({"model": {}, "training": {}, "monitoring": {"wandb": {}}}, "bert", 3, 0.1, 0.5)


def test_summary_finds_best_epoch_and_crossover():
    ar = {"budget": 1.0, "unique_tokens": 10, "mode": "ar",
          "points": [{"epoch": e, "eval_loss": v} for e, v in [(1, 5.0), (2, 4.0), (3, 4.5), (4, 5.0)]]}
    dd = {"budget": 1.0, "unique_tokens": 10, "mode": "diffusion",
          "points": [{"epoch": e, "eval_loss": v} for e, v in [(1, 5.5), (2, 4.6), (3, 4.3), (4, 4.2)]]}
    rows = {r["mode"]: r for r in summarize([ar, dd])}
    assert (rows["ar"]["best_epoch"], rows["ar"]["best_eval_loss"]) == (2, 4.0)
    assert rows["diffusion"]["crossover_epoch"] == 3
    assert rows["ar"]["crossover_epoch"] is None


@pytest.mark.slow
def test_cpu_study_runs_and_ar_overfits(tmp_path):
    corpus = tmp_path / "train.txt"
    corpus.write_text((WIKI / "wiki.valid.raw").read_text()[:6_000])
    held_out = tmp_path / "eval.txt"
    held_out.write_text((WIKI / "wiki.test.raw").read_text()[:3_000])
    overrides = [
        f"model.train_bpe={{files: [{corpus}], vocab_size: 300}}", "model.hidden_size=32",
        "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.intermediate_size=64",
        f"data.train_files={corpus}", f"data.eval_files={held_out}", "data.block_size=32",
        f"data.cache_dir={tmp_path / 'cache'}", "training.batch_size=8", "training.learning_rate=1e-2",
        "training.warmup_steps=0", "training.weight_decay=0.0",
    ]
    out = tmp_path / "study"
    subprocess.run([sys.executable, str(REPO / "scripts" / "data_constrained_study.py"), "--config",
                    str(REPO / "configs" / "quick_test.yaml"), "--epochs", "40", "--unique-tokens", "50%,100%",
                    "--eval-every", "4", "--modes", "ar,diffusion", "--nelbo-samples", "2", "--max-eval-blocks", "8",
                    "--output-dir", str(out), *overrides], check=True, cwd=tmp_path, capture_output=True)
    result = json.loads((out / "study.json").read_text())
    assert (out / "study.png").stat().st_size > 1000
    assert "| mode |" in (out / "study.md").read_text()
    arms = {(a["mode"], a["budget"]) for a in result["arms"]}
    assert arms == {(m, b) for m in ("ar", "diffusion") for b in (0.5, 1.0)}
    for arm in result["arms"]:
        assert [p["epoch"] for p in arm["points"]] == list(range(4, 41, 4))
        run = Experiment(out / "runs" / f"{arm['mode']}_{round(arm['budget'] * 100)}pct")
        logged = [row["eval_loss"] for row in run.read_metrics() if row["split"] == "eval"]
        assert logged == [p["eval_loss"] for p in arm["points"]] and run.read_config() is not None
        if arm["mode"] == "diffusion":
            assert all(p["standard_error"] > 0 for p in arm["points"])
    assert not [folder for folder in (out / "runs").rglob("*") if folder.is_dir() and not any(folder.iterdir())]
    # ~1.5k training tokens, 40 epochs, a 300-token vocabulary: AR memorises and its held-out NLL turns up
    for arm in (a for a in result["arms"] if a["mode"] == "ar"):
        losses = [p["eval_loss"] for p in arm["points"]]
        assert losses[-1] > min(losses) + 0.1, losses
