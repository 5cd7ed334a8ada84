"""The sampling speed-quality frontier: `tdlm-benchmark --sampling-frontier` end to end on tiny untrained checkpoints,
and the summary's rule for "faster than AR at equal quality"."""

import json
from pathlib import Path

import pytest

from tdlm.cli.benchmark import main
from tdlm.config import load_config
from tdlm.research.sampling_frontier import BASELINE, default_methods, frontier_summary
from tdlm.training import build_model, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
WIKI = REPO.parent / "shared" / "data" / "wikitext-2-raw"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained tiny AR, diffusion and block-diffusion checkpoints sharing one 300-token BPE, and a held-out text
    file."""
    folder = tmp_path_factory.mktemp("frontier")
    corpus, held_out = folder / "train.txt", folder / "held_out.txt"
    corpus.write_text((WIKI / "wiki.valid.raw").read_text()[:6_000])
    held_out.write_text((WIKI / "wiki.test.raw").read_text()[:6_000])
    paths = {}
    for config_file, objective, extra in (("quick_test.yaml", "diffusion", []),
                                          ("quick_test_ar.yaml", "autoregressive", []),
                                          ("quick_test_bd.yaml", "block_diffusion", ["model.bd_block_size=4"])):
        config = load_config(REPO / "configs" / config_file, extra + [
            f"model.train_bpe={{files: [{corpus}], vocab_size: 300}}", "model.hidden_size=32",
            "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.intermediate_size=64",
            f"data.train_files={corpus}", "data.block_size=16", "training.report_to=none"])
        tokenizer = build_tokenizer(config)
        paths[objective] = folder / objective
        build_model(config, tokenizer).save_pretrained(paths[objective])
        tokenizer.save_pretrained(paths[objective])
    return paths, held_out


def test_frontier_cli_writes_every_method_the_reference_and_a_plot(checkpoints, tmp_path):
    paths, held_out = checkpoints
    output = tmp_path / "frontier.json"
    main(["--sampling-frontier", "--frontier-checkpoints",
          f"diffusion={paths['diffusion']},autoregressive={paths['autoregressive']},"
          f"block_diffusion={paths['block_diffusion']}",
          "--scorer", str(paths["autoregressive"]), "--reference-text", str(held_out), "--sampling-batch", "2",
          "--sampling-length", "8", "--repeats", "2", "--frontier-steps", "2,4", "--cache-steps", "4",
          "--block-length", "4", "--block-diffusion-steps", "1,2", "--device", "cpu", "--output", str(output)])
    report = json.loads(output.read_text())
    expected = [m.name for m in default_methods((2, 4), 0.9, 4, (4,), (1, 2))]
    assert [row["method"] for row in report["rows"]] == expected
    assert [row["objective"] for row in report["rows"]].count("block_diffusion") == 2
    assert {"prefix", "dual"} <= {row["options"].get("cache") for row in report["rows"]}
    for row in report["rows"]:
        assert len(row["rounds_s"]) == 2 and row["tokens_per_second"] == pytest.approx(2 * 8 / row["wall_time_s"])
        assert row["num_samples"] >= 1 and row["gen_ppl"] > 1 and row["scored_as"] == "ids"
    reference = report["reference"]
    assert reference["num_tokens"] == 4 * 9 and reference["unigram_entropy"] > 1  # 2 rounds x 2 rows x (1 + 8)
    for row in report["rows"]:
        assert row["num_tokens"] <= 4 * 9
        assert ("agreement_with_uncached" in row) == bool(row["options"].get("cache"))
        assert 0.0 <= row.get("agreement_with_uncached", 0.0) <= 1.0
    assert report["baseline_ratio"] > 0 and "ar_gen_ppl" in report["summary"]
    assert output.with_suffix(".png").stat().st_size > 10_000


def test_frontier_refuses_a_diffusion_scorer_and_a_mislabelled_checkpoint(checkpoints, tmp_path):
    paths, _ = checkpoints
    common = ["--sampling-frontier", "--output", str(tmp_path / "f.json")]
    with pytest.raises(SystemExit):
        main(common + ["--frontier-checkpoints", f"diffusion={paths['diffusion']}", "--scorer",
                       str(paths["diffusion"])])
    with pytest.raises(SystemExit):
        main(common + ["--frontier-checkpoints", f"autoregressive={paths['diffusion']}", "--scorer",
                       str(paths["autoregressive"])])


def _row(method, objective, speed, ppl, entropy):
    return {"method": method, "objective": objective, "tokens_per_second": speed, "gen_ppl": ppl,
            "unigram_entropy": entropy}


def test_summary_counts_only_diverse_rows_at_or_below_ar_gen_ppl():
    ar = _row("ar", "autoregressive", 100.0, 50.0, 4.0)
    repetitive = _row(BASELINE[0], "diffusion", 900.0, 10.0, 4.0)  # a baseline row never counts
    low_entropy = _row("d low", "diffusion", 500.0, 20.0, 2.0)  # gen-PPL bought with repetition
    slow_good = _row("d slow", "diffusion", 80.0, 45.0, 4.1)
    fast_good = _row("d fast", "diffusion", 300.0, 49.0, 3.9)
    summary = frontier_summary({"rows": [ar, repetitive, low_entropy, slow_good, fast_good]})
    assert summary["winner"] == "d fast" and summary["speedup"] == pytest.approx(3.0)
    summary = frontier_summary({"rows": [ar, repetitive, low_entropy, _row("d", "diffusion", 200.0, 75.0, 4.0)]})
    assert summary["winner"] is None and summary["best_quality"] == "d"
    assert summary["gen_ppl_ratio_to_ar"] == pytest.approx(1.5) and summary["best_quality_speedup"] == 2.0


def test_block_diffusion_refuses_the_approximate_caches(checkpoints):
    from tdlm.runs import load_model

    paths, _ = checkpoints
    model = load_model(paths["block_diffusion"]).eval()
    with pytest.raises(ValueError, match="cache='dual'"):
        model.diffusion_generate(batch_size=1, max_length=8, cache="dual")
