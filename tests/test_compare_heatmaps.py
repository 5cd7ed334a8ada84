"""compare_models and gradient_heatmaps on fabricated experiment folders (the trainer's folder contract)."""

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from tdlm.evaluation.comparison import compare_experiments
from tdlm.evaluation.heatmaps import NoGradientMetricsError, generate_heatmaps, gradient_table, load_run_metrics
from tdlm.runs import Experiment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_eval_benchmarks import save_tiny  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_experiment(root: Path, experiment_id: str, mode: str, eval_file: Path, with_summary: bool) -> Path:
    folder = root / experiment_id
    steps, eval_losses = [10, 20, 30], [6.0, 5.0, 5.5]
    for step in steps:
        checkpoint = folder / "checkpoints" / f"checkpoint-{step}"
        save_tiny(checkpoint, mode, max_positions=64)
    history = [{"step": s, "eval_loss": loss} for s, loss in zip(steps, eval_losses)]
    (folder / "checkpoints" / "checkpoint-30" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"training_mode": mode}, "data": {"eval_files": str(eval_file), "block_size": 32}}))
    rows = []
    for step in range(5, 35, 5):
        row = {"step": step, "epoch": step / 30, "split": "train", "loss": 6 - step / 30}
        if mode == "diffusion":
            row.update({f"grad_norm/{lvl}": g * (1 + step / 100)
                        for lvl, g in (("low", .5), ("medium", 1.), ("high", 2.))})
            row["grad_norm/total"] = math.sqrt(sum(row[f"grad_norm/{lvl}"] ** 2 for lvl in ("low", "medium", "high")))
            row.update({f"loss/{lvl}": v for lvl, v in (("low", 1.), ("medium", 3.), ("high", 6.))})
        rows.append(row)
        if step % 10 == 0:
            rows.append({"step": step, "epoch": step / 30, "split": "eval", "eval_loss": eval_losses[step // 10 - 1]})
    (folder / "logs").mkdir()
    (folder / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if with_summary:
        (folder / "results").mkdir()
        (folder / "results" / "summary.json").write_text(json.dumps({
            "experiment_id": experiment_id, "training_mode": mode, "best_checkpoint": str(folder / "checkpoints" /
                                                                                          "checkpoint-20"),
            "best_eval_loss": 6.0, "train_tokens": 12345, "epochs": 1.0, "num_parameters": 1}))
    return folder


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    eval_file = root / "eval.txt"
    eval_file.write_text("The cat sat on the mat and looked at the dog across the room.\n" * 30)
    make_experiment(root, "dd_run", "diffusion", eval_file, with_summary=True)
    make_experiment(root, "ar_run", "autoregressive", eval_file, with_summary=False)
    make_experiment(root, "bd_run", "block_diffusion", eval_file, with_summary=False)
    return root


def test_best_checkpoint_rules(experiments):
    # the lowest eval_loss in trainer_state (summary.json only reports it)
    assert Experiment(experiments / "dd_run").best_checkpoint().name == "checkpoint-20"
    assert Experiment(experiments / "ar_run").best_checkpoint().name == "checkpoint-20"
    (experiments / "ar_run" / "checkpoints" / "checkpoint-30" / "trainer_state.json").rename(
        experiments / "ar_run" / "state.bak")
    try:
        assert Experiment(experiments / "ar_run").best_checkpoint().name == "checkpoint-30"  # latest
    finally:
        (experiments / "ar_run" / "state.bak").rename(
            experiments / "ar_run" / "checkpoints" / "checkpoint-30" / "trainer_state.json")


def test_compare_models_script_writes_table_json_markdown_png(experiments, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    import compare_models

    comparison = compare_models.main(["--dd", "dd_run", "--ar", "ar_run", "--experiments-dir", str(experiments),
                                      "--max-batches", "1", "--batch-size", "2", "--tasks", "hellaswag",
                                      "--limit", "2", "--mc-num", "2", "--nelbo-samples", "2",
                                      "--sampling-tokens", "4", "--save-results", "--output-dir", str(tmp_path),
                                      "--output-name", "cmp"])
    printed = capsys.readouterr().out
    assert "eval NLL per token" in printed and "hellaswag acc_norm" in printed
    dd, ar = comparison["diffusion"], comparison["autoregressive"]
    assert dd["training_mode"] == "diffusion" and ar["training_mode"] == "autoregressive"
    assert Path(dd["checkpoint"]).name == "checkpoint-20" and Path(ar["checkpoint"]).name == "checkpoint-20"
    assert dd["likelihood"]["num_blocks"] == ar["likelihood"]["num_blocks"] == 2  # same eval blocks
    assert dd["likelihood"]["block_size"] == 32 and comparison["same_tokenizer"]
    assert dd["likelihood"]["standard_error"] > 0 and ar["likelihood"]["nll"] > 0
    assert dd["train_tokens"] == 12345 and ar["train_tokens"] is None
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert saved["settings"]["seed"] == 0 and saved["diffusion"]["environment"]["packages"]["torch"]
    assert "| eval NLL per token (nats) |" in (tmp_path / "cmp.md").read_text()
    assert (tmp_path / "cmp_eval_loss.png").read_bytes()[:8] == PNG_MAGIC


def test_gradient_heatmaps_write_four_pngs(experiments, tmp_path):
    paths = generate_heatmaps("dd_run", experiments, tmp_path)
    assert [p.name for p in paths] == ["corruption_vs_time.png", "gradient_ratios.png", "gradient_health.png",
                                       "summary_dashboard.png"]
    assert all(p.parent == tmp_path / "dd_run" and p.read_bytes()[:8] == PNG_MAGIC for p in paths)
    table = gradient_table(load_run_metrics("dd_run", experiments)[1])
    assert list(table["steps"]) == [5, 10, 15, 20, 25, 30]  # eval rows without gradients are skipped
    ratio_sq = sum((table["grad"][lvl] / table["total"]) ** 2 for lvl in ("low", "medium", "high"))
    assert ratio_sq == pytest.approx([1.0] * 6)


def test_gradient_heatmaps_clear_error_for_ar_run(experiments, tmp_path):
    with pytest.raises(NoGradientMetricsError, match="no grad_norm"):
        generate_heatmaps(str(experiments / "ar_run"), experiments, tmp_path)
    sys.path.insert(0, str(REPO / "scripts"))
    import gradient_heatmaps

    with pytest.raises(SystemExit) as exit_info:
        gradient_heatmaps.main(["ar_run", "--experiments-dir", str(experiments), "--output-root", str(tmp_path)])
    assert exit_info.value.code == 2
    with pytest.raises(FileNotFoundError, match="not an experiment folder"):
        load_run_metrics("no_such_run", experiments)


def test_block_diffusion_compares_with_ar_on_the_same_tokens(experiments):
    comparison = compare_experiments("bd_run", "ar_run", str(experiments), max_batches=1, batch_size=2,
                                     nelbo_samples=2, sampling_tokens=4)
    bd, ar = comparison["diffusion"], comparison["autoregressive"]
    assert bd["training_mode"] == "block_diffusion" and bd["likelihood"]["standard_error"] > 0
    assert bd["likelihood"]["num_tokens"] == ar["likelihood"]["num_tokens"] == 2 * 32  # all L tokens of each block
    with pytest.raises(ValueError, match="--ar bd_run: best checkpoint has training_mode='block_diffusion'"):
        compare_experiments("dd_run", "bd_run", str(experiments), max_batches=1, batch_size=2, nelbo_samples=2)
