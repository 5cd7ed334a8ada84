"""The size ladder (configs/models/): each rung validates and builds the intended size for both objectives; and what
the larger rungs rely on, at toy size: gradient checkpointing and long sequences with every head."""

from pathlib import Path

import pytest
import torch

from tdlm import TDLMConfig, TDLMForCausalLM, TDLMForMaskedDiffusion
from tdlm.config import load_config
from tdlm.training import build_model, build_tokenizer
from tdlm.training.build import head_that_runs

ROOT = Path(__file__).resolve().parents[1]
LADDER = {"tdlm-7m": (6.5e6, 7.5e6), "tdlm-30m": (27e6, 33e6), "tdlm-125m": (115e6, 135e6)}
OBJECTIVES = ("diffusion", "autoregressive")
HEADS = ("chunked", "triton")  # on CPU "triton" runs the chunked path; tests/test_fused_cross_entropy.py the kernels


@pytest.mark.parametrize("mode", OBJECTIVES)
@pytest.mark.parametrize("name", sorted(LADDER))
def test_ladder_config_builds_its_size(name, mode):
    """Built on the meta device (no memory, no init time); tied embeddings are counted once."""
    config = load_config(ROOT / "configs" / "models" / f"{name}.yaml",
                         [f"model.training_mode={mode}", "training.torch_compile=false"])
    assert config["model"]["head_implementation"] == "triton"
    with torch.device("meta"):
        model = build_model(config, build_tokenizer(config))
    low, high = LADDER[name]
    assert low <= sum(p.numel() for p in model.parameters()) <= high
    # the head that runs here (chunked without CUDA), recorded in the config that is saved with the run
    assert model.config.training_mode == mode
    assert model.config.head_implementation == config["model"]["head_implementation"] == head_that_runs("triton")
    # AR's context token in front of every block takes one position more
    assert model.config.max_position_embeddings == config["data"]["block_size"] + (mode == "autoregressive")


def test_ladder_rungs_share_everything_but_the_shape():
    """One recipe per rung: the rungs differ in the model shape and what follows from it (batch, sequence, learning
    rate, warm-up, compile mode), never in the objective or data."""
    configs = [load_config(ROOT / "configs" / "models" / f"{name}.yaml") for name in sorted(LADDER)]
    for config in configs[1:]:
        assert config["data"] == {**configs[0]["data"], "block_size": config["data"]["block_size"]}
        assert config["diffusion"] == configs[0]["diffusion"] and config["sampling"] == configs[0]["sampling"]
        assert config["model"]["training_mode"] == "diffusion"
    shape = load_config(ROOT / "configs" / "models" / "tdlm-125m.yaml")["model"]
    assert (shape["hidden_size"], shape["num_hidden_layers"], shape["num_attention_heads"]) == (768, 12, 12)


def _toy_model(mode, head, length=64):
    torch.manual_seed(0)
    config = TDLMConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=length, mask_token_id=60, pad_token_id=0,
                        bos_token_id=0, eos_token_id=0, training_mode=mode, head_implementation=head)
    return (TDLMForMaskedDiffusion if mode == "diffusion" else TDLMForCausalLM)(config)


def _loss(model, ids):
    if model.config.training_mode == "autoregressive":
        return model(ids, labels=ids).loss
    masked = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    return model(ids.masked_fill(masked, 60), labels=ids.masked_fill(~masked, -100),
                 loss_weights=torch.full(ids.shape, 2.0), num_items_in_batch=ids.numel()).loss


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("mode", OBJECTIVES)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(mode, head):
    ids = torch.randint(1, 60, (3, 24), generator=torch.Generator().manual_seed(1))
    results = {}
    for checkpointing in (False, True):
        model = _toy_model(mode, head).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        loss = _loss(model, ids)
        loss.backward()
        results[checkpointing] = loss.detach(), {n: p.grad for n, p in model.named_parameters()}
    assert model.model.gradient_checkpointing  # the flag reached the backbone
    (loss_plain, grads_plain), (loss_ckpt, grads_ckpt) = results[False], results[True]
    torch.testing.assert_close(loss_ckpt, loss_plain)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, msg=name)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("mode", OBJECTIVES)
def test_sequence_2048_trains_with_every_head(mode, head):
    """The 125M rung's sequence 1024-2048: RoPE positions and the masks at that length, forward and backward."""
    model = _toy_model(mode, head, length=2048).train()
    model.activation_checkpointing_enable()
    loss = _loss(model, torch.randint(1, 60, (1, 2048), generator=torch.Generator().manual_seed(1)))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
