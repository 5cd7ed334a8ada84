"""Publishing: checkpoint resolution, the model card, and an offline push whose upload set loads with
trust_remote_code=True in a process without tdlm and samples the same tokens as the original model."""

import json
import logging
import runpy
import sys

import pytest
import torch
import yaml
from huggingface_hub import CommitOperationAdd, HfApi
from publish_helpers import REPO_ROOT, make_experiment, run_without_tdlm, save_checkpoint

from tdlm import hub
from tdlm.runs import model_folder

FAKE_TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """Patch HfApi's network calls: every committed file lands in hub/<repo_id>/<revision>/."""
    calls = {"create_repo": [], "create_branch": [], "create_commit": [], "tokens": []}
    hub_root = tmp_path / "hub"

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append((repo_id, kwargs))
        calls["tokens"].append(self.token)
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, *, branch, **kwargs):
        calls["create_branch"].append((repo_id, branch))

    def create_commit(self, repo_id, operations, *, commit_message, revision=None, **kwargs):
        calls["create_commit"].append((repo_id, commit_message, revision))
        calls["tokens"].append(self.token)
        target = hub_root / repo_id / (revision or "main")
        for operation in operations:
            assert isinstance(operation, CommitOperationAdd), operation
            destination = target / operation.path_in_repo
            destination.parent.mkdir(parents=True, exist_ok=True)
            with operation.as_file() as source:
                destination.write_bytes(source.read())
        return {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"}

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    calls["root"] = hub_root
    return calls


def read_card_metadata(readme):
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1]), text


# ---------------------------------------------------------------------------------------------
# Which checkpoint is published
# ---------------------------------------------------------------------------------------------
def test_resolve_checkpoint_prefers_best_then_latest(tmp_path):
    experiment = make_experiment(tmp_path, steps=(9, 10))
    assert model_folder(experiment) == experiment / "checkpoints" / "checkpoint-9"  # the lowest eval loss
    checkpoint = experiment / "checkpoints" / "checkpoint-9"
    assert model_folder(checkpoint) == checkpoint
    state = experiment / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    state.write_text(json.dumps({"log_history": [{"step": 7, "eval_loss": 1.0}, {"step": 10, "eval_loss": 2.0}]}))
    assert model_folder(experiment).name == "checkpoint-10"  # step 7's checkpoint is gone: the best saved one
    state.unlink()
    assert model_folder(experiment).name == "checkpoint-10"  # never evaluated: the latest, in numeric order
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        model_folder(tmp_path / "empty")


