"""PEFT LoRA wraps both TDLM heads: an optimizer step trains only the adapters."""

import peft  # the `peft` extra (part of `.[test]`)
import pytest
import torch

from tdlm import TDLMConfig, TDLMForCausalLM, TDLMForMaskedDiffusion

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("mode", ["diffusion", "autoregressive"])
def test_lora_step_changes_only_lora_weights(mode):
    torch.manual_seed(0)
    config = TDLMConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, mask_token_id=96, pad_token_id=0,
                        bos_token_id=0, eos_token_id=0, training_mode=mode)
    base = (TDLMForMaskedDiffusion if mode == "diffusion" else TDLMForCausalLM)(config)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0,
                           init_lora_weights="gaussian")  # B != 0, so the first step moves A and B
    model = peft.get_peft_model(base, lora)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    wrapped = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable}
    assert wrapped == set(TARGETS)
    assert len(trainable) == 2 * len(TARGETS) * config.num_hidden_layers

    ids = torch.randint(1, 96, (4, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    if mode == "diffusion":
        masked = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.5
        labels = ids.masked_fill(~masked, -100)
        ids = ids.masked_fill(masked, 96)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        assert changed == (name in trainable), name
    with torch.no_grad():
        assert model(input_ids=ids, labels=labels).loss < loss  # the step helped
