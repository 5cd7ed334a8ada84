"""A new user's first hour on a CPU-only machine (issue 26): every documented path works, and what is printed or
published says what it is. End-to-end rows run the commands in a subprocess, as a user would; the rest call the
console functions in-process. One row per item of the issue, numbered as there."""

import json
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch
from publish_helpers import REPO_ROOT, save_checkpoint, tiny_model
from test_lm_eval_cli import console_function

from tdlm.cli.generate import cli as generate_cli
from tdlm.cli.lm_eval import with_default_device
from tdlm.evaluation.tasks import write_lm_eval_tasks
from tdlm.text_generation import infill_ids

ENV = {**{k: v for k, v in os.environ.items() if k != "TDLM_DEBUG"}, "PYTHONPATH": str(REPO_ROOT),
       "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def run(*argv, cwd=REPO_ROOT, timeout=300):
    """(exit code, stdout + stderr) of a command, stdin closed (a prompt would fail, not wait)."""
    result = subprocess.run(list(map(str, argv)), capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    return result.returncode, result.stdout + result.stderr


def quick_start(corpus, root, name, *overrides):
    """`scripts/train.py --config configs/quick_test.yaml` shrunk to seconds: 12 steps (eval_steps stays 100)."""
    return run(sys.executable, REPO_ROOT / "scripts" / "train.py",
               "--config", REPO_ROOT / "configs" / "quick_test.yaml", "--output-dir", root, "--experiment-id", name,
               f"model.train_bpe={{files: [{corpus / 'train.txt'}], vocab_size: 300}}", "model.hidden_size=32",
               "model.intermediate_size=64", f"data.train_files={corpus / 'train.txt'}",
               f"data.eval_files={corpus / 'eval.txt'}", "data.block_size=16", f"data.cache_dir={corpus / 'cache'}",
               "training.batch_size=8", "training.max_steps=12", "training.logging_steps=2",
               "training.detailed_metrics_steps=4", "training.attention_analysis_steps=4",
               "training.save_every_n_steps=12", "training.warmup_steps=2", *overrides)


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """The quick start (diffusion) and its AR baseline, which takes the diffusion checkpoint as its tokenizer."""
    root = tmp_path_factory.mktemp("experiments")
    dd = quick_start(corpus, root, "dd")
    checkpoint = root / "dd" / "checkpoints" / "checkpoint-12"
    ar = quick_start(corpus, root, "ar", "model.training_mode=autoregressive", "model.train_bpe=null",
                     f"model.tokenizer={checkpoint}")
    return {"root": root, "dd": dd, "ar": ar, "checkpoint": checkpoint}


# 1 -------------------------------------------------------------------------------------------------------------
def test_1_lm_eval_without_device_runs_on_the_machines_device(tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "diffusion")
    write_lm_eval_tasks(tmp_path / "tasks", ["boolq"])
    flags = ["--model", "tdlm", "--model_args", f"pretrained={checkpoint},mc_num=2", "--tasks", "tdlm_boolq",
             "--include_path", str(tmp_path / "tasks"), "--limit", "2", "--output_path", str(tmp_path / "out")]
    assert console_function("tdlm-lm-eval")(flags) == 0  # the README's command: no --device
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert results["config"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert with_default_device(["ls", "tasks"]) == ["ls", "tasks"]
    assert with_default_device([*flags, "--device", "cpu"]).count("--device") == 1
    if not torch.cuda.is_available():  # asking for CUDA where there is none: one line saying so
        capsys.readouterr()
        assert console_function("tdlm-lm-eval")([*flags, "--device", "cuda:0"]) == 1
        err = capsys.readouterr().err
        assert "device cuda:0: this machine has no CUDA" in err and "Traceback" not in err


# 2 -------------------------------------------------------------------------------------------------------------
def test_2_accelerate_launch_that_starts_one_process_says_how_to_start_two(tmp_path):
    code, out = run(sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "-m",
                    "tdlm.cli.lm_eval", "--model", "tdlm", "--model_args", "pretrained=x", "--tasks", "x",
                    cwd=tmp_path)
    if torch.cuda.device_count() < 2:  # no GPUs to launch on: accelerate's simple launcher starts one process
        assert code != 0
        line = next(line for line in out.splitlines() if line.startswith("error: accelerate launch"))
        assert "--multi_gpu" in line and "torchrun --nproc_per_node" in line


@pytest.mark.slow
def test_2_accelerate_launch_multi_gpu_runs_two_cpu_processes(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "diffusion")
    write_lm_eval_tasks(tmp_path / "tasks", ["boolq"])
    code, out = run(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "-m",
                    "tdlm.cli.lm_eval", "--model", "tdlm", "--model_args", f"pretrained={checkpoint},mc_num=2",
                    "--tasks", "tdlm_boolq", "--include_path", tmp_path / "tasks", "--limit", "4", cwd=tmp_path,
                    timeout=600)
    assert code == 0, out[-3000:]
    assert "on rank 1" in out  # the second process scored its share


# 3 -------------------------------------------------------------------------------------------------------------
def test_3_model_card_of_a_cpu_run_shows_the_config_that_ran_and_the_evaluated_tokens(runs):
    from tdlm.hub import model_card

    card = model_card(runs["checkpoint"], repo_id="you/tiny")
    config = card.text.split("## Training configuration")[1]
    if not torch.cuda.is_available():
        assert "head_implementation: chunked" in config and "triton" not in config
    assert "cache_dir" not in config
    (held_out,) = [r for r in card.data.eval_results if r.task_name == "held-out likelihood"]
    summary = json.loads((runs["root"] / "dd" / "results" / "summary.json").read_text())
    assert held_out.metric_value == round(summary["best_eval_loss"], 4)
    assert summary["eval_tokens"] > 0 and f"{summary['eval_tokens']:,} tokens (the run's own evaluation)" in card.text


# 5 -------------------------------------------------------------------------------------------------------------
def test_5_a_checkpoint_folder_as_tokenizer_loads_without_a_prompt(runs, corpus, tmp_path):
    code, out = runs["ar"]  # model.tokenizer=<checkpoint folder>
    assert code == 0, out[-3000:]
    assert "custom code" not in out and "You are using a model of type" not in out
    code, out = run(sys.executable, REPO_ROOT / "scripts" / "prepare_data.py", "--tokenizer", runs["checkpoint"],
                    "--train", corpus / "eval.txt", "--output", tmp_path / "prepared")
    assert code == 0, out[-3000:]
    assert "custom code" not in out and "You are using a model of type" not in out


# 6 -------------------------------------------------------------------------------------------------------------
def test_6_run_summaries_say_what_the_eval_loss_is(runs):
    assert "NELBO per token, perplexity bound" in runs["dd"][1]
    assert "exact NLL per token, perplexity" in runs["ar"][1] and "perplexity bound" not in runs["ar"][1]


# 7 -------------------------------------------------------------------------------------------------------------
def test_7_infill_flag_fills_only_the_gaps(runs, capsys):
    text = "The <|mask|>*3 of the city <|mask|> the"
    assert generate_cli(["--model", str(runs["checkpoint"]), "--infill", text, "--num-steps", "4", "--quiet"]) == 0
    sample = capsys.readouterr().out.splitlines()[1]
    assert sample.startswith("The") and " of the city" in sample and sample.endswith(" the")
    assert generate_cli(["--model", str(runs["checkpoint"]), "--infill", "The [] of [] city", "--mask-placeholder",
                         "[]", "--quiet"]) == 0
    assert "[]" not in capsys.readouterr().out
    assert generate_cli(["--model", str(runs["checkpoint"]), "--infill", "no gap"]) == 1
    assert "no gap to fill" in capsys.readouterr().err
    ar = runs["root"] / "ar" / "checkpoints" / "checkpoint-12"
    assert generate_cli(["--model", str(ar), "--infill", text]) == 2  # diffusion only
    assert generate_cli(["--help"]) == 0 and "--infill" in capsys.readouterr().out


def test_7_infill_ids_expand_counted_gaps():
    _, tokenizer = tiny_model()
    ids = infill_ids(tokenizer, "The <|mask|>*3 end<|mask|>")
    assert ids.count(tokenizer.mask_token_id) == 4
    assert tokenizer.decode([i for i in ids if i != tokenizer.mask_token_id]) == "The  end"


# 8 -------------------------------------------------------------------------------------------------------------
def test_8_console_is_short_lines_and_one_bar(runs):
    code, out = runs["dd"]
    assert code == 0, out[-3000:]
    assert "[INFO] Running in WANDB offline mode" not in out  # WANDB_MODE=offline is set
    assert "\x1b[A" not in out  # no nested bars
    assert "FutureWarning" not in out
    metric_lines = [line for line in re.split(r"[\r\n]", out) if line.startswith("step ")]
    assert metric_lines and all(len(line) < 160 for line in metric_lines)
    assert "loss/low" not in out and "attention_entropy" not in out  # the research metrics ...
    rows = [json.loads(line) for line in (runs["root"] / "dd" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/low" in row for row in rows) and any("attention_entropy/layer0" in row for row in rows)  # ... here


def test_8_help_prints_no_wandb_banner():
    code, out = run(sys.executable, REPO_ROOT / "scripts" / "train.py", "--help")
    assert code == 0 and "WANDB" not in out


def test_8_lora_wrap_raises_no_gradient_checkpointing_future_warning():
    from tdlm.peft_utils import apply_lora

    model, _ = tiny_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_lora(model, {"r": 2, "alpha": 4})
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


# 9 -------------------------------------------------------------------------------------------------------------
def test_9_short_run_says_its_eval_curve_has_one_point_and_ends_with_a_sampled_text(runs):
    out = runs["dd"][1]
    assert "one eval point" in out and "training.eval_steps=100" in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  sample (temperature 1.0, top_p 0.9"))
    sample = lines[start + 1]
    assert len(set(sample.split())) > 1 or len(set(sample)) > 3  # sampled, not one greedy token repeated


# 10 ------------------------------------------------------------------------------------------------------------
def test_10_readme_documents_the_offline_push_and_one_format_per_prepare():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "tdlm-push" in readme and "--output-dir" in readme
    assert "one format at a time" in readme
    assert "~200 tests" not in readme


# 11 ------------------------------------------------------------------------------------------------------------
def test_11_empty_prompt_with_max_new_tokens_samples_them():
    model, tokenizer = tiny_model()
    prompt = tokenizer("", return_tensors="pt")
    out = model.diffusion_generate(**prompt, max_new_tokens=8, num_steps=4)
    assert out.shape == (1, 8) and not (out == tokenizer.mask_token_id).any()


def test_11_data_errors_name_the_users_file_and_key(tmp_path, corpus):
    (tmp_path / "blank.txt").write_text("  \n\n \n")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 8)
    for name, words in (("blank.txt", ["data.train_files=", "blank.txt", "fewer than one block"]),
                        ("binary.txt", ["binary.txt", "not UTF-8"])):
        code, out = quick_start(corpus, tmp_path / "exp", name.split(".")[0], f"data.train_files={tmp_path / name}")
        error = [line for line in out.splitlines() if line.startswith("error:")]
        assert code == 1 and len(error) == 1 and "Traceback" not in out, out[-2000:]
        assert all(word in error[0] for word in words) and "prepared-" not in error[0]