def test_incomplete_checkpoint_is_refused_naming_the_missing_file(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "ckpt")
    (checkpoint / "modeling_tdlm.py").unlink()
    with pytest.raises(FileNotFoundError, match="modeling_tdlm.py"):
        hub.prepare_hub_folder(checkpoint, tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------
def test_model_card_parses_with_huggingface_hub_and_has_no_secrets_or_local_paths(tmp_path):
    from huggingface_hub import ModelCard, metadata_load

    experiment = make_experiment(tmp_path, mode="diffusion")
    folder = hub.prepare_hub_folder(experiment, tmp_path / "upload", repo_id="someone/tdlm-tiny")
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert (data.license, data.pipeline_tag, data.library_name) == ("mit", "fill-mask", "transformers")
    assert data.datasets == ["Salesforce/wikitext"] and data.model_name == "tdlm-tiny"
    scores = {(r.task_name, r.metric_type): r for r in data.eval_results}  # the model-index, parsed back
    held_out = scores[("held-out likelihood", "nelbo")]
    assert held_out.metric_value == 4.321  # the run's own evaluation, not a later tdlm-evaluate run (4.4)
    assert (held_out.dataset_type, held_out.dataset_config, held_out.dataset_split) == (
        "Salesforce/wikitext", "wikitext-2-raw-v1", "test")
    assert scores[("hellaswag", "acc")].metric_value == 0.2567 and scores[("hellaswag", "acc")].dataset_type == (
        "Rowan/hellaswag")
    assert scores[("mmlu_anatomy", "acc")].dataset_config == "anatomy"  # from lm-eval's results file (all 135 docs)
    assert ("arc_easy", "acc_norm") not in scores  # a --limit 100 run is no full-benchmark result
    assert {r.task_type for r in data.eval_results if r.task_name != "held-out likelihood"} == {"text-generation"}
    assert metadata_load(folder / "README.md")["model-index"][0]["name"] == "tdlm-tiny"
    # the body lists every score with what it was computed on, limited ones marked as left out of the model-index
    assert "| 4.321 | 4,096 tokens (the run's own evaluation) | yes |" in card.text
    assert "| 4.4 | 1,024 tokens | no |" in card.text
    assert "| 0.3 | 100 documents (limit 100) | no |" in card.text and "`--limit`" in card.text
    assert "| 0.2567 | 10,042 documents | yes |" in card.text

    text = card.text
    assert "split `validation`, license `cc-by-sa-3.0`" in text  # training data: WikiText-2 valid (offline split)
    for section in ("## Intended use", "## Limitations", "upper bound", "## How to sample", "sahoo2024mdlm",
                    "nie2025llada", "prabhudesai2025diffusion", 'pipeline("fill-mask"', "learning_rate: 0.0003"):
        assert section in text, section
    assert 'AutoModelForMaskedLM.from_pretrained("someone/tdlm-tiny", trust_remote_code=True)' in text
    full = (folder / "README.md").read_text()
    assert "secret_in_config" not in full and "hub_token" not in full and "api_key" not in full
    assert str(tmp_path) not in full and "../" not in full and "/shared/" not in full  # no local paths
    assert "train_files: wiki.valid.raw" in full

    ar_card = hub.model_card(make_experiment(tmp_path / "ar", mode="autoregressive") / "checkpoints" / "checkpoint-10",
                             repo_id="someone/tdlm-ar")
    assert ar_card.data.pipeline_tag == "text-generation" and "autoregressive" in ar_card.data.tags
    assert {(r.task_name, r.metric_type) for r in ar_card.data.eval_results} >= {("held-out likelihood", "nll")}
    assert 'AutoModelForCausalLM.from_pretrained("someone/tdlm-ar", trust_remote_code=True)' in ar_card.text
    assert 'pipeline("text-generation"' in ar_card.text


# ---------------------------------------------------------------------------------------------
# Push: upload set, reload without tdlm, sampling
# ---------------------------------------------------------------------------------------------
EXPECTED_FILES = {"model.safetensors", "config.json", "generation_config.json", "configuration_tdlm.py",
                  "modeling_tdlm.py", "generation_tdlm.py", "schedules.py", "fused_cross_entropy.py",
                  "block_diffusion_tdlm.py", "tokenizer.json", "tokenizer_config.json", "README.md"}


def test_push_diffusion_experiment_uploads_a_loadable_model(tmp_path, fake_hub):
    experiment = make_experiment(tmp_path, mode="diffusion")
    checkpoint = experiment / "checkpoints" / "checkpoint-10"
    for leftover in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"):
        (checkpoint / leftover).write_bytes(b"trainer state")
    hub.push_to_hub(experiment, "someone/tdlm-diffusion", commit_message="first upload")

    assert fake_hub["create_repo"] == [("someone/tdlm-diffusion", {"private": False, "exist_ok": True})]
    assert fake_hub["create_commit"] == [("someone/tdlm-diffusion", "first upload", None)]
    uploaded = fake_hub["root"] / "someone" / "tdlm-diffusion" / "main"
    assert {p.name for p in uploaded.iterdir()} == EXPECTED_FILES
    config = json.loads((uploaded / "config.json").read_text())
    assert config["auto_map"]["AutoModelForMaskedLM"] == "modeling_tdlm.TDLMForMaskedDiffusion"
    generation = json.loads((uploaded / "generation_config.json").read_text())
    assert (generation["num_steps"], generation["step_schedule"], generation["remasking"]) == (
        64, "cosine", "low_confidence")
    assert read_card_metadata(uploaded / "README.md")[0]["tags"][1] == "diffusion"

    # the original model's greedy sample, to compare with the reloaded one
    from transformers import AutoTokenizer

    import tdlm

    original = tdlm.TDLMForMaskedDiffusion.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    prompt = tokenizer("The history of", return_tensors="pt")
    expected = original.diffusion_generate(**prompt, max_new_tokens=12, num_steps=6)

    out = run_without_tdlm(f"""
        import json, torch
        from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer
        folder = {str(uploaded)!r}
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__ == "TDLMForMaskedDiffusion"
        prompt = tokenizer("The history of", return_tensors="pt")
        ids = model.diffusion_generate(**prompt, max_new_tokens=12, num_steps=6)
        text = tokenizer.decode(ids[0, prompt["input_ids"].shape[1]:])
        print(json.dumps({{"ids": ids.tolist(), "text": text, "mask": tokenizer.mask_token_id}}))
        """, cwd=tmp_path)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ids"] == expected.tolist()
    assert len(result["ids"][0]) == prompt["input_ids"].shape[1] + 12
    assert result["mask"] not in result["ids"][0]
    assert isinstance(result["text"], str) and result["text"]


def test_push_ar_checkpoint_to_a_private_branch(tmp_path, fake_hub):
    checkpoint = save_checkpoint(tmp_path / "ar-checkpoint", mode="autoregressive")
    hub.push_to_hub(checkpoint, "someone/tdlm-ar", private=True, revision="v1")
    assert fake_hub["create_repo"] == [("someone/tdlm-ar", {"private": True, "exist_ok": True})]
    assert fake_hub["create_branch"] == [("someone/tdlm-ar", "v1")]
    uploaded = fake_hub["root"] / "someone" / "tdlm-ar" / "v1"
    assert {p.name for p in uploaded.iterdir()} == EXPECTED_FILES
    assert read_card_metadata(uploaded / "README.md")[0]["tags"][1] == "autoregressive"

    import tdlm

    original = tdlm.TDLMForCausalLM.from_pretrained(checkpoint).eval()
    prompt = torch.tensor([[464, 2106, 286]])
    expected = original.generate(prompt, max_new_tokens=8, do_sample=False)
    out = run_without_tdlm(f"""
        import json, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(uploaded)!r}, trust_remote_code=True).eval()
        ids = model.generate(torch.tensor([[464, 2106, 286]]), max_new_tokens=8, do_sample=False)
        print(json.dumps(ids.tolist()))
        """, cwd=tmp_path)
    assert json.loads(out.strip().splitlines()[-1]) == expected.tolist()


@pytest.mark.parametrize("token_source", ["argument", "environment"])
def test_token_reaches_the_client_but_is_never_printed_or_logged(tmp_path, fake_hub, monkeypatch, capsys,
                                                                  caplog, token_source):
    checkpoint = save_checkpoint(tmp_path / "ckpt")
    caplog.set_level(logging.DEBUG)
    if token_source == "environment":
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        monkeypatch.setattr(sys, "argv", ["push_to_hub.py", str(checkpoint), "--repo-id", "someone/tdlm-token"])
        runpy.run_path(str(REPO_ROOT / "scripts" / "push_to_hub.py"), run_name="__main__")
    else:
        monkeypatch.delenv("HF_TOKEN", raising=False)
        hub.push_to_hub(checkpoint, "someone/tdlm-token", token=FAKE_TOKEN)
        print("pushed someone/tdlm-token")

    # the token was handed to huggingface_hub (explicitly, or found there from HF_TOKEN)
    from huggingface_hub.utils import get_token

    seen = fake_hub["tokens"]
    assert seen and all(t == FAKE_TOKEN or (t is None and get_token() == FAKE_TOKEN) for t in seen)
    captured = capsys.readouterr()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "someone/tdlm-token" in captured.out  # the script reports what it did ...
    for text in (captured.out, captured.err, logged):
        assert FAKE_TOKEN not in text  # ... but never the token
    uploaded = fake_hub["root"] / "someone" / "tdlm-token" / "main"
    assert all(FAKE_TOKEN not in p.read_text(errors="ignore") for p in uploaded.iterdir())


def test_push_of_a_lora_checkpoint_publishes_the_merged_model(tmp_path, fake_hub):
    """A peft run's checkpoint holds only an adapter: it is merged into its base before the upload."""
    from tdlm.peft_utils import apply_lora
    from tdlm.runs import load_model

    base_experiment = make_experiment(tmp_path / "base", mode="diffusion")
    peft_model = apply_lora(load_model(str(base_experiment)), {"r": 2, "base_model": str(base_experiment)})
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    finetune = make_experiment(tmp_path / "finetune", mode="diffusion", steps=(5,))
    adapter_checkpoint = finetune / "checkpoints" / "checkpoint-5"
    for file in adapter_checkpoint.iterdir():
        if file.name.startswith(("model", "config", "generation")) or file.suffix == ".py":
            file.unlink()  # what the trainer leaves for a peft run: adapter + tokenizer
    peft_model.save_pretrained(adapter_checkpoint)

    hub.push_to_hub(finetune, "someone/tdlm-lora")
    uploaded = fake_hub["root"] / "someone" / "tdlm-lora" / "main"
    assert {p.name for p in uploaded.iterdir()} == EXPECTED_FILES
    metadata, text = read_card_metadata(uploaded / "README.md")
    assert "base_model" not in metadata  # a local base is not named at all: no local paths in the card
    assert "LoRA fine-tune of a local TDLM checkpoint" in text and str(tmp_path) not in text

    import tdlm

    published = tdlm.TDLMForMaskedDiffusion.from_pretrained(uploaded).eval()
    input_ids = torch.randint(0, 50000, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = peft_model.eval()(input_ids=input_ids).logits, published(input_ids=input_ids).logits
    finite = torch.isfinite(expected)
    assert (expected[finite] - got[finite]).abs().max() < 1e-5
