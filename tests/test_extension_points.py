"""Extension points from outside the package: a remasking rule, a step schedule and an evaluation task registered
here (no edit inside tdlm/) work through the Python API, the YAML config, the CLIs and the model card."""

import json

import pytest
import torch
from publish_helpers import save_checkpoint

from tdlm import TDLMConfig, TDLMForMaskedDiffusion, generation_tdlm, schedules
from tdlm.cli import evaluate as evaluate_cli
from tdlm.cli import generate as generate_cli
from tdlm.config import ConfigError, load_config
from tdlm.evaluation import TASKS, Task, load_task, register_task, run_downstream
from tdlm.evaluation.tasks import Doc, HubDataset, write_lm_eval_tasks
from tdlm.generation_tdlm import register_remasking_rule
from tdlm.model_card import eval_results
from tdlm.schedules import get_noise_schedule, register_step_schedule, timestep_grid, unmask_counts

VOCAB, MASK = 97, 96
calls = {"least_confident": 0}


def tiny_model():
    torch.manual_seed(0)
    return TDLMForMaskedDiffusion(TDLMConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, mask_token_id=MASK, pad_token_id=1, bos_token_id=2, eos_token_id=2)).eval()


def least_confident(logits, tokens, generator=None):
    """Commit the least probable proposal first (the opposite of low_confidence)."""
    calls["least_confident"] += 1
    return -(logits.gather(-1, tokens[:, None]).squeeze(-1) - logits.logsumexp(-1)).exp()


def quadratic(progress):
    """t = (1 - p)^2: under a linear noise schedule, many tokens early and few late."""
    return (1.0 - progress) ** 2


QUESTIONS = [{"q": "The sky is", "choices": ["blue", "a fish"], "gold": 0},
             {"q": "Two plus two is", "choices": ["four", "green"], "gold": 0},
             {"q": "Ice is", "choices": ["cold", "loud"], "gold": 0}]


def load_tiny_qa(data_dir=None, limit=None):
    return [Doc(row["q"], row["choices"], row["gold"]) for row in QUESTIONS[:limit]]


@pytest.fixture
def registered():
    """Register the three extensions as a user would, and take them out again after the test."""
    register_remasking_rule("least_confident", least_confident)
    register_step_schedule("quadratic")(quadratic)  # decorator form
    register_task(Task("tiny_qa", load_tiny_qa, dataset=HubDataset("someone/tiny_qa", "Tiny QA", None, "test")))
    yield
    generation_tdlm.REMASKING_RULES.pop("least_confident")
    schedules.STEP_SCHEDULES.pop("quadratic")
    TASKS.pop("tiny_qa")


def test_a_registered_remasking_rule_orders_the_commits(registered):
    model = tiny_model()
    length = 10
    table = torch.randn(length, VOCAB, generator=torch.Generator().manual_seed(0))
    table = table * torch.linspace(0.5, 4.0, length)[:, None]
    table[:, MASK] = float("-inf")
    # the proposal at canvas column c has logits table[c] whatever the context: the order is the rule's alone
    model._active_logits = (lambda tokens, attention_mask, positions, cache=None:
                            table[positions.nonzero()[:, 1]].clone())
    calls["least_confident"] = 0
    out = model.diffusion_generate(torch.full((1, length), MASK), num_steps=length, step_schedule="linear",
                                   remasking="least_confident", return_dict_in_generate=True)
    p_top = table.softmax(-1).max(-1).values
    assert torch.equal(out.commit_step[0], p_top.argsort().argsort())  # least probable column first
    assert calls["least_confident"] == length


def test_a_registered_step_schedule_sets_the_commits_per_step(registered):
    grid = timestep_grid(4, "quadratic")
    torch.testing.assert_close(grid, torch.tensor([1.0, 0.5625, 0.25, 0.0625, 0.0], dtype=torch.float64))
    counts = unmask_counts(torch.tensor([16]), 4, get_noise_schedule("linear"), "quadratic")
    assert counts.tolist() == [[7, 5, 3, 1]]  # remaining 16 -> 9 -> 4 -> 1 -> 0
    model = tiny_model()
    out = model.diffusion_generate(torch.full((1, 16), MASK), num_steps=4, step_schedule="quadratic",
                                   return_dict_in_generate=True)
    assert out.committed_per_step.tolist() == counts.tolist()
    with pytest.raises(ValueError, match="from 1 down to 0"):
        register_step_schedule("rising", lambda progress: progress)
        try:
            timestep_grid(4, "rising")
        finally:
            schedules.STEP_SCHEDULES.pop("rising")


