"""Checkpoints load with trust_remote_code=True in a Python that cannot import `tdlm` at all.

A checkpoint folder (model + tokenizer) is saved here; a subprocess (cwd elsewhere, PYTHONPATH removed, `tdlm`
blocked even if it is pip-installed) loads it through the Auto classes and writes logits, tokenizer ids and
generations back for comparison.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from publish_helpers import NO_TDLM_PRELUDE

from tdlm import TDLMConfig, TDLMForCausalLM, TDLMForMaskedDiffusion
from tdlm.tokenization import config_kwargs_for_tokenizer, load_tokenizer

GPT2_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-tokenizer"
REMOTE_FILES = {"configuration_tdlm.py", "modeling_tdlm.py", "generation_tdlm.py", "schedules.py",
                "fused_cross_entropy.py", "block_diffusion_tdlm.py"}
TEXTS = ["Hello world", "The quick brown fox jumps over the lazy dog."]

CHILD = NO_TDLM_PRELUDE + r'''
import json
import torch

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

diffusion_dir, causal_dir, out_path = sys.argv[1:4]
texts = json.loads(sys.argv[4])
results = {}
tokenizer = AutoTokenizer.from_pretrained(diffusion_dir, trust_remote_code=True)
batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
results["ids"] = [tokenizer(t)["input_ids"] for t in texts]
results["mask_token_id"] = tokenizer.mask_token_id
config = AutoConfig.from_pretrained(diffusion_dir, trust_remote_code=True)
results["config_class"] = type(config).__name__
for name, auto_class, folder in [("diffusion_auto", AutoModel, diffusion_dir),
                                  ("diffusion_masked_lm", AutoModelForMaskedLM, diffusion_dir),
                                  ("causal_auto", AutoModel, causal_dir),
                                  ("causal_lm", AutoModelForCausalLM, causal_dir)]:
    model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
    results[name + "_class"] = type(model).__name__
    results[name + "_module"] = type(model).__module__
    with torch.no_grad():
        results[name] = model(**batch).logits
    if name == "diffusion_masked_lm":
        results["diffusion_generate"] = model.diffusion_generate(
            batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6, num_steps=3)
    if name == "causal_lm":
        results["causal_generate"] = model.generate(
            batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=5, do_sample=False)
torch.save(results, out_path)
'''


def _save_checkpoint(folder, mode, tokenizer):
    torch.manual_seed(0 if mode == "diffusion" else 1)
    config = TDLMConfig(**config_kwargs_for_tokenizer(tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, training_mode=mode)
    model = (TDLMForMaskedDiffusion if mode == "diffusion" else TDLMForCausalLM)(config).eval()
    with torch.no_grad():  # weights large enough that a wrong reload shows in the logits
        for param in model.parameters():
            param.normal_(0.0, 0.3) if param.dim() == 2 else param.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.mark.slow
def test_checkpoints_load_through_auto_classes_without_the_package(tmp_path):
    tokenizer = load_tokenizer(str(GPT2_PATH))
    diffusion_dir, causal_dir = tmp_path / "diffusion", tmp_path / "causal"
    models = {"diffusion": _save_checkpoint(diffusion_dir, "diffusion", tokenizer),
              "autoregressive": _save_checkpoint(causal_dir, "autoregressive", tokenizer)}

    for folder, mode in ((diffusion_dir, "diffusion"), (causal_dir, "autoregressive")):
        files = {p.name for p in folder.iterdir()}
        assert "model.safetensors" in files and not any(name.endswith(".bin") for name in files)
        assert REMOTE_FILES <= files
        assert {"config.json", "generation_config.json", "tokenizer_config.json"} <= files
        config = json.loads((folder / "config.json").read_text())
        assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForCausalLM"}
        assert config["auto_map"]["AutoModel"].endswith("TDLMForMaskedDiffusion" if mode == "diffusion"
                                                        else "TDLMForCausalLM")
        assert config["training_mode"] == mode
        for name in REMOTE_FILES:  # remote code never imports the package itself
            source = (folder / name).read_text()
            assert "import tdlm" not in source and "from tdlm" not in source, name

    out_path = tmp_path / "child.pt"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(diffusion_dir), str(causal_dir), str(out_path),
                           json.dumps(TEXTS)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    child = torch.load(out_path, weights_only=False)

    assert child["ids"] == [tokenizer(t)["input_ids"] for t in TEXTS]
    assert child["ids"][0] == [15496, 995] and child["mask_token_id"] == 50257
    assert child["config_class"] == "TDLMConfig"
    assert child["diffusion_auto_class"] == child["diffusion_masked_lm_class"] == "TDLMForMaskedDiffusion"
    assert child["causal_auto_class"] == child["causal_lm_class"] == "TDLMForCausalLM"
    for key in ("diffusion_auto", "diffusion_masked_lm", "causal_auto", "causal_lm"):
        assert child[key + "_module"].startswith("transformers_modules."), child[key + "_module"]
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True, padding_side="left")
    for mode, keys in (("diffusion", ("diffusion_auto", "diffusion_masked_lm")),
                       ("autoregressive", ("causal_auto", "causal_lm"))):
        with torch.no_grad():
            reference = models[mode](**batch).logits
        finite = torch.isfinite(reference)
        assert torch.isneginf(reference[..., 50257]).all() and finite[..., :50257].all()
        for key in keys:
            assert torch.equal(torch.isfinite(child[key]), finite), key
            torch.testing.assert_close(child[key][finite], reference[finite], atol=1e-5, rtol=1e-5)

    with torch.no_grad():
        generated = models["diffusion"].diffusion_generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                                                           max_new_tokens=6, num_steps=3)
        causal = models["autoregressive"].generate(**batch, max_new_tokens=5, do_sample=False)
    assert child["diffusion_generate"].shape == (2, batch["input_ids"].shape[1] + 6)
    assert not (child["diffusion_generate"] == 50257).any()
    assert torch.equal(child["diffusion_generate"], generated)
    assert torch.equal(child["causal_generate"], causal)
