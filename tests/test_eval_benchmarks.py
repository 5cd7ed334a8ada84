"""Downstream tasks: local loaders, our multiple-choice scorer, the lm-eval "tdlm" adapter, and the AR
cross-check against lm-eval's stock `hf` backend on the same local task YAMLs."""

from types import SimpleNamespace

import pytest
import torch

from tdlm import TDLMConfig, load_tokenizer, model_class_for
from tdlm.evaluation import load_task, run_downstream, score_docs
from tdlm.evaluation.tasks import DEFAULT_DATA_DIR, MMLU_SUBJECTS, read_mmlu_csv
from tdlm.tokenization import config_kwargs_for_tokenizer

TOKENIZER_DIR = DEFAULT_DATA_DIR / "gpt2-tokenizer"


def save_tiny(folder, mode, max_positions=256):
    tokenizer = load_tokenizer(str(TOKENIZER_DIR))
    torch.manual_seed(0)
    config = TDLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=max_positions, training_mode=mode,
                        bd_block_size=8 if mode == "block_diffusion" else None,
                        **config_kwargs_for_tokenizer(tokenizer))
    model = model_class_for(config)(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


@pytest.fixture(scope="module")
def ar_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ar")
    model, tokenizer = save_tiny(folder, "autoregressive")
    return folder, model, tokenizer


@pytest.fixture(scope="module")
def diffusion_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dd")
    model, tokenizer = save_tiny(folder, "diffusion")
    return folder, model, tokenizer


def test_loaders_read_the_shared_files():
    hellaswag = load_task("hellaswag", limit=5)["hellaswag"]
    assert len(hellaswag) == 5 and all(len(d.choices) == 4 for d in hellaswag) and hellaswag[0].gold == 3
    mmlu = load_task("mmlu", limit=2)
    assert len(mmlu) == len(MMLU_SUBJECTS) == 57 and all(len(docs) == 2 for docs in mmlu.values())
    shots = load_task("mmlu_5shot_anatomy", limit=1)["mmlu_5shot_anatomy"][0]
    dev = read_mmlu_csv(DEFAULT_DATA_DIR / "mmlu" / "dev" / "anatomy_dev.csv")
    assert shots.context.count("\nAnswer:") == 6  # five solved dev questions + the test question
    assert shots.context.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert f"Answer: {'ABCD'[dev[0]['answer']]}\n\n" in shots.context
    lambada = load_task("lambada", limit=3)["lambada"]
    assert lambada[0].kind == "loglikelihood" and lambada[0].choices == ["signs"]
    for name in ("arc_easy", "arc_challenge", "piqa", "boolq"):
        docs = load_task(name, limit=3)[name]
        assert docs[0].context.endswith("\nAnswer:") and 0 <= docs[0].gold < len(docs[0].choices)
    with pytest.raises(ValueError, match="unknown task"):
        load_task("mmlu_no_such_subject")


def test_run_downstream_aggregates_mmlu_by_size(ar_checkpoint):
    _, model, tokenizer = ar_checkpoint
    results = run_downstream(model, tokenizer, "mmlu_anatomy,boolq", limit=3)
    assert set(results) == {"mmlu_anatomy", "boolq"}
    assert results["boolq"]["num_docs"] == 3 and 0.0 <= results["boolq"]["acc_norm"] <= 1.0
    from tdlm.evaluation import aggregate

    combined = aggregate({"a": {"acc": 1.0, "num_docs": 3}, "b": {"acc": 0.0, "num_docs": 1}})
    assert combined == {"acc": 0.75, "num_docs": 4}


def _lm_eval_lls(results, task):
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [[float(resp[0][0]) for resp in s["resps"]] for s in samples]


@pytest.mark.slow
def test_ar_scores_equal_lm_eval_hf_backend(ar_checkpoint):
    """Cross-check: HellaSwag, MMLU (0- and 5-shot, with left truncation at 256 tokens) and LAMBADA per-choice
    log-likelihoods and accuracies from our scorer equal lm-eval's stock `hf` backend on the same tasks."""
    from tdlm.evaluation.lm_eval_adapter import evaluate_with_lm_eval

    folder, model, tokenizer = ar_checkpoint
    tasks = ["hellaswag", "mmlu_anatomy", "mmlu_5shot_anatomy", "lambada"]
    reference = evaluate_with_lm_eval("hf", {"pretrained": str(folder), "trust_remote_code": True}, tasks,
                                      limit=10, log_samples=True, device="cpu")
    for task in tasks:
        ours = score_docs(model, tokenizer, load_task(task, limit=10)[task])
        theirs = reference["results"][f"tdlm_{task}"]
        assert ours["num_docs"] == theirs["sample_len"] == 10
        theirs_lls = _lm_eval_lls(reference, f"tdlm_{task}")
        ours_lls = [[ll] for ll in ours["loglikelihoods"]] if task == "lambada" else ours["loglikelihoods"]
        torch.testing.assert_close(torch.tensor(ours_lls, dtype=torch.float64),
                                   torch.tensor(theirs_lls, dtype=torch.float64), rtol=1e-5, atol=1e-4)
        assert ours["acc"] == theirs["acc,none"]
        if task == "lambada":
            assert ours["perplexity"] == pytest.approx(theirs["perplexity,none"], rel=1e-4)
        if "acc_norm,none" in theirs:
            assert ours["acc_norm"] == theirs["acc_norm,none"]


@pytest.mark.slow
def test_tdlm_adapter_diffusion_matches_own_scorer(diffusion_checkpoint):
    """The registered "tdlm" lm-eval model gives the same (paired, seeded) diffusion scores as score_docs,
    whatever order lm-eval sends the requests in."""
    from tdlm.evaluation.lm_eval_adapter import evaluate_with_lm_eval

    folder, model, tokenizer = diffusion_checkpoint
    results = evaluate_with_lm_eval("tdlm", {"pretrained": str(folder), "mc_num": 4},
                                    ["hellaswag"], limit=3, log_samples=True, device="cpu")
    ours = score_docs(model, tokenizer, load_task("hellaswag", limit=3)["hellaswag"], mc_num=4)
    theirs = _lm_eval_lls(results, "tdlm_hellaswag")
    torch.testing.assert_close(torch.tensor(ours["loglikelihoods"]), torch.tensor(theirs))
    assert results["results"]["tdlm_hellaswag"]["acc,none"] == ours["acc"]


@pytest.mark.parametrize("mode", ["autoregressive", "diffusion"])
def test_adapter_rolling_and_generation(mode, ar_checkpoint, diffusion_checkpoint):
    from tdlm.evaluation.lm_eval_adapter import TDLMLM

    _, model, tokenizer = ar_checkpoint if mode == "autoregressive" else diffusion_checkpoint
    lm = TDLMLM(model=model, tokenizer=tokenizer, mc_num=4, nelbo_samples=4, max_gen_toks=5)
    text = "The quick brown fox jumps over the lazy dog. " * 3
    (rolling,) = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))], disable_tqdm=True)
    num_tokens = len(tokenizer.encode(text))
    assert rolling < 0 and -rolling / num_tokens > 5.0  # an untrained model is near log(V) = 10.8 nats per token
    if mode == "autoregressive":  # exact: equals the sum of next-token log-probs after the prefix token
        ids = torch.tensor([[tokenizer.eos_token_id] + tokenizer.encode(text)])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits.double(), -1)[0, :-1]
        assert rolling == pytest.approx(float(logprobs.gather(-1, ids[0, 1:, None]).sum()), rel=1e-5)
    (generated,) = lm.generate_until([SimpleNamespace(args=("Hello", {"until": ["\n\n"], "max_gen_toks": 5}))])
    assert isinstance(generated, str) and "\n\n" not in generated


