"""`tdlm-lm-eval`: lm-eval's stock command line (through the installed console script's function) with the
"tdlm" model registered, every flag passed through, on local task YAMLs; long contexts are truncated with a
warning that counts them."""

import json
import logging
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from publish_helpers import REPO_ROOT, save_checkpoint

from tdlm.evaluation.tasks import write_lm_eval_tasks


def console_function(name: str):
    (script,) = entry_points(group="console_scripts", name=name)
    return script.load()


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    write_lm_eval_tasks(folder, ["boolq", "mmlu_5shot"])
    return folder


@pytest.mark.parametrize("mode", ["diffusion", "autoregressive"])
def test_console_script_runs_lm_eval_cli_with_the_tdlm_model(mode, tmp_path, task_dir, caplog):
    checkpoint = save_checkpoint(tmp_path / "ckpt", mode)  # 64 positions: the 5-shot MMLU prompts do not fit
    output = tmp_path / "out"
    caplog.set_level(logging.WARNING, logger="tdlm.evaluation.lm_eval_adapter")
    status = console_function("tdlm-lm-eval")([
        "--model", "tdlm", "--model_args", f"pretrained={checkpoint},mc_num=2,seed=1",
        "--tasks", "tdlm_boolq,tdlm_mmlu_5shot_anatomy", "--include_path", str(task_dir), "--limit", "2",
        "--batch_size", "4", "--device", "cpu", "--output_path", str(output), "--log_samples", "--seed", "0"])
    assert status == 0
    (results_file,) = output.rglob("results_*.json")  # lm-eval's EvaluationTracker wrote its usual files
    results = json.loads(results_file.read_text())
    assert results["config"]["model"] == "tdlm" and results["config"]["model_args"]["mc_num"] == 2
    for task in ("tdlm_boolq", "tdlm_mmlu_5shot_anatomy"):
        assert results["n-samples"][task]["effective"] == 2
        assert 0.0 <= results["results"][task]["acc,none"] <= 1.0
    assert list(output.rglob("samples_tdlm_boolq_*.jsonl"))  # --log_samples passed through
    truncated = [r.getMessage() for r in caplog.records if "left-truncated" in r.getMessage()]
    assert truncated and all(" loglikelihood requests exceed " in m for m in truncated)  # 5-shot prompts > 64


@pytest.mark.slow
def test_script_wrapper_reaches_the_same_cli(tmp_path, task_dir):
    """The script forwards to the same CLI (its own folder, which would shadow `lm_eval`, is off sys.path)."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "run_lm_eval.py"), "--model", "no_such_model",
                             "--tasks", "tdlm_boolq", "--include_path", str(task_dir), "--model_args", "pretrained=x"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    assert "no_such_model" in result.stderr and "tdlm" in result.stderr  # lm-eval lists the registered models


@pytest.mark.slow
def test_two_processes_split_the_requests_and_gather_the_same_scores(tmp_path, task_dir):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "diffusion")
    flags = ["--model", "tdlm", "--model_args", f"pretrained={checkpoint},mc_num=2", "--tasks", "tdlm_boolq",
             "--include_path", str(task_dir), "--limit", "6", "--device", "cpu"]
    single = tmp_path / "single"
    assert console_function("tdlm-lm-eval")([*flags, "--output_path", str(single)]) == 0
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                             "tdlm.cli.lm_eval", *flags, "--output_path", str(tmp_path / "multi")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on rank 1" in result.stderr  # the second process built (and scored) its own share
    scores = [json.loads(next((tmp_path / run).rglob("results_*.json")).read_text())["results"]["tdlm_boolq"]
              for run in ("single", "multi")]
    assert scores[0]["acc,none"] == scores[1]["acc,none"] and scores[0]["acc_norm,none"] == scores[1]["acc_norm,none"]
