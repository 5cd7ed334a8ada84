"""LoRA on a saved TDLM checkpoint: only adapter weights train, the merged model equals base+adapter,
and the adapter folder (which names its base by a relative path) loads without tdlm, both with
PeftModel.from_pretrained on the remote-code base and with AutoPeftModel from the adapter folder alone."""

import json
import runpy
import sys

import pytest
import torch
from publish_helpers import REPO_ROOT, run_without_tdlm, save_checkpoint

from tdlm import TDLMForCausalLM, TDLMForMaskedDiffusion
from tdlm.hub import REMOTE_CODE_FILES
from tdlm.peft_utils import DEFAULT_LORA_TARGETS, apply_lora, merge_adapter, peft_settings
from tdlm.runs import load_model
from tdlm.schedules import diffusion_targets, get_noise_schedule

MODEL_CLASS = {"diffusion": TDLMForMaskedDiffusion, "autoregressive": TDLMForCausalLM}


def lora_finetune(model, steps=4, seed=0):
    """A few AdamW steps on random text with the model's own objective (masked-diffusion ELBO or next token)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        input_ids = torch.randint(0, 50000, (4, 16), generator=generator)
        if model.config.training_mode == "diffusion":
            batch = diffusion_targets(input_ids, None, get_noise_schedule("linear"), model.config.mask_token_id,
                                      generator=generator)
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"], loss_weights=batch["loss_weights"],
                         num_items_in_batch=batch["num_items_in_batch"]).loss
        else:
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(params=["diffusion", "autoregressive"])
def lora_run(request, tmp_path, monkeypatch):
    """A saved base checkpoint, a LoRA fine-tune of it (in memory) and its saved adapter folder, made from
    tmp_path as the working directory (adapters name a local base relative to the adapter folder)."""
    mode = request.param
    monkeypatch.chdir(tmp_path)
    base_dir = save_checkpoint(tmp_path / "base", mode)
    base = load_model(str(base_dir))
    assert type(base) is MODEL_CLASS[mode]
    before = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = apply_lora(base, {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0,
                                   "base_model": str(base_dir)})
    lora_finetune(peft_model)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    return {"mode": mode, "base_dir": base_dir, "before": before, "peft_model": peft_model,
            "adapter_dir": adapter_dir, "tmp": tmp_path}


def test_peft_section_defaults_and_errors():
    settings = peft_settings({"enabled": True})
    assert tuple(settings["target_modules"]) == DEFAULT_LORA_TARGETS
    assert (settings["r"], settings["alpha"], settings["dropout"]) == (8, 16, 0.05)
    with pytest.raises(ValueError, match="peft: unknown keys \\['rank'\\]"):
        peft_settings({"rank": 4})
    with pytest.raises(ValueError, match="peft.r"):
        peft_settings({"r": 0})
    with pytest.raises(ValueError, match="peft.dropout"):
        peft_settings({"dropout": 1.0})
    model = TDLMForMaskedDiffusion(TDLMForMaskedDiffusion.config_class(vocab_size=64, hidden_size=32,
                                   num_attention_heads=2, intermediate_size=64, num_hidden_layers=1,
                                   mask_token_id=63, pad_token_id=0, bos_token_id=0, eos_token_id=0))
    with pytest.raises(ValueError, match="qkv"):
        apply_lora(model, {"target_modules": ["qkv"]})


def test_lora_finetuning_changes_only_adapter_weights(lora_run):
    peft_model = lora_run["peft_model"]
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    # every target module of the single layer got an adapter
    assert {name.split(".")[-4] for name in trainable if "lora_A" in name} == set(DEFAULT_LORA_TARGETS)
    after = peft_model.get_base_model().state_dict()
    for name, value in lora_run["before"].items():
        key = name.replace(".weight", ".base_layer.weight") if name not in after else name
        assert torch.equal(after[key], value), f"base weight {name} changed"
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    assert all(p.abs().max() > 0 for p in lora_b)  # lora_B starts at zero: the adapter did train
    config = json.loads((lora_run["adapter_dir"] / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "../base"  # relative to the adapter folder, not absolute
    if lora_run["mode"] == "diffusion":  # AutoPeftModel builds the base with transformers, not tdlm
        assert config["auto_mapping"] == {"base_model_class": "AutoModel",
                                          "parent_library": "transformers.models.auto.modeling_auto"}
    assert (lora_run["adapter_dir"] / "adapter_model.safetensors").is_file()


def test_merged_model_equals_base_plus_adapter_and_loads_without_tdlm(lora_run):
    mode, tmp = lora_run["mode"], lora_run["tmp"]
    merged_dir = merge_adapter(lora_run["adapter_dir"], tmp / "merged")
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json",
                 *REMOTE_CODE_FILES):
        assert (merged_dir / name).is_file(), name
    assert not (merged_dir / "adapter_config.json").exists()

    input_ids = torch.randint(0, 50000, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adapted = lora_run["peft_model"](input_ids=input_ids).logits
        base = MODEL_CLASS[mode].from_pretrained(lora_run["base_dir"]).eval()(input_ids=input_ids).logits
    finite = torch.isfinite(adapted)
    assert (adapted[finite] - base[finite]).abs().max() > 1e-3  # the adapter matters ...
    torch.save({"input_ids": input_ids, "adapted": adapted}, tmp / "expected.pt")

    auto = "AutoModelForCausalLM" if mode == "autoregressive" else "AutoModelForMaskedLM"
    auto_peft = "AutoPeftModelForCausalLM" if mode == "autoregressive" else "AutoPeftModel"
    out = run_without_tdlm(f"""
        import json, torch
        from peft import {auto_peft} as AutoPeft, PeftModel
        from transformers import {auto} as Auto
        expected = torch.load({str(tmp / "expected.pt")!r})
        finite = torch.isfinite(expected["adapted"])

        def error(model):
            with torch.no_grad():
                logits = model.eval()(input_ids=expected["input_ids"]).logits
            assert torch.equal(torch.isfinite(logits), finite)
            return (logits[finite] - expected["adapted"][finite]).abs().max().item()

        merged = Auto.from_pretrained({str(merged_dir)!r}, trust_remote_code=True)
        base = Auto.from_pretrained({str(lora_run["base_dir"])!r}, trust_remote_code=True)
        adapter = PeftModel.from_pretrained(base, {str(lora_run["adapter_dir"])!r})
        auto_peft = AutoPeft.from_pretrained(".", trust_remote_code=True)  # the adapter folder alone
        print(json.dumps({{"merged": error(merged), "adapter": error(adapter), "auto_peft": error(auto_peft)}}))
        """, cwd=lora_run["adapter_dir"])  # PEFT resolves the relative base from where it runs
    errors = json.loads(out.strip().splitlines()[-1])
    assert errors["merged"] < 1e-5, errors  # ... and merging reproduces it
    assert errors["adapter"] < 1e-5 and errors["auto_peft"] < 1e-5, errors


def test_merge_script_writes_w_plus_scaled_ba(tmp_path, monkeypatch):
    base_dir = save_checkpoint(tmp_path / "base", "diffusion")
    peft_model = apply_lora(TDLMForMaskedDiffusion.from_pretrained(base_dir),
                            {"r": 2, "alpha": 6, "target_modules": ["q_proj"], "base_model": str(base_dir)})
    q_proj = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        q_proj.lora_B["default"].weight.normal_()
    expected = q_proj.base_layer.weight + (6 / 2) * q_proj.lora_B["default"].weight @ q_proj.lora_A["default"].weight
    peft_model.save_pretrained(tmp_path / "adapter")

    monkeypatch.setattr(sys, "argv", ["merge_lora.py", str(tmp_path / "adapter"), str(tmp_path / "merged")])
    runpy.run_path(str(REPO_ROOT / "scripts" / "merge_lora.py"), run_name="__main__")
    merged = TDLMForMaskedDiffusion.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(merged.model.layers[0].self_attn.k_proj.weight,
                               peft_model.base_model.model.model.layers[0].self_attn.k_proj.weight, rtol=0, atol=0)

    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        merge_adapter(base_dir, tmp_path / "nothing")


def test_adapter_folder_names_no_local_path_and_finds_its_base_from_anywhere(lora_run, tmp_path_factory,
                                                                               monkeypatch):
    """Issue 26 (4): what PEFT writes for sharing (README.md, adapter_config.json) holds no absolute path of this
    machine, and the adapter finds its base from any working directory, or is told where it is."""
    adapter_dir, tmp = lora_run["adapter_dir"], str(lora_run["tmp"])
    for file in adapter_dir.iterdir():
        if file.suffix in (".json", ".md"):
            assert tmp not in file.read_text(), file.name
    from huggingface_hub import ModelCard

    card = ModelCard.load(adapter_dir / "README.md")
    assert card.data.base_model is None  # a local base is no Hub id: not named at all
    assert not [tag for tag in card.data.tags or [] if tag.startswith("base_model:")]

    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    merge_adapter(adapter_dir, elsewhere / "merged")  # the base is found relative to the adapter folder
    assert (elsewhere / "merged" / "model.safetensors").is_file()

    import shutil

    moved = shutil.copytree(adapter_dir, elsewhere / "adapter")  # copied without its base
    with pytest.raises(FileNotFoundError, match="--base-model"):
        merge_adapter(moved, elsewhere / "nothing")
    merge_adapter(moved, elsewhere / "merged2", base_model=str(lora_run["base_dir"]))
    assert (elsewhere / "merged2" / "model.safetensors").is_file()
