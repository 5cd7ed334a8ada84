"""TDLMConfig: the default 7.0M-parameter shape, tied embeddings, special ids and validation errors."""

import json

import pytest

from tdlm import TDLMConfig, TDLMForCausalLM, TDLMForMaskedDiffusion, model_class_for


def test_default_config_is_the_7m_gpt2_model():
    config = TDLMConfig()
    assert config.vocab_size == 50258
    assert config.mask_token_id == 50257
    assert config.tie_word_embeddings is True
    model = TDLMForMaskedDiffusion(config)
    num_params = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    assert abs(num_params - 7.0e6) <= 0.1e6, num_params
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.shape == (50258, 128)


def test_auto_map_and_model_class_follow_training_mode():
    diffusion = TDLMConfig(vocab_size=64, mask_token_id=63, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    causal = TDLMConfig(vocab_size=64, mask_token_id=63, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                        training_mode="autoregressive")
    assert set(diffusion.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForCausalLM"}
    assert diffusion.auto_map["AutoModel"] == "modeling_tdlm.TDLMForMaskedDiffusion"
    assert causal.auto_map["AutoModel"] == "modeling_tdlm.TDLMForCausalLM"
    assert model_class_for(diffusion) is TDLMForMaskedDiffusion
    assert model_class_for(causal) is TDLMForCausalLM
    with pytest.raises(ValueError, match="training_mode"):
        TDLMForCausalLM(diffusion)


def test_saved_auto_model_follows_a_changed_training_mode(tmp_path):
    diffusion = TDLMConfig(vocab_size=64, mask_token_id=63, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    diffusion.save_pretrained(tmp_path / "diffusion")
    causal = TDLMConfig.from_pretrained(tmp_path / "diffusion", training_mode="autoregressive")
    causal.save_pretrained(tmp_path / "causal")
    saved = json.loads((tmp_path / "causal" / "config.json").read_text())
    assert saved["training_mode"] == "autoregressive"
    assert saved["auto_map"]["AutoModel"] == "modeling_tdlm.TDLMForCausalLM"
    assert saved["auto_map"]["AutoModelForMaskedLM"] == "modeling_tdlm.TDLMForMaskedDiffusion"
    # overrides given to from_pretrained are validated like constructor arguments
    with pytest.raises(ValueError, match=r"TDLMConfig\.min_mask_ratio"):
        TDLMConfig.from_pretrained(tmp_path / "diffusion", min_mask_ratio=0.9, max_mask_ratio=0.1)
    config, unused = TDLMConfig.from_pretrained(tmp_path / "diffusion", noise_schedule="cosine", foo=1,
                                                return_unused_kwargs=True)
    assert config.noise_schedule == "cosine" and unused == {"foo": 1}


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"hidden_size": 130, "num_attention_heads": 4}, "num_attention_heads"),
        ({"mask_token_id": 50258}, "mask_token_id"),
        ({"mask_token_id": -1}, "mask_token_id"),
        ({"training_mode": "bert"}, "training_mode"),
        ({"noise_schedule": "geometric"}, "noise_schedule"),
        ({"min_mask_ratio": 0.5, "max_mask_ratio": 0.5}, "min_mask_ratio"),
        ({"min_mask_ratio": 0.8, "max_mask_ratio": 0.2}, "min_mask_ratio"),
        ({"max_mask_ratio": 1.5}, "min_mask_ratio"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"time_epsilon": 0.0}, "time_epsilon"),
        ({"attention_dropout": 1.0}, "attention_dropout"),
    ],
)
def test_invalid_values_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"TDLMConfig\.{field}\b"):
        TDLMConfig(**kwargs)


def test_config_round_trips_through_dict(tmp_path):
    config = TDLMConfig(vocab_size=300, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                        mask_token_id=299, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                        noise_schedule="cosine", single_ratio_per_sequence=False, min_mask_ratio=0.1)
    config.save_pretrained(tmp_path)
    loaded = TDLMConfig.from_pretrained(tmp_path)
    for key in ("vocab_size", "hidden_size", "mask_token_id", "noise_schedule", "single_ratio_per_sequence",
                "min_mask_ratio", "training_mode", "tie_word_embeddings", "auto_map"):
        assert getattr(loaded, key) == getattr(config, key), key
