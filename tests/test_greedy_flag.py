"""LAMBADA's is_greedy: diffusion follows LLaDA's `suffix_greedy_prediction` (one token per step, most confident
first), which differs from one argmax with the whole continuation masked; the AR flag is greedy decoding."""

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from tdlm import TDLMConfig, TDLMForCausalLM, TDLMForMaskedDiffusion
from tdlm.evaluation.likelihood import (
    ar_conditional_loglikelihood,
    diffusion_conditional_loglikelihood,
    diffusion_greedy_continuation,
)

VOCAB, MASK = 8, 7
CONTEXT = [1, 2]


def tiny(mode):
    torch.manual_seed(0)
    config = TDLMConfig(vocab_size=VOCAB, mask_token_id=MASK, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16, training_mode=mode, initializer_range=0.5)
    return (TDLMForMaskedDiffusion if mode == "diffusion" else TDLMForCausalLM)(config).eval()


def scripted_forward(input_ids, labels=None, **kwargs):
    """Logits at the two continuation positions 2 and 3: position 2 is surely 3; position 3 is weakly 5 while
    position 2 is masked and surely 4 once position 2 holds 3. All-masked argmax: [3, 5]; stepwise: [3, 4]."""
    logits = torch.zeros(*input_ids.shape, VOCAB)
    logits[:, 2, 3] = 8.0
    logits[:, 3, 5] = 1.0
    logits[:, 3, 4] = torch.where(input_ids[:, 2] == 3, 8.0, 0.0)
    token_losses = None
    if labels is not None:
        supervised = labels != -100
        token_losses = F.cross_entropy(logits[supervised], labels[supervised], reduction="none")
    return ModelOutput(logits=logits, token_losses=token_losses)


def scripted_model(monkeypatch):
    model = tiny("diffusion")
    monkeypatch.setattr(model, "forward", scripted_forward)
    return model


def test_stepwise_decode_commits_the_most_confident_token_first(monkeypatch):
    model = scripted_model(monkeypatch)
    with torch.no_grad():
        all_masked = model(input_ids=torch.tensor([CONTEXT + [MASK, MASK]])).logits[0, 2:].argmax(-1).tolist()
    assert all_masked == [3, 5]  # the one-shot rule would call [3, 4] not greedy
    assert diffusion_greedy_continuation(model, CONTEXT, 2) == [3, 4]


def test_is_greedy_follows_the_stepwise_rule_where_the_one_shot_rule_disagrees(monkeypatch):
    model = scripted_model(monkeypatch)
    pairs = [(CONTEXT, [3, 4]), (CONTEXT, [3, 5])]
    flags = [greedy for _, greedy in diffusion_conditional_loglikelihood(model, pairs, [0, 0], mc_num=4)]
    assert flags == [True, False]  # the one-shot argmax [3, 5] would give [False, True]
    skipped = diffusion_conditional_loglikelihood(model, pairs, [0, 0], mc_num=4, check_greedy=False)
    assert [greedy for _, greedy in skipped] == [False, False]


def test_ar_is_greedy_means_greedy_decoding_reproduces_the_continuation():
    model = tiny("autoregressive")
    model.generation_config.eos_token_id = None  # decode all 3 tokens, EOS included
    prompt = torch.tensor([CONTEXT])
    decoded = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3,
                             do_sample=False, pad_token_id=0)[0, len(CONTEXT):].tolist()
    other = decoded[:2] + [(decoded[2] + 1) % MASK]
    results = ar_conditional_loglikelihood(model, [(CONTEXT, decoded), (CONTEXT, other)])
    assert [greedy for _, greedy in results] == [True, False]