def test_the_yaml_config_accepts_registered_names_and_still_refuses_unknown_ones(registered):
    base = ["model.tokenizer=gpt2", "data.train_files=x.txt"]
    config = load_config(None, base + ["sampling.remasking=least_confident", "sampling.step_schedule=quadratic"])
    assert (config["sampling"]["remasking"], config["sampling"]["step_schedule"]) == ("least_confident", "quadratic")
    with pytest.raises(ConfigError, match="sampling.remasking") as error:
        load_config(None, base + ["sampling.remasking=most_confident"])
    assert "least_confident" in str(error.value)  # the allowed names come from the registry


def test_the_generate_cli_offers_registered_rules_and_schedules(registered, tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "ckpt")
    calls["least_confident"] = 0
    generate_cli.main(["--model", str(checkpoint), "--prompt", "The game", "--max-new-tokens", "6", "--num-steps", "3",
                       "--step-schedule", "quadratic", "--remasking", "least_confident", "--device", "cpu", "--quiet"])
    assert "--- sample 0 (diffusion" in capsys.readouterr().out
    assert calls["least_confident"] >= 1  # the sampler used the registered rule
    with pytest.raises(SystemExit):
        generate_cli.main(["--model", str(checkpoint), "--remasking", "no_such_rule"])
    assert "least_confident" in capsys.readouterr().err  # argparse lists the registry's names


def test_a_registered_task_runs_through_the_api_the_cli_lm_eval_and_the_model_card(registered, tmp_path, capsys):
    assert [d.context for d in load_task("tiny_qa", limit=2)["tiny_qa"]] == ["The sky is", "Two plus two is"]
    checkpoint = save_checkpoint(tmp_path / "ckpt", "autoregressive")
    from tdlm.runs import load_checkpoint

    model, tokenizer = load_checkpoint(checkpoint, "cpu")
    api = run_downstream(model, tokenizer, ["tiny_qa"])["tiny_qa"]
    assert api["num_docs"] == 3 and 0.0 <= api["acc"] <= 1.0

    result = evaluate_cli.main(["--model", str(checkpoint), "--tasks", "tiny_qa", "--device", "cpu"])
    assert result["downstream"]["tiny_qa"]["acc"] == api["acc"]  # AR scores are exact: the same through the CLI

    names = evaluate_cli.main(["--write-lm-eval-tasks", str(tmp_path / "lm_eval"), "--tasks", "tiny_qa"])
    assert names == ["tdlm_tiny_qa"]
    assert "tdlm_tiny_qa" in (tmp_path / "lm_eval" / "tdlm_tiny_qa.yaml").read_text()
    rows = [json.loads(line) for line in (tmp_path / "lm_eval" / "icl_tiny_qa.jsonl").read_text().splitlines()]
    assert rows[1] == {"context": "Two plus two is", "choices": ["four", "green"], "gold": 0}
    assert write_lm_eval_tasks(tmp_path / "all")[-1] == "tdlm_tiny_qa"  # the default is every registered task

    # (the model-index takes whole-task scores with their document count: issue 26)
    (card_result,) = eval_results({"evaluate": {"downstream": {"tiny_qa": {"acc": 0.5, "num_docs": 3}}}},
                                  "autoregressive", None)
    assert (card_result.dataset_type, card_result.dataset_name, card_result.dataset_split) == (
        "someone/tiny_qa", "Tiny QA", "test")


def test_registering_needs_the_right_kind_of_object():
    with pytest.raises(TypeError, match="remasking rule 'x' must be callable"):
        register_remasking_rule("x", "not a function")
    with pytest.raises(TypeError, match="step schedule 'x' must be callable"):
        register_step_schedule("x", 3)
    with pytest.raises(TypeError, match="register_task expects a Task"):
        register_task("tiny_qa")
    assert "x" not in generation_tdlm.REMASKING_RULES and "x" not in schedules.STEP_SCHEDULES