def test_evaluate_script_writes_results_with_seeds_and_versions(diffusion_checkpoint, tmp_path):
    import json

    # scripts/evaluate.py calls this module; importing the script by name would find HF's `evaluate` package
    from tdlm.cli import evaluate as evaluate_script

    folder, _, _ = diffusion_checkpoint
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text("A small evaluation text about cats and dogs.\n" * 40)
    output = tmp_path / "results.json"
    evaluate_script.main(["--model", str(folder), "--tasks", "boolq", "--limit", "2", "--mc-num", "2",
                          "--likelihood", "--eval-file", str(eval_file), "--block-size", "32", "--max-blocks", "2",
                          "--nelbo-samples", "3", "--seed", "5", "--output", str(output)])
    saved = json.loads(output.read_text())
    assert saved["training_mode"] == "diffusion" and saved["settings"]["seed"] == 5
    assert saved["likelihood"]["kind"] == "nelbo_upper_bound" and saved["likelihood"]["num_samples"] == 3
    assert saved["likelihood"]["num_tokens"] == 64 and saved["likelihood"]["seed"] == 5
    assert saved["downstream"]["boolq"]["num_docs"] == 2
    assert saved["environment"]["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    written = evaluate_script.main(["--write-lm-eval-tasks", str(tmp_path / "tasks"), "--tasks", "hellaswag"])
    assert written == ["tdlm_hellaswag"] and (tmp_path / "tasks" / "tdlm_hellaswag.yaml").is_file()
